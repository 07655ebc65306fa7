"""The ``plic`` command line: encode images to ``.plic`` files and look inside them.

Every failure is reported as one line ``plic: <file>: <reason>`` on stderr with a non-zero exit
status; outputs are written atomically, so a failure never leaves a partial file behind.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from plic import __version__, batch, runner
from plic.atomic import write_atomic, write_atomic_all
from plic.cli import scale as cli_scale
from plic.cli.args import BPP, CANNY, MAX_SIDE, add_pixel_limits, int_in
from plic.cli.decode import add_decode_parser, targets
from plic.cli.encode import add_caption_arguments, add_salient_arguments, captioner_from_args, salient_from_args
from plic.cli.eval import add_eval_parsers
from plic.codec import fileformat, pack, palette, ratecontrol
from plic.codec.edges import canny as canny_map
from plic.codec.export import EXPORT_LISTING, export_files, exported_before, preview_image
from plic.codec.prompt import MAX_PROMPT_CHARS
from plic.errors import PlicError, one_line, printable
from plic.image import IMAGE_SUFFIXES, load_rgb
from plic.safefs import output_path


def main(argv: list[str] | None = None) -> int:
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            args = build_parser().parse_args(argv)
            status = args.run(args)
            sys.stdout.flush()  # a closed pipe shows here, not as an error at exit
            return status
    except PlicError as exc:
        print(f"plic: {one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("plic: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (plic info F | head): stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit's flush
        return 1


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A library's warning as one line, without its source location."""
    print(f"plic: warning: {one_line(message)}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plic", description=__doc__.splitlines()[0].replace("``", ""))
    parser.add_argument("--version", action="version", version=f"plic {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND")

    p = sub.add_parser("encode", help="compress images (files or folders) to .plic files")
    p.add_argument("images", nargs="+", type=Path, metavar="IMAGE", help="image files or folders of images")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder for the .plic files")
    p.add_argument("--prompt", default=None,
                   help=f"prompt stored in every file (cut to {MAX_PROMPT_CHARS} characters); overrides --caption")
    p.add_argument("--max-side", type=MAX_SIDE, default=pack.EncodeSettings.max_side, metavar="N",
                   help="longest side of the working image (default %(default)s; never upscales)")
    p.add_argument("--canny", type=CANNY, nargs=2, metavar=("LOW", "HIGH"),
                   default=(pack.EncodeSettings.canny_low, pack.EncodeSettings.canny_high),
                   help="Canny hysteresis thresholds (default %(default)s)")
    p.add_argument("--palette-size", type=int_in(1, palette.MAX_SIZE), default=pack.EncodeSettings.palette_size,
                   metavar="N",
                   help="palette side in pixels (default %(default)s)")
    p.add_argument("--palette-quality", type=int_in(0, 100), default=pack.EncodeSettings.palette_quality,
                   metavar="Q",
                   help="palette WebP quality 0-100 (default %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace existing .plic files")
    add_target_arguments(p)
    add_pixel_limits(p)
    add_decode_setting_arguments(p)
    add_caption_arguments(p)
    add_salient_arguments(p)
    cli_scale.add_scale_arguments(p)
    p.set_defaults(run=run_encode)

    p = add_files_parser(sub, "info", "list the sections of .plic files with their sizes")
    p.add_argument("--json", action="store_true",
                   help="print JSON instead of a table (a list of objects with their file for several)")
    p.add_argument("--no-check", action="store_true",
                   help="do not decode the sections (by default a file export or preview would "
                        "refuse fails here too)")
    add_pixel_limits(p, images=False)
    p.set_defaults(run=run_info)

    p = add_files_parser(sub, "export", "write the parts of .plic files as standard files",
                         ("DIR", "the folder for one file; for several, DIR/<name>/ each",
                          "replace existing files in DIR"))
    add_pixel_limits(p, images=False)
    p.set_defaults(run=run_export)

    p = add_files_parser(sub, "preview", "draw the parts of .plic files side by side, one PNG each",
                         ("OUT.png|DIR", "the PNG for one file; a folder (written as DIR/<name>.png) for several",
                          "replace OUT.png if it exists"))
    p.add_argument("--image", type=Path, metavar="IMAGE",
                   help="the image the file was made from: adds a panel of the edges rate control "
                        "removed (red) from the Canny map at --canny")
    p.add_argument("--canny", type=CANNY, nargs=2, metavar=("LOW", "HIGH"),
                   default=(pack.EncodeSettings.canny_low, pack.EncodeSettings.canny_high),
                   help="thresholds the encode started from (default %(default)s)")
    add_pixel_limits(p)
    p.set_defaults(run=run_preview)

    add_decode_parser(sub)
    add_eval_parsers(sub)

    p = sub.add_parser("bench", help="every image in a folder at the paper's settings and at a target, "
                                     "next to JPEG, WebP and AVIF at their lowest quality")
    p.add_argument("folder", type=Path, metavar="DIR")
    p.add_argument("--csv", type=Path, metavar="FILE.csv", help="also write the table as CSV")
    p.add_argument("--max-side", type=MAX_SIDE, default=pack.EncodeSettings.max_side, metavar="N",
                   help="longest side of the working image (default %(default)s; never upscales)")
    p.add_argument("--target-bpp", type=BPP, default=ratecontrol.SUGGESTED_BPP, metavar="BPP",
                   help="target of the 'target' column (default %(default)s)")
    add_pixel_limits(p)
    p.set_defaults(run=run_bench)
    return parser


