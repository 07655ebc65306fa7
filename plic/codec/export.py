"""A ``.plic`` file's parts shown outside PLIC: as standard files (:func:`export_files`) and
side by side in one picture (:func:`preview_image`). ``plic export`` / ``plic preview`` write them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from plic.codec import fileformat, jbig2, pack, ratecontrol
from plic.codec.salient import encode_crop  # PNG by default, as salient regions are stored


def export_files(plic: fileformat.PlicFile, source: str) -> dict[str, bytes]:
    """Every part of ``plic`` as a standard file, name -> bytes (decoded first, so a damaged
    file fails before anything is written)."""
    parts = pack.unpack(plic, source)
    files = {"prompt.txt": (parts.prompt + "\n").encode("utf-8"),
             "hint.png": encode_crop(parts.color_canny_hint),
             "decode_settings.json": json.dumps(parts.decode_settings, indent=2).encode("utf-8")}
    if plic.edges is not None:
        files["edges.jb2"] = jbig2.embedded_to_file(plic.edges)
        files["edges.png"] = encode_crop((1 - parts.edges) * 255)  # black edges on white, as JBIG2 shows
    if plic.palette is not None:
        files["palette.webp"] = plic.palette
    if parts.salient_mask is not None:
        files["salient_mask.png"] = encode_crop(parts.salient_mask.astype(np.uint8) * 255)
        files["salient_pixels.png"] = encode_crop(parts.salient_pixels)
        for i, region in enumerate(plic.salient_regions):
            suffix = "png" if region.codec == "png" else "webp"
            files[f"salient_{i:03d}_{region.x}_{region.y}.{suffix}"] = region.data
    return files


#: Names export_files gives; only such names are ever removed from an export's folder.
EXPORTED_NAME = re.compile(r"prompt\.txt|hint\.png|decode_settings\.json|edges\.(jb2|png)|palette\.webp|"
                           r"salient_(mask|pixels)\.png|salient_\d{3}_\d+_\d+\.(png|webp)")
#: The file in an export's folder listing the parts that export wrote (a JSON list of names).
EXPORT_LISTING = ".plic-export.json"


def exported_before(folder: Path) -> set[str]:
    """The parts an earlier export listed in ``folder`` (EXPORT_LISTING): names of the form
    export_files gives, and nothing else, so that a listing written by hand cannot point a
    clean-up at another file. Empty when there is no readable listing."""
    try:
        listed = json.loads((folder / EXPORT_LISTING).read_text("utf-8"))
    except (OSError, ValueError):
        return set()
    if not isinstance(listed, list):
        return set()
    return {name for name in listed if isinstance(name, str) and EXPORTED_NAME.fullmatch(name)}


def preview_image(plic: fileformat.PlicFile, source: str, total_bytes: int,
                  before: np.ndarray | None = None) -> Image.Image:
    """Hint, palette, edges and salient mask side by side, each labelled with its size; with
    ``before`` (the edge map the encoder started from) also the edges rate control removed."""
    parts = pack.unpack(plic, source)
    sizes = plic.section_sizes()
    edges = np.repeat(((1 - parts.edges) * 255).astype(np.uint8)[..., None], 3, axis=-1)
    mask = parts.salient_mask if parts.salient_mask is not None else np.zeros(edges.shape[:2], bool)
    kept = np.where(mask[..., None], parts.salient_pixels, 40).astype(np.uint8)
    panels = [
        ("color+canny hint", parts.color_canny_hint),
        (f"palette {sizes.get('palette', 0)} B", parts.palette_full),
        (f"edges {sizes.get('edges', 0)} B", edges),
        (f"salient {sizes.get('salient_mask', 0) + sizes.get('salient_pixels', 0)} B", kept),
    ]
    if before is not None:
        share = parts.edges.sum() / max(1, int(before.sum()))
        panels.append((f"removed edges (red), {share:.0%} kept", ratecontrol.removed_preview(before, parts.edges)))
    width, height = parts.width, parts.height
    scale = min(1.0, 384 / max(width, height))
    tile = (max(1, round(width * scale)), max(1, round(height * scale)))
    label_h, pad = 16, 4
    canvas = Image.new("RGB", (len(panels) * (tile[0] + pad) + pad, tile[1] + 2 * label_h + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (label, array) in enumerate(panels):
        x = pad + i * (tile[0] + pad)
        canvas.paste(Image.fromarray(array).resize(tile, Image.NEAREST), (x, label_h + pad))
        draw.text((x, 2), label, fill="black")
    bpp = pack.bits_per_pixel(total_bytes, (width, height))
    footer = (f"{total_bytes} bytes, {bpp:.4f} bpp, working {width}x{height}, original "
              f"{plic.original_size[0]}x{plic.original_size[1]}; prompt: {plic.prompt[:80]}")
    draw.text((pad, label_h + 2 * pad + tile[1]), footer, fill="black")
    return canvas
