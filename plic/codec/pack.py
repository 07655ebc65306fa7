"""Encoding an image to a :class:`~plic.fileformat.PlicFile` and unpacking one for the decoder.

This is the pipeline without a diffusion model: working image, Canny edges (JBIG2), palette
(WebP), optional salient regions, prompt and decode settings. Everything is a parameter whose
default reproduces the reference settings (shared reference, "Encoding").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from plic.codec import control_images
from plic.codec import edges as edges_mod
from plic.codec import palette as palette_mod
from plic.codec import salient as salient_mod
from plic.codec.fileformat import (
    MAX_ORIGINAL_SIDE,
    MAX_WORKING_PIXELS,
    MAX_WORKING_SIDE,
    PlicFile,
    check_working_pixels,
)
from plic.codec.prompt import clean_prompt
from plic.codec.salient import SalientPart  # one of the parts pack_parts takes, with EdgesPart and PalettePart
from plic.errors import PlicFormatError, PlicInputError
from plic.image import DEFAULT_MAX_SIDE, check_rgb, to_working, working_size

#: How the reference decoded. These are the format's version-1 defaults (docs/format.md): a file
#: stores only the settings that differ from them, so the usual file carries no HINT section.
DEFAULT_DECODE_SETTINGS = {
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
    palette_size: int = palette_mod.DEFAULT_SIZE
    palette_quality: int = palette_mod.DEFAULT_QUALITY
    salient_codec: str = salient_mod.DEFAULT_CODEC
    salient_quality: int = salient_mod.DEFAULT_QUALITY
    max_working_pixels: int = MAX_WORKING_PIXELS


@dataclass(frozen=True)
class EdgesPart:
    """The Canny edges of one image: the JBIG2 ``stream`` stored in the file and the ``bitmap``
    it holds ((H, W) uint8, 1 = edge, working size). Sizes are (width, height)."""

    original_size: tuple[int, int]
    working_size: tuple[int, int]
    stream: bytes
    bitmap: np.ndarray
    #: What rate control (plic.codec.ratecontrol) needs to search again: the working image the edges
    #: were found in and the Canny thresholds used.
    work: np.ndarray
    canny: tuple[int, int]


@dataclass(frozen=True)
class PalettePart:
    """The colour palette of one image: the WebP ``data`` stored in the file, the decoded
    ``small`` (s, s, 3) uint8 image it holds and the ``working_size`` (width, height) of the
    image it was made from."""

    data: bytes
    small: np.ndarray
    quality: int  # the WebP quality ``data`` was stored at
    working_size: tuple[int, int]


def working_image(rgb: np.ndarray, max_side: int = DEFAULT_MAX_SIDE, *,
                  max_working_pixels: int = MAX_WORKING_PIXELS) -> tuple[tuple[int, int], np.ndarray]:
    """The original size (width, height) of ``rgb`` and its working image, both within what a
    .plic file can hold and a reader accepts (PlicInputError otherwise)."""
    original = check_rgb(rgb)
    height, width = original.shape[:2]
    if max(width, height) > MAX_ORIGINAL_SIDE:
        raise PlicInputError(f"the image is {width}x{height}; PLIC stores images of at most "
                             f"{MAX_ORIGINAL_SIDE} pixels a side: scale it down first")
    if not 1 <= max_side <= MAX_WORKING_SIDE:
        raise PlicInputError(f"max side {max_side} is outside 1..{MAX_WORKING_SIDE}")
    check_working_pixels(working_size(width, height, max_side), max_working_pixels,
                         lambda problem: PlicInputError(f"{problem}; or use a smaller max side"))
    return (width, height), to_working(original, max_side)


def edges_part(work: np.ndarray, original_size: tuple[int, int] | None = None, *,
               low: int = edges_mod.DEFAULT_LOW, high: int = edges_mod.DEFAULT_HIGH) -> EdgesPart:
    """Canny edges of the working image ``work``, packed. ``original_size`` defaults to its size."""
    size = (work.shape[1], work.shape[0])
    bitmap = edges_mod.canny(work, low, high)
    return EdgesPart(tuple(original_size or size), size, edges_mod.pack(bitmap), bitmap, work, (low, high))


def palette_part(work: np.ndarray, size: int = palette_mod.DEFAULT_SIZE,
                 quality: int = palette_mod.DEFAULT_QUALITY) -> PalettePart:
    """The palette of the working image ``work``, encoded, with the decoded image it stores."""
    data = palette_mod.encode(work, size, quality)
    return PalettePart(data, palette_mod.decode(data), quality, (work.shape[1], work.shape[0]))


def salient_part(work: np.ndarray, mask: np.ndarray, *, codec: str = salient_mod.DEFAULT_CODEC,
                 quality: int = salient_mod.DEFAULT_QUALITY) -> SalientPart:
    """The pixels of ``work`` under ``mask`` (a mask of the working image), packed."""
    mask_stream, regions = salient_mod.pack(work, mask, codec=codec, quality=quality)
    return SalientPart(mask_stream, tuple(regions), (work.shape[1], work.shape[0]))


def pack_parts(*, prompt: str, edges: EdgesPart, palette: PalettePart | None = None,
               salient: SalientPart | None = None, decode_settings: dict | None = None) -> PlicFile:
    """Assemble one file from its parts. ``prompt`` is cleaned (:func:`plic.codec.prompt.clean_prompt`);
    the palette and a salient part must be made from a working image of the edges' size
    (PlicInputError otherwise)."""
    if palette is not None and palette.working_size != tuple(edges.working_size):
        raise PlicInputError(f"the palette was made from a {palette.working_size[0]}x"
                             f"{palette.working_size[1]} working image but the edges from a "
                             f"{edges.working_size[0]}x{edges.working_size[1]} one; give both the "
                             "same max side")
    if salient is not None:
        check_salient_fits(salient, edges.working_size)
    return PlicFile(
        original_size=tuple(edges.original_size),
        working_size=tuple(edges.working_size),
        prompt=clean_prompt(prompt),
        edges=edges.stream,
        palette=None if palette is None else palette.data,
        salient_mask=None if salient is None else salient.mask_stream,
        salient_regions=[] if salient is None or salient.mask_stream is None else list(salient.regions),
        decode_settings=non_default_settings(decode_settings or {}),
    )


def check_salient_fits(part: SalientPart, size: tuple[int, int]) -> None:
    """Raise PlicInputError unless ``part`` was made from a working image of ``size`` =
    (width, height)."""
    width, height = size
    if part.mask_stream is None:
        return
    if tuple(part.working_size) != (width, height):
        raise PlicInputError(f"the salient mask is {part.working_size[0]}x{part.working_size[1]} but "
                             f"the edges' working image is {width}x{height}; make both from the same "
                             "image with the same max side")
    for r in part.regions:
        if r.x + r.width > width or r.y + r.height > height:
            raise PlicInputError(f"a salient region ({r.width}x{r.height} at {r.x},{r.y}) lies "
                                 f"outside the {width}x{height} working image")


def encode_image(rgb: np.ndarray, *, prompt: str = "", settings: EncodeSettings = EncodeSettings(),
                 salient_mask: np.ndarray | None = None,
                 decode_settings: dict | None = None) -> PlicFile:
    """Compress an RGB uint8 image. ``salient_mask`` is a mask of the *working* image."""
    original_size, work = working_image(rgb, settings.max_side,
                                        max_working_pixels=settings.max_working_pixels)
    kept = None
    if salient_mask is not None:
        kept = salient_part(work, salient_mask, codec=settings.salient_codec,
                            quality=settings.salient_quality)
    return encode_working(work, original_size, prompt=prompt, settings=settings, salient=kept,
                          decode_settings=decode_settings)


def encode_working(work: np.ndarray, original_size: tuple[int, int], *, prompt: str = "",
                   settings: EncodeSettings = EncodeSettings(), salient: SalientPart | None = None,
                   decode_settings: dict | None = None) -> PlicFile:
    """Compress a working image (see :func:`working_image`) with an already packed salient part."""
    edges, palette = image_parts(work, original_size, settings)
    return pack_parts(prompt=prompt, edges=edges, palette=palette, salient=salient, decode_settings=decode_settings)


def image_parts(work: np.ndarray, original_size: tuple[int, int],
                settings: EncodeSettings = EncodeSettings()) -> tuple[EdgesPart, PalettePart]:
    """The parts :func:`encode_working` codes from the working image alone: edges and palette."""
    return (edges_part(work, original_size, low=settings.canny_low, high=settings.canny_high),
            palette_part(work, settings.palette_size, settings.palette_quality))


def size_breakdown(n_bytes: int, plic: PlicFile) -> dict:
    """What a file of ``n_bytes`` costs: ``bytes``, ``bpp`` over the working image (reference
    accounting) and ``ratio``, the uncompressed 24-bit RGB original's size over ``n_bytes``."""
    width, height = plic.original_size
    return {"bytes": n_bytes, "bpp": bits_per_pixel(n_bytes, plic.working_size),
            "ratio": width * height * 3 / n_bytes}


