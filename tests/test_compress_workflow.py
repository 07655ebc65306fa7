"""Runs workflows/api/plic_compress.json node by node through our nodes' own functions, as
ComfyUI's executor would, with ComfyUI's LoadImage imitated (IMAGE plus its 64x64 empty MASK for
an image without alpha)."""

import json

import numpy as np
import torch

import nodes
from plic.codec import fileformat, pack
from plic.image import load_rgb
from tests.support.images import REPO, image_path, load_shared


def load_image(image: str):
    rgb = load_rgb(image_path(image))
    return {"result": (torch.from_numpy(rgb.astype(np.float32) / 255.0)[None], torch.zeros((1, 64, 64)))}


def run_api_workflow(workflow: dict) -> dict:
    """Execute every node once its inputs are ready; return each node's outputs."""
    outputs, pending = {}, dict(workflow)
    while pending:
        ready = [key for key, node in pending.items()
                 if all(not isinstance(v, list) or v[0] in outputs for v in node["inputs"].values())]
        assert ready, f"cycle or missing node among {sorted(pending)}"
        for key in ready:
            node = pending.pop(key)
            kwargs = {name: outputs[v[0]][v[1]] if isinstance(v, list) else v
                      for name, v in node["inputs"].items()}
            if node["class_type"] == "LoadImage":
                result = load_image(kwargs["image"])
            else:
                cls = nodes.NODE_CLASS_MAPPINGS[node["class_type"]]
                result = getattr(cls(), cls.FUNCTION)(**kwargs)
            outputs[key] = result.get("result", ()) if isinstance(result, dict) else result
            outputs[key + ":ui"] = result.get("ui") if isinstance(result, dict) else None
    return outputs


def test_compress_workflow_writes_a_plic_with_caption_salient_edges_and_palette(tmp_path, monkeypatch):
    monkeypatch.setenv("PLIC_OUTPUT_DIR", str(tmp_path))
    workflow = json.loads((REPO / "workflows" / "api" / "plic_compress.json").read_text())
    workflow["1"]["inputs"]["image"] = "astronaut.png"
    outputs = run_api_workflow(workflow)

    saved = outputs["8:ui"]["plic"]
    assert [s["filename"] for s in saved] == ["PLIC_00001_.plic"]
    plic = fileformat.load(tmp_path / "PLIC_00001_.plic")
    assert plic.prompt == workflow["2"]["inputs"]["manual_text"]
    assert plic.working_size == (512, 512)
    parts = pack.unpack(plic)
    rgb = load_shared("astronaut.png")
    from plic.codec.edges import canny
    np.testing.assert_array_equal(parts.edges, canny(rgb))
    assert parts.salient_mask is not None and parts.salient_mask.any()  # the face
    assert saved[0]["bytes"] == (tmp_path / "PLIC_00001_.plic").stat().st_size
