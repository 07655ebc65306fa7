"""Image loading and the working size every other step uses.

Images are handled as RGB ``uint8`` numpy arrays of shape (H, W, 3).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from plic import safefs
from plic.errors import PlicInputError

#: Longest side of the working image in the reference pipeline.
DEFAULT_MAX_SIDE = 1024
#: The most pixels an image may have to be read (100 MP; at about 12 bytes per pixel while it
#: is encoded). plic: --max-pixels.
DEFAULT_MAX_PIXELS = 100_000_000
#: File name endings taken as images when a folder is expanded (plic encode, bench, eval).
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as RGB uint8, applying its EXIF orientation.

    Transparent images are flattened onto white. An image of more than ``max_pixels`` pixels
    (as its header declares, before anything is decoded) is refused, except a JPEG, which its
    decoder then reads at 1/2, 1/4 or 1/8 of its size where that is within the limit. Only a
    regular file is read (a FIFO or a device is refused). Whatever the file holds, any failure
    raises :class:`PlicInputError` naming the file.
    """
    path = Path(path)
    try:
        with safefs.open_regular(path) as f, _opened(f, max_pixels) as im:
            if getattr(im, "n_frames", 1) > 1:
                warnings.warn(f"{path}: has {im.n_frames} frames; PLIC uses the first", stacklevel=2)
            im = ImageOps.exif_transpose(im)
            return pil_to_rgb(im)
    except FileNotFoundError:
        raise PlicInputError(f"{path}: no such file") from None
    except PlicInputError as exc:
        raise PlicInputError(f"{path}: {exc}") from None
    except Image.DecompressionBombError as exc:
        raise PlicInputError(f"{path}: too large to open safely ({exc}); scale it down first") from None
    except (UnidentifiedImageError, safefs.NotRegularFileError) as exc:
        raise PlicInputError(f"{path}: cannot read this image ({exc})") from None
    except MemoryError:
        raise PlicInputError(f"{path}: cannot read this image (out of memory); lower --max-pixels") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file makes PIL's decoders raise anything
        raise PlicInputError(f"{path}: cannot read this image ({type(exc).__name__}: {exc})") from None


def _opened(f, max_pixels: int) -> Image.Image:
    """``f`` opened by PIL (which refuses decompression bombs here) and checked by
    :func:`_within`; PIL's own warning about a large image is shown only for an image that is
    then read, not for one refused with PLIC's message."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        im = Image.open(f)
    try:
        _within(im, max_pixels)
    except BaseException:
        im.close()
        raise
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
    return im


def _within(im: Image.Image, max_pixels: int) -> None:
    """Refuse ``im`` (opened, not yet decoded) beyond ``max_pixels``, unless it is a JPEG that
    its decoder can read reduced to within the limit (PIL's draft mode), which is then asked for."""
    width, height = im.size
    if width * height <= max_pixels:
        return
    if im.format == "JPEG":
        for scale in (2, 4, 8):
            if (width // scale) * (height // scale) <= max_pixels:
                im.draft(im.mode, (-(-width // scale), -(-height // scale)))
                return
    raise PlicInputError(f"is {width}x{height}, {width * height} pixels, more than the {max_pixels} "
                         "allowed: scale it down first, or raise --max-pixels")


def pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Convert any PIL image to an RGB uint8 array; alpha is composited onto white and
    high-bit-depth grey (:func:`to_8bit`) is scaled to 8 bits."""
    im = to_8bit(im)
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return check_rgb(rgb)


def to_8bit(im: Image.Image) -> Image.Image:
    """A grey image of more than 8 bits as mode "L", scaled rather than clipped (PIL's own
    conversion clips, turning a 16-bit image white): 16-bit modes ("I;16...", and "I", which
    PIL uses for 16-bit PNG and TIFF) by 255/65535, "I" values beyond 16 bits by 255/(2^31-1);
    "F" in 0..1 by 255, other "F" values clipped to 0..255. Other modes are returned as they are
    (PIL already reads 16-bit RGB as 8-bit RGB)."""
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    values = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        scale = 255.0 if values.size and np.nanmax(values) <= 1.0 else 1.0
    else:
        scale = 255.0 / (65535 if values.size == 0 or values.max() <= 65535 else 2**31 - 1)
    scaled = np.clip(np.nan_to_num(values * scale), 0, 255)
    return Image.fromarray(np.rint(scaled).astype(np.uint8))


def check_rgb(rgb: np.ndarray, what: str = "image") -> np.ndarray:
    """Validate an RGB uint8 array (H, W, 3) that is not empty; return it contiguous."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise PlicInputError(f"{what}: expected an RGB uint8 array (H, W, 3), got {rgb.dtype} {rgb.shape}")
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise PlicInputError(f"{what}: the image is empty ({rgb.shape[1]}x{rgb.shape[0]})")
    return np.ascontiguousarray(rgb)


def working_size(width: int, height: int, max_side: int = DEFAULT_MAX_SIDE) -> tuple[int, int]:
    """Size after scaling the longest side down to ``max_side`` (never up), at least 1x1."""
    if max_side < 1:
        raise PlicInputError(f"max_side must be at least 1, got {max_side}")
    longest = max(width, height)
    if longest <= max_side:
        return width, height
    scale = max_side / longest
    return max(1, round(width * scale)), max(1, round(height * scale))


def resize(rgb: np.ndarray, size: tuple[int, int], resample: int = Image.LANCZOS) -> np.ndarray:
    """Resize an RGB (or single-channel) uint8 array to ``size`` = (width, height)."""
    if (rgb.shape[1], rgb.shape[0]) == tuple(size):
        return rgb
    return np.asarray(Image.fromarray(rgb).resize(size, resample), dtype=np.uint8)


def resize_to_height(rgb: np.ndarray, height: int) -> np.ndarray:
    """``rgb`` resized (Lanczos) to ``height`` pixels, keeping its aspect ratio."""
    h, w = rgb.shape[:2]
    return resize(rgb, (max(1, round(w * height / h)), height))


def to_working(rgb: np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> np.ndarray:
    """The working image: longest side scaled down to ``max_side`` with Lanczos."""
    rgb = check_rgb(rgb)
    return resize(rgb, working_size(rgb.shape[1], rgb.shape[0], max_side))
