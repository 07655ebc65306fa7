"""Salient regions: the few pixels (faces, small text, logos) stored verbatim.

A salient selection is a binary mask of the working image. It is stored as the mask itself
(JBIG2, see :mod:`plic.jbig2`) plus the pixels of the boxes that cover it, each box an image
file (PNG by default: lossless, as the reference pipeline).
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from . import jbig2
from .errors import PlicInputError
from .fileformat import REGION_CODECS, SalientRegion


def check_mask(mask: np.ndarray, size: tuple[int, int], what: str = "salient mask") -> np.ndarray:
    """A mask as a (H, W) bool array of the working ``size`` = (width, height)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise PlicInputError(f"{what}: expected a 2-D mask, got shape {mask.shape}")
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise PlicInputError(
            f"{what} is {mask.shape[1]}x{mask.shape[0]} but the working image is "
            f"{size[0]}x{size[1]}; give a mask of the image's size"
        )
    return mask > (0.5 if mask.dtype.kind == "f" else 0)


def region_boxes(mask: np.ndarray, pad: int = 2) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) covering ``mask``: one per connected component grown by ``pad``,
    overlapping boxes merged until none overlap."""
    import cv2

    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    height, width = mask.shape
    boxes = []
    for x, y, w, h, _area in stats[1:count]:
        boxes.append((max(0, x - pad), max(0, y - pad),
                      min(width, x + w + pad), min(height, y + h + pad)))
    merged = True
    while merged:
        merged = False
        out: list[tuple[int, int, int, int]] = []
        for box in boxes:
            for i, other in enumerate(out):
                if box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]:
                    out[i] = (min(box[0], other[0]), min(box[1], other[1]),
                              max(box[2], other[2]), max(box[3], other[3]))
                    merged = True
                    break
            else:
                out.append(box)
        boxes = out
    return [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes]


def encode_crop(pixels: np.ndarray, codec: str = "png", quality: int = 90) -> bytes:
    """One region's pixels as an image file in ``codec`` (see fileformat.REGION_CODECS)."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if codec == "png":
        image.save(buffer, format="PNG", optimize=True)
    elif codec == "webp-lossless":
        image.save(buffer, format="WEBP", lossless=True, quality=100, method=6)
    elif codec == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=6)
    else:
        raise PlicInputError(f"unknown salient codec {codec!r}; use one of {sorted(REGION_CODECS.values())}")
    return buffer.getvalue()


def pack(rgb: np.ndarray, mask: np.ndarray, *, codec: str = "png", quality: int = 90,
         pad: int = 2) -> tuple[bytes | None, list[SalientRegion]]:
    """Store the pixels of ``rgb`` under ``mask``: the JBIG2 mask stream and the regions.

    Pixels inside a box but outside the mask are zeroed, which costs almost nothing to store
    and is never shown (the decoder regenerates them). An empty mask stores nothing."""
    mask = check_mask(mask, (rgb.shape[1], rgb.shape[0]))
    if not mask.any():
        return None, []
    masked = np.where(mask[..., None], rgb, 0).astype(np.uint8)
    regions = [SalientRegion(x, y, w, h, codec, encode_crop(masked[y:y + h, x:x + w], codec, quality))
               for x, y, w, h in region_boxes(mask, pad)]
    return jbig2.encode_embedded(mask.astype(np.uint8)), regions


def unpack(mask_stream: bytes | None, regions: list[SalientRegion],
           size: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray]:
    """The kept-pixel mask (bool, or None when nothing is salient) and an RGB image of the
    working ``size`` holding the stored pixels (zero elsewhere)."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    if mask_stream is None:
        return None, pixels
    mask = jbig2.decode(mask_stream, max_pixels=width * height).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"salient mask is {mask.shape[1]}x{mask.shape[0]}, expected {width}x{height}")
    for r in regions:
        with Image.open(io.BytesIO(r.data)) as im:
            if im.size != (r.width, r.height):
                raise ValueError(f"salient region at ({r.x}, {r.y}) holds a {im.size[0]}x{im.size[1]} "
                                 f"image, expected {r.width}x{r.height}")
            crop = np.asarray(im.convert("RGB"), dtype=np.uint8)
        box = (slice(r.y, r.y + r.height), slice(r.x, r.x + r.width))
        pixels[box] = np.where(mask[box][..., None], crop, pixels[box])
    return mask, pixels
