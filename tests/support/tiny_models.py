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
import os
import subprocess
import sys
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

    from tests.support import random_models

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


def save_a1111_checkpoint(pipeline_dir: Path, path: Path, comfyui: Path) -> Path:
    """The diffusers pipeline ``pipeline_dir`` as one ``.safetensors`` file in the A1111 layout
    released SD1.5 fine-tunes (epiCRealism...) come in (``model.diffusion_model.*``,
    ``first_stage_model.*``, ``cond_stage_model.transformer.*``), its keys mapped by ComfyUI's
    own converters from ``comfyui``; run in a child process, so that ComfyUI's modules stay out
    of the tests' own."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(comfyui), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, __file__, str(pipeline_dir), str(path)], check=True, env=env,
                   capture_output=True, timeout=300)
    return path


def _write_a1111(pipeline_dir: Path, path: Path) -> None:
    import comfy.diffusers_convert
    import comfy.utils
    from safetensors.torch import load_file, save_file

    config = json.loads((pipeline_dir / "unet" / "config.json").read_text(encoding="utf-8"))
    layers = config["layers_per_block"]
    attention = [int(kind.startswith("CrossAttn")) for kind in config["down_block_types"]]
    up = [int(kind.startswith("CrossAttn")) for kind in config["up_block_types"]]
    names = comfy.utils.unet_to_diffusers({
        "num_res_blocks": [layers] * len(attention), "channel_mult": [1] * len(attention),
        "transformer_depth": [a for a in attention for _ in range(layers)],
        "transformer_depth_output": [a for a in up for _ in range(layers + 1)][::-1],
        "transformer_depth_middle": 1})
    unet = load_file(str(pipeline_dir / "unet" / "diffusion_pytorch_model.safetensors"))
    vae = load_file(str(pipeline_dir / "vae" / "diffusion_pytorch_model.safetensors"))
    text = load_file(str(pipeline_dir / "text_encoder" / "model.safetensors"))
    state = {f"model.diffusion_model.{names[key]}": value for key, value in unet.items()}
    state.update({f"first_stage_model.{key}": value
                  for key, value in comfy.diffusers_convert.convert_vae_state_dict(vae).items()})
    state.update({f"cond_stage_model.transformer.{key}": value for key, value in text.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({key: value.contiguous() for key, value in state.items()}, str(path))


if __name__ == "__main__":
    _write_a1111(Path(sys.argv[1]), Path(sys.argv[2]))


def astronaut_plic(max_side: int, keep: tuple[slice, slice], prompt: str = "an astronaut",
                   decode_settings: dict | None = None):
    """A small real file for the decoders: the astronaut at ``max_side`` with the pixels under
    ``keep`` (rows, columns) stored as salient."""
    import numpy as np

    from plic.codec import pack
    from tests.support.images import load_shared

    rgb = load_shared("astronaut.png", max_side=max_side)
    mask = np.zeros(rgb.shape[:2], bool)
    mask[keep] = True
    return pack.encode_image(rgb, prompt=prompt, salient_mask=mask, decode_settings=decode_settings,
                              settings=pack.EncodeSettings(max_side=max_side))
