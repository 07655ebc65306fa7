"""Evaluating reconstructions: the paper's metrics, the same-size JPEG/WebP/AVIF peers,
and the written results."""
