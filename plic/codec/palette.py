"""The colour palette: the image shrunk to a tiny square, stored as WebP."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from plic.errors import PlicInputError
from plic.image import check_rgb, resize

#: Reference settings: 32x32 bicubic, WebP quality 80.
DEFAULT_SIZE = 32
DEFAULT_QUALITY = 80
#: Largest palette side: the encoder accepts no more and the reader refuses more before
#: decoding (docs/format.md, PALT), so a hostile file cannot make it decode a huge image.
MAX_SIZE = 256


def encode(rgb: np.ndarray, size: int = DEFAULT_SIZE, quality: int = DEFAULT_QUALITY) -> bytes:
    """Shrink ``rgb`` to ``size`` x ``size`` (bicubic) and encode it as WebP at ``quality``."""
    if not 1 <= size <= MAX_SIZE:
        raise PlicInputError(f"palette size must be between 1 and {MAX_SIZE}, got {size}")
    if not 0 <= quality <= 100:
        raise PlicInputError(f"palette WebP quality must be between 0 and 100, got {quality}")
    small = resize(check_rgb(rgb), (size, size), Image.BICUBIC)
    buffer = io.BytesIO()
    Image.fromarray(small).save(buffer, format="WEBP", quality=quality, method=6)
    return buffer.getvalue()


def decode(data: bytes) -> np.ndarray:
    """The palette as an RGB uint8 array (size, size, 3). Raises ValueError (OSError when PIL
    cannot read it) for anything but a WebP of at most :data:`MAX_SIZE` pixels a side."""
    with Image.open(io.BytesIO(data)) as im:
        if im.format != "WEBP":
            raise ValueError(f"palette is {im.format}, expected WebP")
        if max(im.size) > MAX_SIZE:
            raise ValueError(f"palette is {im.width}x{im.height}, at most {MAX_SIZE}x{MAX_SIZE} allowed")
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def upscale(palette: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The palette stretched to ``size`` = (width, height) with nearest-neighbour, as the reference."""
    return resize(palette, size, Image.NEAREST)
