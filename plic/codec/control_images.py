"""The two control images the decoder's ControlNets take (see shared reference, "Decoding")."""

from __future__ import annotations

import numpy as np

from plic.errors import PlicInputError


def color_canny(palette_full: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Color+canny hint: the full-size palette with every edge pixel painted white (uint8 RGB)."""
    if palette_full.shape[:2] != edges.shape:
        raise PlicInputError(
            f"edges are {edges.shape[1]}x{edges.shape[0]} but the palette is "
            f"{palette_full.shape[1]}x{palette_full.shape[0]}"
        )
    hint = palette_full.copy()
    hint[edges.astype(bool)] = 255
    return hint


def inpaint(kept_pixels: np.ndarray, keep_mask: np.ndarray | None) -> np.ndarray:
    """Inpaint hint as diffusers' inpaint ControlNet expects it: float32 (H, W, 3) in 0..1,
    with every pixel to regenerate set to -1. ``keep_mask`` marks the pixels to keep; with
    ``None`` (no salient regions) the whole image is regenerated."""
    hint = kept_pixels.astype(np.float32) / 255.0
    if keep_mask is None:
        hint[...] = -1.0
        return hint
    if keep_mask.shape != kept_pixels.shape[:2]:
        raise PlicInputError(
            f"the salient mask is {keep_mask.shape[1]}x{keep_mask.shape[0]} but the image is "
            f"{kept_pixels.shape[1]}x{kept_pixels.shape[0]}"
        )
    hint[~keep_mask.astype(bool)] = -1.0
    return hint
