"""The decompress workflow wires the reference decoder out of ComfyUI's core nodes (its validity
against object_info.json is checked with every other workflow in test_workflows.py)."""

import json

from tests.support.images import REPO

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


FAST = json.loads((REPO / "workflows" / "api" / "plic_decompress_fast.json").read_text())
FAST_UI = json.loads((REPO / "workflows" / "plic_decompress_fast.json").read_text())
REFERENCE = json.loads((REPO / "workflows" / "api" / "plic_decompress_reference.json").read_text())
REFERENCE_UI = json.loads((REPO / "workflows" / "plic_decompress_reference.json").read_text())


def _one(prompt: dict, class_type: str) -> tuple[str, dict]:
    (found,) = [(key, n) for key, n in prompt.items() if n["class_type"] == class_type]
    return found


def test_fast_template_is_the_decompress_graph_with_comfyuis_lora_loader_and_lcm_sampler():
    """plic_decompress_fast: ComfyUI's own LoraLoader between the checkpoint and everything that
    used it, KSampler with the sampler, schedule and cfg LCM-LoRA's authors give, 4 steps; the
    rest is the decompress template's graph, node for node."""
    lora_id, lora = _one(FAST, "LoraLoader")
    checkpoint_id, _ = _one(FAST, "CheckpointLoaderSimple")
    assert lora["inputs"]["model"] == [checkpoint_id, 0] and lora["inputs"]["clip"] == [checkpoint_id, 1]
    assert lora["inputs"]["lora_name"].endswith(".safetensors")
    _, sampler = _one(FAST, "KSampler")
    assert sampler["inputs"]["model"] == [lora_id, 0]
    assert (sampler["inputs"]["sampler_name"], sampler["inputs"]["scheduler"]) == ("lcm", "sgm_uniform")
    assert all(n["inputs"]["clip"] == [lora_id, 1] for n in FAST.values() if n["class_type"] == "CLIPTextEncode")
    settings_id, settings = _one(FAST, "PlicDecodeSettings")
    assert (settings["inputs"]["steps"], settings["inputs"]["cfg"]) == (4, 1.0)
    assert sampler["inputs"]["steps"] == [settings_id, 1] and sampler["inputs"]["cfg"] == [settings_id, 4]
    assert (sorted(n["class_type"] for key, n in FAST.items() if key != lora_id)
            == sorted(n["class_type"] for n in API.values()))
    ui_types = sorted(n["type"] for n in FAST_UI["nodes"] if n["type"] != "MarkdownNote")
    assert ui_types == sorted(n["class_type"] for n in FAST.values())
    (note,) = [n for n in FAST_UI["nodes"] if n["type"] == "MarkdownNote"]
    assert "models/loras/" in note["widgets_values"][0] and "What it trades" in note["widgets_values"][0]


def test_reference_template_is_load_loader_reconstruct_save_with_evaluate():
    load_id, _ = _one(REFERENCE, "PlicLoad")
    loader_id, loader = _one(REFERENCE, "PlicDiffusersLoader")
    reconstruct_id, reconstruct = _one(REFERENCE, "PlicReconstruct")
    assert reconstruct["inputs"]["pipeline"] == [loader_id, 0] and reconstruct["inputs"]["plic"] == [load_id, 0]
    assert reconstruct["inputs"]["scheduler"] == "file" and reconstruct["inputs"]["steps"] == 0  # the file's
    assert _one(REFERENCE, "SaveImage")[1]["inputs"]["images"] == [reconstruct_id, 0]
    _, evaluate = _one(REFERENCE, "PlicEvaluate")
    assert evaluate["inputs"]["reconstruction"] == [reconstruct_id, 0] and evaluate["inputs"]["plic"] == [load_id, 0]
    assert (loader["inputs"]["family"], loader["inputs"]["lora_1"]) == ("sd15", "none")
    ui_types = sorted(n["type"] for n in REFERENCE_UI["nodes"] if n["type"] != "MarkdownNote")
    assert ui_types == sorted(n["class_type"] for n in REFERENCE.values())
