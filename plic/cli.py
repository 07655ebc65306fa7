"""The ``plic`` command line: encode images to ``.plic`` files and look inside them.

Every failure is reported as one line ``plic: <file>: <reason>`` on stderr with a non-zero exit
status; outputs are written atomically, so a failure never leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from . import __version__, batch, caption, codec, detect, fileformat, jbig2
from .cli_decode import add_decode_parser
from .errors import PlicError, one_line
from .fileformat import write_atomic
from .image import load_rgb

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except PlicError as exc:
        print(f"plic: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("plic: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plic", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"plic {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("encode", help="compress images (files or folders) to .plic files")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders of images")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder for the .plic files")
    p.add_argument("--prompt", default=None,
                   help="prompt stored in every file (cut to 240 characters); overrides --caption")
    p.add_argument("--max-side", type=int, default=codec.EncodeSettings.max_side, metavar="N",
                   help="longest side of the working image (default %(default)s; never upscales)")
    p.add_argument("--canny", type=int, nargs=2, metavar=("LOW", "HIGH"),
                   default=(codec.EncodeSettings.canny_low, codec.EncodeSettings.canny_high),
                   help="Canny hysteresis thresholds (default %(default)s)")
    p.add_argument("--palette-size", type=int, default=codec.EncodeSettings.palette_size, metavar="N",
                   help="palette side in pixels (default %(default)s)")
    p.add_argument("--palette-quality", type=int, default=codec.EncodeSettings.palette_quality, metavar="Q",
                   help="palette WebP quality 0-100 (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing .plic files")
    add_decode_hint_arguments(p)
    caption.add_caption_arguments(p)
    detect.add_salient_arguments(p)
    p.set_defaults(run=run_encode)

    p = sub.add_parser("info", help="list the sections of a .plic file with their sizes")
    p.add_argument("file", type=Path, metavar="FILE.plic")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(run=run_info)

    p = sub.add_parser("export", help="write the parts of a .plic file as standard files")
    p.add_argument("file", type=Path, metavar="FILE.plic")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    p.add_argument("--overwrite", action="store_true", help="replace existing files in DIR")
    p.set_defaults(run=run_export)

    p = sub.add_parser("preview", help="draw the parts of a .plic file side by side in one PNG")
    p.add_argument("file", type=Path, metavar="FILE.plic")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.png")
    p.add_argument("--overwrite", action="store_true", help="replace OUT.png if it exists")
    p.set_defaults(run=run_preview)

    add_decode_parser(sub)

    p = sub.add_parser("bench", help="section sizes of every image in a folder, next to JPEG and WebP")
    p.add_argument("folder", type=Path, metavar="DIR")
    p.add_argument("--csv", type=Path, metavar="FILE.csv", help="also write the table as CSV")
    p.add_argument("--max-side", type=int, default=codec.EncodeSettings.max_side, metavar="N")
    p.set_defaults(run=run_bench)
    return parser


def _fail(source: Path | str, reason: str) -> PlicError:
    return PlicError(f"{source}: {reason}")


# -- encode ------------------------------------------------------------------------------------

def run_encode(args) -> int:
    settings = codec.EncodeSettings(max_side=args.max_side, canny_low=args.canny[0],
                                    canny_high=args.canny[1], palette_size=args.palette_size,
                                    palette_quality=args.palette_quality)
    captioner = None if args.prompt is not None else caption.captioner_from_args(args)
    images = batch.expand(args.images, IMAGE_SUFFIXES, "images")
    jobs = batch.distinct_outputs([(path, args.output / f"{path.stem}.plic") for path in images])
    hints = decode_hints_from_args(args)
    return batch.run_each(jobs, lambda path, target: encode_one(path, target, args, settings, captioner,
                                                                hints))


def add_decode_hint_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decode settings stored in the file (a decoder uses them "
                                      "unless told otherwise; nothing is stored for the defaults)")
    group.add_argument("--decode-steps", type=int, metavar="N",
                       help=f"denoising steps (default {codec.DEFAULT_DECODE_HINTS['steps']}, the reference's)")
    group.add_argument("--decode-seed", type=int, metavar="N",
                       help=f"random seed (default {codec.DEFAULT_DECODE_HINTS['seed']}, the reference's)")


def decode_hints_from_args(args) -> dict:
    """The decode hints --decode-steps / --decode-seed ask to store."""
    if args.decode_steps is not None and args.decode_steps < 1:
        raise _fail("--decode-steps", f"must be at least 1, got {args.decode_steps}")
    if args.decode_seed is not None and args.decode_seed < 0:
        raise _fail("--decode-seed", f"must not be negative, got {args.decode_seed}")
    hints = {"steps": args.decode_steps, "seed": args.decode_seed}
    return {key: value for key, value in hints.items() if value is not None}


def encode_one(path: Path, target: Path, args, settings: codec.EncodeSettings, captioner,
               decode_hints: dict | None = None) -> None:
    """Compress the image ``path`` to ``target`` and print its sizes and what the salient step kept."""
    if target.exists() and not args.overwrite:
        raise _fail(target, "already exists; pass --overwrite to replace it")
    rgb = load_rgb(path)
    original_size, work = codec.working_image(rgb, settings.max_side)
    mask_stream, regions, report = detect.salient_from_args(args, work, path)
    prompt = captioner.caption(rgb) if captioner is not None else args.prompt
    plic = codec.encode_working(work, original_size, prompt=prompt, settings=settings,
                                salient=codec.SalientPart(mask_stream, tuple(regions)),
                                decode_hints=decode_hints)
    data = fileformat.dumps(plic)
    write_atomic(target, data, overwrite=args.overwrite)
    bpp = codec.bits_per_pixel(len(data), plic.working_size)
    ratio = path.stat().st_size / len(data)
    print(f"{target}: {len(data)} bytes, {bpp:.4f} bpp at {plic.working_size[0]}x"
          f"{plic.working_size[1]}, {ratio:.1f}x smaller than {path.name}")
    if report.kept or report.dropped or report.notes:
        print("  " + report.summary().replace("\n", "\n  "))


# -- info --------------------------------------------------------------------------------------

def describe(plic: fileformat.PlicFile, total_bytes: int) -> dict:
    """Sizes of a file and of each section, in bytes and bpp of the working image."""
    size = plic.working_size
    sections = {name: {"bytes": n, "bpp": codec.bits_per_pixel(n, size)}
                for name, n in plic.section_sizes().items()}
    return {
        "original_size": list(plic.original_size),
        "working_size": list(size),
        "prompt": plic.prompt,
        "sections": sections,
        "salient_regions": len(plic.salient_regions),
        "unknown_sections": [kind.decode("latin-1") for kind, _ in plic.extra_sections],
        "total_bytes": total_bytes,
        "total_bpp": codec.bits_per_pixel(total_bytes, size),
        "decode_hints": plic.decode_hints,
    }


def run_info(args) -> int:
    plic = fileformat.load(args.file)
    info = describe(plic, args.file.stat().st_size)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{args.file}: original {info['original_size'][0]}x{info['original_size'][1]}, "
          f"working {info['working_size'][0]}x{info['working_size'][1]}")
    print(f"  {'section':<16}{'bytes':>10}{'bpp':>10}")
    for name, row in info["sections"].items():
        print(f"  {name:<16}{row['bytes']:>10}{row['bpp']:>10.4f}")
    print(f"  {'total (file)':<16}{info['total_bytes']:>10}{info['total_bpp']:>10.4f}")
    if info["prompt"]:
        print(f"  prompt: {info['prompt']}")
    return 0


# -- export and preview ------------------------------------------------------------------------

def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def export_files(plic: fileformat.PlicFile, source: str) -> dict[str, bytes]:
    """Every part of ``plic`` as a standard file, name -> bytes (decoded first, so a damaged
    file fails before anything is written)."""
    parts = codec.unpack(plic, source)
    files = {"prompt.txt": (parts.prompt + "\n").encode("utf-8"),
             "hint.png": _png(parts.color_canny_hint),
             "decode_hints.json": json.dumps(parts.decode_hints, indent=2).encode("utf-8")}
    if plic.edges is not None:
        files["edges.jb2"] = jbig2.embedded_to_file(plic.edges)
        files["edges.png"] = _png((1 - parts.edges) * 255)  # black edges on white, as JBIG2 shows
    if plic.palette is not None:
        files["palette.webp"] = plic.palette
    if parts.salient_mask is not None:
        files["salient_mask.png"] = _png(parts.salient_mask.astype(np.uint8) * 255)
        files["salient_pixels.png"] = _png(parts.salient_pixels)
        for i, region in enumerate(plic.salient_regions):
            suffix = "png" if region.codec == "png" else "webp"
            files[f"salient_{i:03d}_{region.x}_{region.y}.{suffix}"] = region.data
    return files


def run_export(args) -> int:
    files = export_files(fileformat.load(args.file), str(args.file))
    clashes = [name for name in files if (args.output / name).exists()]
    if clashes and not args.overwrite:
        raise _fail(args.output / clashes[0], "already exists; pass --overwrite to replace it")
    for name, data in files.items():
        write_atomic(args.output / name, data, overwrite=args.overwrite)
    print(f"{args.output}: {', '.join(sorted(files))}")
    return 0


def preview_image(plic: fileformat.PlicFile, source: str, total_bytes: int) -> Image.Image:
    """Hint, palette, edges and salient mask side by side, each labelled with its size."""
    parts = codec.unpack(plic, source)
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
    bpp = codec.bits_per_pixel(total_bytes, (width, height))
    footer = (f"{total_bytes} bytes, {bpp:.4f} bpp, working {width}x{height}, original "
              f"{plic.original_size[0]}x{plic.original_size[1]}; prompt: {plic.prompt[:80]}")
    draw.text((pad, label_h + 2 * pad + tile[1]), footer, fill="black")
    return canvas


def run_preview(args) -> int:
    plic = fileformat.load(args.file)
    picture = preview_image(plic, str(args.file), args.file.stat().st_size)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    write_atomic(args.output, buffer.getvalue(), overwrite=args.overwrite)
    print(f"{args.output}: {picture.width}x{picture.height}")
    return 0


# -- bench -------------------------------------------------------------------------------------

def smallest_reference_sizes(rgb: np.ndarray) -> dict[str, int]:
    """Bytes of the working image as JPEG at quality 1 and WebP at quality 0 (reference points)."""
    sizes = {}
    for name, options in (("jpeg_q1", {"format": "JPEG", "quality": 1}),
                          ("webp_q0", {"format": "WEBP", "quality": 0, "method": 6})):
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, **options)
        sizes[name] = len(buffer.getvalue())
    return sizes


def run_bench(args) -> int:
    images = batch.expand([args.folder], IMAGE_SUFFIXES, "images")
    settings = codec.EncodeSettings(max_side=args.max_side)
    columns = ["image", "width", "height", "edges", "palette", "total", "bpp", "jpeg_q1", "webp_q0",
               "ratio_to_file"]
    rows = []
    for path in images:
        original_size, work = codec.working_image(load_rgb(path), settings.max_side)
        plic = codec.encode_working(work, original_size, settings=settings)
        total = len(fileformat.dumps(plic))
        sizes = plic.section_sizes()
        rows.append({"image": path.name, "width": plic.working_size[0], "height": plic.working_size[1],
                     "edges": sizes["edges"], "palette": sizes["palette"], "total": total,
                     "bpp": round(codec.bits_per_pixel(total, plic.working_size), 4),
                     **smallest_reference_sizes(work),
                     "ratio_to_file": round(path.stat().st_size / total, 1)})
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths)))
    bpps = sorted(r["bpp"] for r in rows)
    print(f"median bpp {bpps[len(bpps) // 2]:.4f} over {len(rows)} images (prompt not included)")
    if args.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(args.csv, buffer.getvalue().encode("utf-8"), overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
