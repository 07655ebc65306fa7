"""Canny edges of the working image, packed losslessly as JBIG2 (see :mod:`plic.codec.jbig2`)."""

from __future__ import annotations

import numpy as np

from plic.codec import jbig2
from plic.errors import PlicInputError
from plic.image import check_rgb

#: Hysteresis thresholds of the reference pipeline: ``cv2.Canny(rgb, 100, 200)``.
DEFAULT_LOW = 100
DEFAULT_HIGH = 200
#: The largest gradient cv2.Canny measures on 8-bit images (the L1 norm of two 3x3 Sobel
#: responses, 4 x 255 each): a threshold above it finds nothing, and far above it OpenCV's
#: integer arithmetic overflows into the densest map instead.
MAX_THRESHOLD = 2040


def canny(rgb: np.ndarray, low: int = DEFAULT_LOW, high: int = DEFAULT_HIGH) -> np.ndarray:
    """Binary edge map (H, W) uint8 with 1 on edges, as ``cv2.Canny`` on the RGB image."""
    import cv2

    if not 0 <= low <= high <= MAX_THRESHOLD:
        raise PlicInputError(f"Canny thresholds must satisfy 0 <= low <= high <= {MAX_THRESHOLD}, "
                             f"got {low}, {high}")
    edges = cv2.Canny(check_rgb(rgb), low, high)
    return (edges > 0).astype(np.uint8)


def pack(bitmap: np.ndarray, effort: str = "default") -> bytes:
    """Encode a binary map (1 = edge) as a JBIG2 embedded stream, losslessly; ``effort`` is
    how hard the coder looks for its best parameters (see plic.codec.jbig2.choose_parameters)."""
    return jbig2.encode_embedded(bitmap, effort=effort)


def unpack(stream: bytes, *, max_pixels: int = 1 << 28) -> np.ndarray:
    """Decode a JBIG2 stream written by :func:`pack` back to the (H, W) uint8 0/1 map."""
    return jbig2.decode(stream, max_pixels=max_pixels)


def fragments(bitmap: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The fragments of an edge map: its 8-connected components. Returns the (H, W) int32
    labels (0 = no edge) and the length of each label in pixels (index 0 holds 0). Canny
    edges are one pixel thin, so a fragment's pixel count is its length."""
    import cv2

    count, labels = cv2.connectedComponents(np.ascontiguousarray(bitmap, dtype=np.uint8), connectivity=8)
    lengths = np.bincount(labels.ravel(), minlength=count)
    lengths[0] = 0
    return labels, lengths


def keep_long(labels: np.ndarray, lengths: np.ndarray, min_length: int) -> np.ndarray:
    """The (H, W) uint8 edge map of the fragments (see :func:`fragments`) at least
    ``min_length`` pixels long."""
    keep = lengths >= max(1, min_length)
    keep[0] = False
    return keep[labels].astype(np.uint8)