def _fail(source: Path | str, reason: str) -> PlicError:
    return PlicError(f"{source}: {reason}")


# -- encode ------------------------------------------------------------------------------------

def run_encode(args) -> int:
    settings = pack.EncodeSettings(max_side=args.max_side, canny_low=args.canny[0],
                                    canny_high=args.canny[1], palette_size=args.palette_size,
                                    palette_quality=args.palette_quality,
                                    max_working_pixels=args.max_working_pixels)
    if args.output.exists() and not args.output.is_dir():
        raise _fail(args.output, "is a file; -o takes the folder the .plic files go to")
    captioner = None if args.prompt is not None else captioner_from_args(args)
    images = batch.expand(args.images, IMAGE_SUFFIXES, "images")
    jobs = [(path, output_path(args.output, path.stem, fileformat.SUFFIX)) for path in images]
    stored = decode_settings_from_args(args)
    if cli_scale.requested(args):
        return cli_scale.run(EncodeWork(args, settings, stored), jobs, args, args.output)[1]
    shown_notes: set[str] = set()
    return batch.run_each(jobs, lambda path, target: encode_one(path, target, args, settings, captioner,
                                                                shown_notes, stored))


def add_files_parser(sub, name: str, summary: str, output: tuple[str, str, str] | None = None):
    """A command (``summary``: its help line) that reads .plic files (``files``) and, given
    ``output`` (its metavar, its help, the help of ``--overwrite``), writes what it makes of them
    (``-o``)."""
    p = sub.add_parser(name, help=summary)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.plic", help=".plic files or folders of them")
    if output is not None:
        metavar, output_help, overwrite_help = output
        p.add_argument("-o", "--output", type=Path, required=True, metavar=metavar, help=output_help)
        p.add_argument("--overwrite", action="store_true", help=overwrite_help)
    return p


def add_decode_setting_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("decode settings stored in the file (a decoder uses them "
                                      "unless told otherwise; nothing is stored for the defaults)")
    group.add_argument("--decode-steps", type=int_in(1, fileformat.MAX_STEPS), metavar="N",
                       help=f"denoising steps (default {pack.DEFAULT_DECODE_SETTINGS['steps']}, the reference's)")
    group.add_argument("--decode-seed", type=int_in(0, fileformat.MAX_SEED), metavar="N",
                       help=f"random seed (default {pack.DEFAULT_DECODE_SETTINGS['seed']}, the reference's)")
    group.add_argument("--decode-scheduler", choices=fileformat.SCHEDULERS,
                       help=f"sampler (default {pack.DEFAULT_DECODE_SETTINGS['scheduler']}, the reference's; "
                            "lcm or tcd for a file tuned with a few-step LoRA)")
    group.add_argument("--decode-family", metavar="NAME",
                       help="the decoder family the file was tuned for (plic.decode.families; a decoder "
                            "of another family decodes it with a warning)")


