"""Tiny random-weight decoder models saved as a ComfyUI ``models/`` tree, for tests.

``models/diffusers/sd15`` (UNet, VAE, CLIP text model, a character-level CLIPTokenizer,
scheduler), ``models/controlnet/inpaint`` and ``models/controlnet/color_canny`` (diffusers
folders) and ``models/controlnet/color_canny_single.safetensors`` (the same ControlNet as one
file, with its config beside it as ``color_canny_single.json``), and one random LoRA of them in
both layouts: ``models/loras/tiny_lora_kohya.safetensors`` and, in a subfolder as ComfyUI lists
them, ``models/loras/diffusers/tiny_lora.safetensors`` (the same weights).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

PIPELINE = "sd15"
INPAINT = "inpaint"
COLOR_CANNY = "color_canny"
COLOR_CANNY_FILE = "color_canny_single.safetensors"
#: The tiny LoRA in each layout, by its name under models/loras.
LORAS = {"kohya": "tiny_lora_kohya.safetensors", "diffusers": "diffusers/tiny_lora.safetensors"}


def build_models_tree(models_dir: Path) -> Path:
    """Write the tiny models under ``models_dir`` and return it."""
    from safetensors.torch import save_file

    from bench import random_models

    components = random_models.build_sd15(models_dir.parent / "tokenizer-src", tiny=True, seed=0)
    random_models.save_models_tree(components, models_dir, PIPELINE, (INPAINT, COLOR_CANNY))
    net = components.controlnets[1]
    single = models_dir / "controlnet" / COLOR_CANNY_FILE
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(single))
    single.with_suffix(".json").write_text(json.dumps(dict(net.config)), encoding="utf-8")
    for layout, name in LORAS.items():
        random_models.save_random_lora(components, models_dir / "loras" / name, layout)
    return models_dir


@pytest.fixture(scope="session")
def tiny_models_dir(tmp_path_factory) -> Path:
    """A ComfyUI-style ``models`` folder holding the tiny decoder models (built once)."""
    return build_models_tree(tmp_path_factory.mktemp("tiny") / "models")


def load_node(**inputs):
    """PLIC Diffusers Loader run as ComfyUI runs it (inputs by name) on the tiny models, those
    given in ``inputs`` changed: its output, the reconstructor."""
    from nodes.reconstruct import PlicDiffusersLoader

    (reconstructor,) = PlicDiffusersLoader().load(**{
        "model": PIPELINE, "inpaint_controlnet": INPAINT, "color_canny_controlnet": COLOR_CANNY,
        "precision": "auto", "cpu_offload": False, **inputs})
    return reconstructor
