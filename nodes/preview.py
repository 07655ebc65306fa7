"""PLIC Preview Parts: a payload's parts side by side, as ``plic preview`` draws them."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from plic.codec import export, fileformat

from .common import CATEGORY, PAYLOAD, comfy_directory, map_batch, padded_to_one_size, rgb_list_to_image


class PlicPreviewParts:
    DESCRIPTION = ("Shows what a PLIC payload holds, side by side with the bytes each part takes: the "
                   "colour+canny hint, the palette, the edges and the salient pixels (as plic preview "
                   "draws them), with the file's size and prompt below. The picture is also an IMAGE "
                   "output, for Save Image.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("parts",)
    OUTPUT_TOOLTIPS = ("The parts side by side, one picture per file of the batch (white-padded to one size).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "plic": (PAYLOAD, {"tooltip": "A payload from PLIC Load or PLIC Pack."}),
        }}

    def run(self, plic):
        pictures = map_batch(list(plic), lambda item: np.asarray(
            export.preview_image(item, "PLIC Preview Parts", len(fileformat.dumps(item)))))
        return {"ui": {"images": [save_temporary(picture) for picture in pictures]},
                "result": (rgb_list_to_image(padded_to_one_size(pictures, fill=255)),)}


def save_temporary(picture: np.ndarray) -> dict:
    """``picture`` as a PNG in ComfyUI's temp folder, named as its image previews expect."""
    folder = comfy_directory("temp")
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, prefix="plic_parts_", suffix=".png", delete=False) as file:
        Image.fromarray(picture).save(file, "PNG", compress_level=1)
    return {"filename": Path(file.name).name, "subfolder": "", "type": "temp"}


NODE_CLASS_MAPPINGS = {"PlicPreviewParts": PlicPreviewParts}
NODE_DISPLAY_NAME_MAPPINGS = {"PlicPreviewParts": "PLIC Preview Parts"}