def decode_settings_from_args(args) -> dict:
    """The decode settings --decode-steps / --decode-seed / --decode-scheduler / --decode-family
    ask to store."""
    values = {"steps": args.decode_steps, "seed": args.decode_seed, "scheduler": args.decode_scheduler,
             "family": args.decode_family}
    return {key: value for key, value in values.items() if value is not None}


def encode_one(path: Path, target: Path, args, settings: pack.EncodeSettings, captioner,
               shown_notes: set[str] | None = None, decode_settings: dict | None = None) -> None:
    """Compress the image ``path`` to ``target`` (storing ``decode_settings``) and print its sizes
    and what the salient step kept; a note in ``shown_notes`` (such as a detector that cannot
    run) is not repeated."""
    batch.refuse_existing(target, args.overwrite)
    rgb = load_rgb(path, args.max_pixels)
    original_size, work = pack.working_image(rgb, settings.max_side,
                                              max_working_pixels=settings.max_working_pixels)
    size = (work.shape[1], work.shape[0])
    goal = ratecontrol.target_bytes(size, args.target_bpp, args.target_bytes)
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Edges and palette are coded beside the salient step and the caption (JBIG2, Canny and
        # WebP release the GIL, and so do the face detector and libtesseract, called through
        # ctypes); rate control codes its own.
        parts = pool.submit(pack.image_parts, work, original_size, settings) if goal is None else None
        stored = salient_from_args(args, work, path)
        prompt = captioner.caption(rgb) if captioner is not None else args.prompt
        salient, report = stored.part, stored.report
        try:
            encoded = ratecontrol.encode_to(work, original_size, goal, prompt=prompt, settings=settings,
                                            how=f"--target-bpp {ratecontrol.SUGGESTED_BPP}",
                                            parts=parts and parts.result(), salient=salient,
                                            decode_settings=decode_settings)
        except ValueError as exc:  # beyond what the format holds (e.g. a blank image at a huge max side)
            raise _fail(path, str(exc)) from None
    plic, data, notes = encoded.plic, encoded.data, [encoded.note] if encoded.note else []
    write_atomic(target, data, overwrite=args.overwrite)
    bpp = pack.bits_per_pixel(len(data), plic.working_size)
    ratio = path.stat().st_size / len(data)
    compared = f"{ratio:.1f}x smaller than" if ratio >= 1 else f"{1 / ratio:.1f}x larger than"
    print(f"{target}: {len(data)} bytes, {bpp:.4f} bpp at {plic.working_size[0]}x"
          f"{plic.working_size[1]}, {compared} {printable(path.name)}")
    if shown_notes is not None:
        report.notes = [note for note in report.notes if note not in shown_notes]
        shown_notes.update(report.notes)
    if report.kept or report.dropped or report.notes:
        notes.insert(0, report.summary())
    for note in notes:
        print("  " + note.replace("\n", "\n  "))


def add_target_arguments(parser) -> None:
    """The rate control options of `plic encode` (see plic.codec.ratecontrol)."""
    group = parser.add_argument_group("rate control (default: the paper's fixed settings)")
    group.add_argument("--target-bpp", type=BPP, metavar="BPP",
                       help="bring each whole file to at most BPP bits per working-image pixel: "
                            "drops the shortest edge fragments first, then raises the Canny "
                            "thresholds (up to {}/{}), then lowers palette and salient quality"
                            .format(*ratecontrol.THRESHOLD_LADDER[-1]))
    group.add_argument("--target-bytes", type=int_in(1, fileformat.MAX_FILE_BYTES), metavar="N",
                       help="the same as a size in bytes (with --target-bpp, the smaller wins)")


# -- info --------------------------------------------------------------------------------------

def describe(plic: fileformat.PlicFile, total_bytes: int) -> dict:
    """Sizes of a file and of each section, in bytes and bpp of the working image."""
    size = plic.working_size
    sections = {name: {"bytes": n, "bpp": pack.bits_per_pixel(n, size)}
                for name, n in plic.section_sizes().items()}
    return {
        "original_size": list(plic.original_size),
        "working_size": list(size),
        "prompt": plic.prompt,
        "sections": sections,
        "salient_regions": len(plic.salient_regions),
        "unknown_sections": [kind.decode("latin-1") for kind, _ in plic.extra_sections],
        "total_bytes": total_bytes,
        "total_bpp": pack.bits_per_pixel(total_bytes, size),
        "decode_settings": plic.decode_settings,
    }


def run_info(args) -> int:
    sources = batch.expand(args.files, {fileformat.SUFFIX}, ".plic files")
    infos = []
    status = batch.run_each([(source, source) for source in sources],
                            lambda source, _: infos.append(info_one(source, args)))
    if args.json and infos:
        print(json.dumps([{"file": str(source), **info} for source, info in infos]
                         if batch.several(sources, args.files)
                         else infos[0][1], indent=2))
    return status


def info_one(source: Path, args) -> tuple[Path, dict]:
    """``source`` and what :func:`describe` says of it, printed as a table unless ``--json``."""
    plic = fileformat.load(source, max_working_pixels=args.max_working_pixels)
    if not args.no_check:
        pack.unpack(plic, str(source))
    info = describe(plic, source.stat().st_size)
    if not args.json:
        print_info(source, info)
    return source, info


def print_info(source: Path, info: dict) -> None:
    print(f"{printable(str(source))}: original {info['original_size'][0]}x{info['original_size'][1]}, "
          f"working {info['working_size'][0]}x{info['working_size'][1]}")
    print(f"  {'section':<16}{'bytes':>10}{'bpp':>10}")
    for name, row in info["sections"].items():
        print(f"  {name:<16}{row['bytes']:>10}{row['bpp']:>10.4f}")
    print(f"  {'total (file)':<16}{info['total_bytes']:>10}{info['total_bpp']:>10.4f}")
    if info["prompt"]:
        print(f"  prompt: {printable(info['prompt'])}")
    if info["decode_settings"]:
        print("  decode settings: " + printable(", ".join(f"{key} {value}" for key, value in
                                                     sorted(info["decode_settings"].items()))))


# -- export and preview ------------------------------------------------------------------------

def run_export(args) -> int:
    sources = batch.expand(args.files, {fileformat.SUFFIX}, ".plic files")
    several = batch.several(sources, args.files)
    jobs = [(source, output_path(args.output, source.stem) if several else args.output)
            for source in sources]
    return batch.run_each(jobs, lambda source, folder: export_one(source, folder, args.overwrite,
                                                                  args.max_working_pixels))


def export_one(source: Path, folder: Path, overwrite: bool,
               max_working_pixels: int = fileformat.MAX_WORKING_PIXELS) -> None:
    """Write the parts of ``source`` into ``folder``, all or none of them, and list them in the
    folder's EXPORT_LISTING; with ``overwrite`` the parts that an earlier export listed there
    and this one does not write (salient regions...) are removed, and nothing else."""
    files = export_files(fileformat.load(source, max_working_pixels=max_working_pixels), str(source))
    for name in files:
        batch.refuse_existing(folder / name, overwrite)
    earlier = exported_before(folder)
    write_atomic_all({folder / name: data for name, data in files.items()}, overwrite=overwrite)
    write_atomic(folder / EXPORT_LISTING, json.dumps(sorted(files)).encode("utf-8"), overwrite=True)
    for stale in sorted(earlier - set(files)):
        (folder / stale).unlink(missing_ok=True)
    print(f"{folder}: {', '.join(sorted(files))}")


def run_preview(args) -> int:
    jobs = targets(args.files, args.output)
    if args.image is not None and len(jobs) > 1:
        raise _fail(args.image, "--image belongs to one .plic file; preview the files one at a time")
    return batch.run_each(jobs, lambda source, target: preview_one(source, target, args))


def preview_one(source: Path, target: Path, args) -> None:
    """Draw ``source`` into ``target``; with ``--image`` (what it was made from) also the edges
    rate control removed from its Canny map at ``--canny``."""
    plic = fileformat.load(source, max_working_pixels=args.max_working_pixels)
    before = None if args.image is None else starting_edges(args.image, plic, tuple(args.canny),
                                                             args.max_pixels)
    picture = preview_image(plic, str(source), source.stat().st_size, before)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    write_atomic(target, buffer.getvalue(), overwrite=args.overwrite)
    print(f"{target}: {picture.width}x{picture.height}")


def starting_edges(image: Path, plic: fileformat.PlicFile, canny: tuple[int, int],
                   max_pixels: int) -> np.ndarray:
    """The Canny map of ``image`` at the working size of ``plic``: what its encoder started from."""
    _, work = pack.working_image(load_rgb(image, max_pixels), max(plic.working_size))
    if (work.shape[1], work.shape[0]) != tuple(plic.working_size):
        raise _fail(image, f"is {work.shape[1]}x{work.shape[0]} at the working size, but the file "
                           f"is {plic.working_size[0]}x{plic.working_size[1]}: give the image it was made from")
    return canny_map(work, *canny)


# -- bench -------------------------------------------------------------------------------------

def run_bench(args) -> int:
    images = batch.expand([args.folder], IMAGE_SUFFIXES, "images")
    settings = pack.EncodeSettings(max_side=args.max_side)
    columns = ["image", "width", "height", "paper", "paper_bpp", "target", "target_bpp", "edges_kept",
               "jpeg_q1", "webp_q0", "avif_q0", "ratio_to_file"]
    rows = []
    for index, path in enumerate(images, 1):
        batch.show_progress(index, len(images), path)
        original_size, work = pack.working_image(load_rgb(path, args.max_pixels), settings.max_side)
        size = (work.shape[1], work.shape[0])
        fitted = ratecontrol.fit(work, original_size, ratecontrol.target_bytes(size, args.target_bpp),
                                 settings=settings)
        bpp = lambda n: round(pack.bits_per_pixel(n, size), 4)
        rows.append({"image": path.name, "width": size[0], "height": size[1],
                     "paper": fitted.start_bytes, "paper_bpp": bpp(fitted.start_bytes),
                     "target": len(fitted.data), "target_bpp": bpp(len(fitted.data)),
                     "edges_kept": round(fitted.kept_share, 3),
                     **ratecontrol.reference_sizes(work),
                     "ratio_to_file": round(path.stat().st_size / fitted.start_bytes, 1)})
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for row in rows:
        print("  ".join(str(row[c]).rjust(w) for c, w in zip(columns, widths)))
    for column in ("paper_bpp", "target_bpp"):
        bpps = sorted(r[column] for r in rows)
        print(f"median {column} {bpps[len(bpps) // 2]:.4f} over {len(rows)} images (prompt not included)")
    paper = pack.EncodeSettings()
    print(f"target: --target-bpp {args.target_bpp}; paper: Canny {paper.canny_low}/{paper.canny_high}, "
          f"palette {paper.palette_size}x{paper.palette_size} WebP q{paper.palette_quality}")
    if not ratecontrol.avif_available():
        print("avif_q0: None, this Pillow was built without AVIF")
    if args.csv:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(args.csv, buffer.getvalue().encode("utf-8"), overwrite=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


class EncodeWork(runner.Work):
    """``plic encode`` on many files (plic.cli.scale): :func:`encode_one` per image."""

    def __init__(self, args, settings: pack.EncodeSettings, decode_settings: dict):
        self.args, self.settings, self.decode_settings = args, settings, decode_settings

    def open(self, device):
        return (None if self.args.prompt is not None else captioner_from_args(self.args)), set()

    def run_one(self, opened, task):
        captioner, shown_notes = opened
        encode_one(task.source, task.target, self.args, self.settings, captioner, shown_notes,
                   self.decode_settings)
        return self.check(task)

    def check(self, task):
        return cli_scale.plic_size(task.target)
