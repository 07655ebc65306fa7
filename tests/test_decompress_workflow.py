"""The decompress workflow wires the reference decoder out of ComfyUI's core nodes (its validity
against object_info.json is checked with every other workflow in test_workflows.py)."""

import json

from conftest import REPO

API = json.loads((REPO / "workflows" / "api" / "plic_decompress.json").read_text())
UI = json.loads((REPO / "workflows" / "plic_decompress.json").read_text())


def _source(node: dict, name: str) -> dict:
    """The node feeding input ``name`` of ``node``."""
    return API[node["inputs"][name][0]]


def _only(class_type: str) -> dict:
    (node,) = [n for n in API.values() if n["class_type"] == class_type]
    return node


def test_inpaint_controlnet_gets_the_minus_one_hint_and_color_canny_the_palette_hint():
    applied = [n for n in API.values() if n["class_type"] == "ControlNetApplyAdvanced"]
    feeds = {_source(n, "control_net")["inputs"]["control_net_name"]: _source(n, "image")["class_type"]
             for n in applied}
    assert feeds == {"control_v11p_sd15_inpaint.pth": "PlicInpaintHint",
                     "Color-Canny-Controlnet-model/diffusion_pytorch_model.safetensors": "PlicUnpack"}


def test_sampler_uses_unipc_with_the_files_seed_and_steps_and_keeps_salient_pixels():
    sampler = _only("KSampler")
    assert sampler["inputs"]["sampler_name"].startswith("uni_pc")
    assert _source(sampler, "seed")["class_type"] == "PlicDecodeSettings"
    assert _source(sampler, "steps")["class_type"] == "PlicDecodeSettings"
    assert _source(sampler, "latent_image")["class_type"] == "InpaintModelConditioning"
    save = _only("SaveImage")
    assert _source(save, "images")["class_type"] == "PlicRestoreSalient"


def test_ui_and_api_formats_hold_the_same_nodes():
    ui_types = sorted(n["type"] for n in UI["nodes"] if n["type"] != "MarkdownNote")
    assert ui_types == sorted(n["class_type"] for n in API.values())
