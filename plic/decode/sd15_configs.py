"""Stable Diffusion 1.5 component configurations, written out because neither diffusers nor
transformers ships them and PLIC never downloads anything.

``full()`` is the real SD1.5 architecture (what the benchmark times and what single-file
ControlNet checkpoints are converted with); ``tiny()`` is the same layout shrunk to a few
thousand parameters for tests and ``bench/decode_gpu.py --models tiny``. Both return plain
dicts, one per pipeline component, in the form each class's ``from_config`` takes.
"""

from __future__ import annotations

import copy

#: The reference's UNet/ControlNet down path (three cross-attention blocks, one plain block).
DOWN_BLOCKS = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
UP_BLOCKS = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3
#: VAE latent scaling factor of SD1.x.
VAE_SCALING = 0.18215

_UNET = {
    "_class_name": "UNet2DConditionModel",
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": DOWN_BLOCKS,
    "up_block_types": UP_BLOCKS,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}

_CONTROLNET = {
    "_class_name": "ControlNetModel",
    "in_channels": 4,
    "conditioning_channels": 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "down_block_types": DOWN_BLOCKS,
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
    "conditioning_embedding_out_channels": (16, 32, 96, 256),
}

_VAE = {
    "_class_name": "AutoencoderKL",
    "sample_size": 512,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "norm_num_groups": 32,
    "scaling_factor": VAE_SCALING,
}

_TEXT_ENCODER = {
    "architectures": ["CLIPTextModel"],
    "model_type": "clip_text_model",
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}

#: What SD1.5's scheduler folder holds (PNDM settings); UniPC is built from it at load time.
_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
}

#: The shrinking applied by ``tiny()``: same block types, a handful of channels.
_TINY_CHANGES = {
    "unet": {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4,
             "cross_attention_dim": 16, "attention_head_dim": 2, "sample_size": 8},
    "controlnet": {"block_out_channels": (8, 8, 8, 8), "layers_per_block": 1, "norm_num_groups": 4,
                   "cross_attention_dim": 16, "attention_head_dim": 2,
                   "conditioning_embedding_out_channels": (4, 4, 4, 4)},
    "vae": {"block_out_channels": (4, 4, 4, 4), "layers_per_block": 1, "norm_num_groups": 2,
            "sample_size": 64},
    "text_encoder": {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "projection_dim": 16},
}


def full() -> dict[str, dict]:
    """The SD1.5 configs: keys unet, controlnet, vae, text_encoder, scheduler."""
    return copy.deepcopy({"unet": _UNET, "controlnet": _CONTROLNET, "vae": _VAE,
                          "text_encoder": _TEXT_ENCODER, "scheduler": _SCHEDULER})


def tiny(vocab_size: int = 49408) -> dict[str, dict]:
    """The SD1.5 layout with tiny widths; ``vocab_size`` matches a small hand-made tokenizer."""
    configs = full()
    for name, changes in _TINY_CHANGES.items():
        configs[name].update(changes)
    configs["text_encoder"]["vocab_size"] = vocab_size
    return configs
