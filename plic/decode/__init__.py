"""Reconstruction with diffusers: the decoder families, LoRAs and the pipeline."""