def non_default_settings(values: dict) -> dict:
    """The entries of ``values`` that differ from :data:`DEFAULT_DECODE_SETTINGS`."""
    return {key: value for key, value in values.items() if DEFAULT_DECODE_SETTINGS.get(key) != value}


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
    decode_settings: dict = field(default_factory=dict)

    def keep_mask(self) -> np.ndarray:
        """(H, W) bool: the salient mask, all False when nothing is kept."""
        if self.salient_mask is None:
            return np.zeros((self.height, self.width), bool)
        return self.salient_mask.astype(bool)

    def init_image(self) -> np.ndarray:
        """(H, W, 3) uint8: where the decoder starts, the kept pixels over the palette."""
        return np.where(self.keep_mask()[..., None], self.salient_pixels, self.palette_full)

    def inpaint_hint(self) -> np.ndarray:
        """Float32 (H, W, 3): kept pixels in 0..1, pixels to regenerate at -1."""
        return control_images.inpaint(self.salient_pixels, self.salient_mask)


def unpack(plic: PlicFile, source: str = "<plic>") -> Unpacked:
    """Decode every section of ``plic``. Bad section contents raise PlicFormatError(source)."""
    width, height = plic.working_size
    edge_map = (np.zeros((height, width), dtype=np.uint8) if plic.edges is None
                else _decoded(source, "edges (EDGE)", _edge_map, plic.edges, (width, height)))
    small = None if plic.palette is None else _decoded(source, "palette (PALT)", palette_mod.decode,
                                                       plic.palette)
    mask, kept = _decoded(source, "salient mask and pixels (SMSK, SPIX)", salient_mod.unpack,
                          plic.salient_mask, plic.salient_regions, (width, height))
    full = (np.zeros((height, width, 3), dtype=np.uint8) if small is None
            else palette_mod.upscale(small, (width, height)))
    return Unpacked(
        prompt=plic.prompt, width=width, height=height, edges=edge_map, palette=small,
        palette_full=full, color_canny_hint=control_images.color_canny(full, edge_map),
        salient_mask=mask, salient_pixels=kept,
        decode_settings={**DEFAULT_DECODE_SETTINGS, **plic.decode_settings},
    )


def _edge_map(stream: bytes, size: tuple[int, int]) -> np.ndarray:
    width, height = size
    edge_map = edges_mod.unpack(stream, max_pixels=width * height)
    if edge_map.shape != (height, width):
        raise ValueError(f"edge map is {edge_map.shape[1]}x{edge_map.shape[0]}, expected {width}x{height}")
    return edge_map


def _decoded(source: str, section: str, decode, *args):
    """``decode(*args)``; its failure as a PlicFormatError naming ``source`` and ``section``."""
    try:
        return decode(*args)
    except UnidentifiedImageError:
        raise PlicFormatError(source, f"section {section}: holds no image PLIC can read") from None
    except (ValueError, OSError, Image.DecompressionBombError) as exc:  # JBIG2Error is a ValueError
        raise PlicFormatError(source, f"section {section}: {exc}") from None


def bits_per_pixel(n_bytes: int, size: tuple[int, int]) -> float:
    """bpp of ``n_bytes`` for an image of ``size`` = (width, height) (reference accounting)."""
    return n_bytes * 8 / (size[0] * size[1])
