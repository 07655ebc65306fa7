"""Encoding an image to a :class:`~plic.fileformat.PlicFile` and unpacking one for the decoder.

This is the pipeline without a diffusion model: working image, Canny edges (JBIG2), palette
(WebP), optional salient regions, prompt and decode hints. Everything is a parameter whose
default reproduces the reference settings (shared reference, "Encoding").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import edges as edges_mod
from . import hints, palette, salient
from .errors import PlicFormatError
from .fileformat import PlicFile
from .image import DEFAULT_MAX_SIDE, check_rgb, to_working

#: Prompts are cut to this many characters before use (reference).
MAX_PROMPT_CHARS = 240
#: How the reference decoded. These are the format's version-1 defaults (docs/format.md): a file
#: stores only the hints that differ from them, so the usual file carries no HINT section.
DEFAULT_DECODE_HINTS = {
    "seed": 786,
    "steps": 60,
    "negative_prompt": "lowres, bad anatomy, worst quality, low quality",
    "controlnet_scale": 1.0,
    "scheduler": "unipc",
}


@dataclass(frozen=True)
class EncodeSettings:
    """Knobs of the encoder; defaults are the reference pipeline's."""

    max_side: int = DEFAULT_MAX_SIDE
    canny_low: int = edges_mod.DEFAULT_LOW
    canny_high: int = edges_mod.DEFAULT_HIGH
    palette_size: int = palette.DEFAULT_SIZE
    palette_quality: int = palette.DEFAULT_QUALITY
    salient_codec: str = "png"
    salient_quality: int = 90


def encode_image(rgb: np.ndarray, *, prompt: str = "", settings: EncodeSettings = EncodeSettings(),
                 salient_mask: np.ndarray | None = None,
                 decode_hints: dict | None = None) -> PlicFile:
    """Compress an RGB uint8 image. ``salient_mask`` is a mask of the *working* image."""
    original = check_rgb(rgb)
    work = to_working(original, settings.max_side)
    size = (work.shape[1], work.shape[0])
    mask_stream, regions = (None, [])
    if salient_mask is not None:
        mask_stream, regions = salient.pack(work, salient_mask, codec=settings.salient_codec,
                                            quality=settings.salient_quality)
    return PlicFile(
        original_size=(original.shape[1], original.shape[0]),
        working_size=size,
        prompt=prompt,
        edges=edges_mod.pack(edges_mod.canny(work, settings.canny_low, settings.canny_high)),
        palette=palette.encode(work, settings.palette_size, settings.palette_quality),
        salient_mask=mask_stream,
        salient_regions=regions,
        decode_hints=non_default_hints(decode_hints or {}),
    )


def non_default_hints(hints: dict) -> dict:
    """The entries of ``hints`` that differ from :data:`DEFAULT_DECODE_HINTS`."""
    return {key: value for key, value in hints.items() if DEFAULT_DECODE_HINTS.get(key) != value}


@dataclass
class Unpacked:
    """A file's parts as arrays of the working size, ready for ControlNets or for export."""

    prompt: str
    width: int
    height: int
    edges: np.ndarray  # (H, W) uint8 0/1; zeros when the file has no edges
    palette: np.ndarray | None  # (s, s, 3) uint8
    palette_full: np.ndarray  # (H, W, 3) uint8; black when the file has no palette
    color_canny_hint: np.ndarray  # (H, W, 3) uint8
    salient_mask: np.ndarray | None  # (H, W) bool, None when nothing is kept
    salient_pixels: np.ndarray  # (H, W, 3) uint8, zero outside the mask
    decode_hints: dict = field(default_factory=dict)

    def inpaint_hint(self) -> np.ndarray:
        """Float32 (H, W, 3): kept pixels in 0..1, pixels to regenerate at -1."""
        return hints.inpaint(self.salient_pixels, self.salient_mask)


def unpack(plic: PlicFile, source: str = "<plic>") -> Unpacked:
    """Decode every section of ``plic``. Bad section contents raise PlicFormatError(source)."""
    width, height = plic.working_size
    try:
        if plic.edges is None:
            edge_map = np.zeros((height, width), dtype=np.uint8)
        else:
            edge_map = edges_mod.unpack(plic.edges, max_pixels=width * height)
            if edge_map.shape != (height, width):
                raise ValueError(f"edge map is {edge_map.shape[1]}x{edge_map.shape[0]}, "
                                 f"expected {width}x{height}")
        small = None if plic.palette is None else palette.decode(plic.palette)
        mask, kept = salient.unpack(plic.salient_mask, plic.salient_regions, (width, height))
    except (ValueError, OSError) as exc:  # JBIG2Error is a ValueError; PIL raises OSError
        raise PlicFormatError(source, str(exc)) from None
    full = (np.zeros((height, width, 3), dtype=np.uint8) if small is None
            else palette.upscale(small, (width, height)))
    return Unpacked(
        prompt=plic.prompt, width=width, height=height, edges=edge_map, palette=small,
        palette_full=full, color_canny_hint=hints.color_canny(full, edge_map),
        salient_mask=mask, salient_pixels=kept,
        decode_hints={**DEFAULT_DECODE_HINTS, **plic.decode_hints},
    )


def clean_prompt(text: str, limit: int = MAX_PROMPT_CHARS) -> str:
    """Collapse whitespace and cut at a word boundary to at most ``limit`` characters."""
    text = " ".join(str(text).split())
    if len(text) <= limit:
        return text
    cut = text[:limit + 1].rsplit(" ", 1)[0] if " " in text[:limit + 1] else text[:limit]
    return cut[:limit].rstrip(" ,;:")


def bits_per_pixel(n_bytes: int, size: tuple[int, int]) -> float:
    """bpp of ``n_bytes`` for an image of ``size`` = (width, height) (reference accounting)."""
    return n_bytes * 8 / (size[0] * size[1])
