"""Small nodes that let ComfyUI's own sampler graph decode a .plic file the reference's way:
the inpaint ControlNet's hint, the file's decode settings, and the exact salient pixels put back
after VAE Decode (see workflows/plic_decompress.json)."""

from __future__ import annotations

import numpy as np

from plic.codec import control_images
from plic.codec.pack import DEFAULT_DECODE_SETTINGS
from plic.decode.reconstruct import DEFAULT_GUIDANCE, DecodeSettings
from plic.errors import PlicInputError

from .common import CATEGORY, PAYLOAD, check_batch, image_to_rgb_list, mask_to_list


def _batched(name: str, tensor, count: int):
    """``tensor`` with a batch of ``count``: a batch of one is repeated; others must match."""
    check_batch(tensor.shape[0], count, name, "PLIC Restore Salient")
    return tensor.expand(count, *tensor.shape[1:])


def _check_size(what: str, tensor, height: int, width: int) -> None:
    if tuple(tensor.shape[1:3]) != (height, width):
        raise PlicInputError(
            f"{what} is {tensor.shape[2]}x{tensor.shape[1]} but the image is {width}x{height}; "
            "generate at the file's working size (PLIC Unpack's width and height)")


class PlicRestoreSalient:
    DESCRIPTION = ("Puts the stored salient pixels (faces, text, logos) back into a generated image, "
                   "exactly: every pixel under the mask is replaced by the stored one.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The image with the salient pixels restored.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The generated image (e.g. from VAE Decode), at the "
                                           "file's working size."}),
            "salient_pixels": ("IMAGE", {"tooltip": "PLIC Unpack's salient_pixels."}),
            "salient_mask": ("MASK", {"tooltip": "PLIC Unpack's salient_mask: 1 where pixels are "
                                                 "restored."}),
        }}

    def run(self, image, salient_pixels, salient_mask):
        import torch

        count, height, width = image.shape[:3]
        mask = salient_mask if salient_mask.dim() == 3 else salient_mask[None]
        _check_size("salient_pixels", salient_pixels, height, width)
        _check_size("salient_mask", mask[..., None], height, width)
        kept = _batched("salient_pixels", salient_pixels, count).to(image.device, image.dtype)
        keep = _batched("salient_mask", mask, count).to(image.device)[..., None] > 0.5
        return (torch.where(keep, kept[..., :3], image[..., :3]),)


class PlicInpaintHint:
    DESCRIPTION = ("Makes the hint the SD1.5 inpaint ControlNet (control_v11p_sd15_inpaint) "
                   "expects: the kept pixels as they are and every pixel to regenerate set to -1. "
                   "Feed it to Apply ControlNet with the inpaint ControlNet.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("inpaint_hint",)
    OUTPUT_TOOLTIPS = ("Kept pixels in 0..1, pixels to regenerate at -1 (not for display).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "salient_pixels": ("IMAGE", {"tooltip": "The pixels to keep (PLIC Unpack's "
                                                    "salient_pixels)."}),
            "salient_mask": ("MASK", {"tooltip": "1 where pixels are kept (PLIC Unpack's "
                                                 "salient_mask); everything else is regenerated."}),
        }}

    def run(self, salient_pixels, salient_mask):
        import torch

        pixels = image_to_rgb_list(salient_pixels)
        masks = mask_to_list(salient_mask, len(pixels))
        return (torch.from_numpy(np.stack([control_images.inpaint(p, m) for p, m in zip(pixels, masks)])),)


class PlicDecodeSettings:
    DESCRIPTION = ("Reads the decode settings stored in a .plic file (the reference's seed, steps, "
                   "negative prompt and ControlNet strength) for KSampler, CLIP Text Encode and "
                   "Apply ControlNet; any of them can be overridden here (e.g. fewer steps on a "
                   "CPU) without rewiring the graph.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("INT", "INT", "STRING", "FLOAT", "FLOAT")
    RETURN_NAMES = ("seed", "steps", "negative_prompt", "controlnet_strength", "cfg")
    OUTPUT_TOOLTIPS = (f"The seed (the file's, default {DEFAULT_DECODE_SETTINGS['seed']}).",
                       f"The step count (the file's, default {DEFAULT_DECODE_SETTINGS['steps']}).",
                       "The file's negative prompt.",
                       "The ControlNet strength (the file's, default "
                       f"{DEFAULT_DECODE_SETTINGS['controlnet_scale']}).",
                       f"Classifier-free guidance for KSampler (default {DEFAULT_GUIDANCE:g}).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "plic": (PAYLOAD, {"tooltip": "A payload from PLIC Load; the first file's settings "
                                          "are used."}),
        }, "optional": {
            "steps": ("INT", {"default": 0, "min": 0, "max": 1000,
                              "tooltip": "Denoising steps; 0 takes the file's (default "
                                         f"{DEFAULT_DECODE_SETTINGS['steps']})."}),
            "seed": ("INT", {"default": -1, "min": -1, "max": 2**63 - 1,
                             "tooltip": "Random seed; -1 takes the file's (default "
                                        f"{DEFAULT_DECODE_SETTINGS['seed']})."}),
            "controlnet_strength": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 10.0, "step": 0.05,
                                              "tooltip": "Strength of both ControlNets; -1 takes the "
                                                         "file's (default "
                                                         f"{DEFAULT_DECODE_SETTINGS['controlnet_scale']})."}),
            "cfg": ("FLOAT", {"default": DEFAULT_GUIDANCE, "min": 0.0, "max": 30.0, "step": 0.1,
                              "tooltip": f"Classifier-free guidance (default {DEFAULT_GUIDANCE:g})."}),
        }}

    def run(self, plic, steps=0, seed=-1, controlnet_strength=-1.0, cfg=DEFAULT_GUIDANCE):
        if not plic:
            raise PlicInputError("PLIC Decode Settings: the payload is empty")
        chosen = DecodeSettings(steps=steps or None, seed=None if seed < 0 else seed,
                                controlnet_scale=None if controlnet_strength < 0 else controlnet_strength,
                                guidance_scale=cfg).resolve(plic[0].decode_settings)
        return (chosen.seed, chosen.steps, chosen.negative_prompt, chosen.controlnet_scale,
                chosen.guidance_scale)


NODE_CLASS_MAPPINGS = {"PlicRestoreSalient": PlicRestoreSalient, "PlicInpaintHint": PlicInpaintHint,
                       "PlicDecodeSettings": PlicDecodeSettings}
NODE_DISPLAY_NAME_MAPPINGS = {
    "PlicRestoreSalient": "PLIC Restore Salient",
    "PlicInpaintHint": "PLIC Inpaint Hint",
    "PlicDecodeSettings": "PLIC Decode Settings",
}
