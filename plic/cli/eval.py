"""``plic compare`` and ``plic eval``: what PLIC's size buys, against JPEG, WebP and AVIF.

    plic compare IMAGE (--bytes N | --plic FILE.plic) -o DIR [--max-side N] [--overwrite]
    plic eval ORIGINALS... --reconstructions DIR [--plic DIR] -o DIR [--metrics LIST]
              [--models-dir MODELS] [--dinov2 NAME] [--lpips FILE] [--device D] [--overwrite]

Originals and reconstructions (and .plic files) are paired by file name stem. DINOv2 and LPIPS
load from ``<models-dir>/dinov2/<NAME>`` and ``<models-dir>/lpips/<FILE>`` (or paths); nothing
is downloaded. Leave a metric out with ``--metrics`` when its model is not at hand.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from plic import batch, image, model_files, runner
from plic.atomic import write_atomic
from plic.cli import scale as cli_scale
from plic.cli.args import MAX_SIDE, add_pixel_limits, device, int_in
from plic.codec import fileformat
from plic.errors import ModelNotFoundError, PlicError, PlicInputError, one_line, printable
from plic.eval import compare, evaluation, metrics, summary
from plic.image import load_rgb, resize, to_working
from plic.runner import Task
from plic.safefs import output_path

#: What ``plic encode`` reads, plus AVIF (a reconstruction or codec output may be one).
IMAGE_SUFFIXES = image.IMAGE_SUFFIXES | {".avif"}
PLIC_SUFFIX = fileformat.SUFFIX


def _names(value: str, allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(unknown) or '(none given)'}; "
                                         f"choose from {','.join(allowed)}")
    return names


def add_eval_parsers(subparsers) -> None:
    """Add the ``compare`` and ``eval`` commands to ``subparsers`` (from ``add_subparsers``)."""
    codecs = ",".join(compare.CODEC_NAMES)
    p = subparsers.add_parser("compare", help="the best JPEG, WebP and AVIF of an image that fit in "
                                              "a byte count (e.g. its .plic's)")
    p.add_argument("image", type=Path, metavar="IMAGE")
    budget = p.add_mutually_exclusive_group(required=True)
    budget.add_argument("--bytes", type=int_in(1, fileformat.MAX_FILE_BYTES), metavar="N",
                        help="the byte budget")
    budget.add_argument("--plic", type=Path, metavar="FILE.plic",
                        help="use this file's size as the budget and its working size")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                   help="folder for <name>.<codec>-q<Q>.<ext>")
    p.add_argument("--max-side", type=MAX_SIDE, default=image.DEFAULT_MAX_SIDE, metavar="N",
                   help="with --bytes: longest side the image is scaled down to (default %(default)s)")
    p.add_argument("--codecs", type=lambda v: _names(v, compare.CODEC_NAMES, "codec"),
                   default=compare.CODEC_NAMES, metavar="LIST", help=f"default {codecs}")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    add_pixel_limits(p)
    p.set_defaults(run=run_compare)

    p = subparsers.add_parser("eval", help="metrics of reconstructions against their originals, next "
                                           "to same-size JPEG/WebP/AVIF, as CSV, JSON and an HTML report")
    p.add_argument("originals", nargs="+", type=Path, metavar="ORIGINAL",
                   help="original images or folders of them")
    p.add_argument("-r", "--reconstructions", type=Path, required=True, metavar="DIR",
                   help="folder of reconstructions, named like the originals (any image type)")
    p.add_argument("--plic", type=Path, metavar="DIR",
                   help="folder of the .plic files (<name>.plic): gives bpp and the same-size codecs")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="DIR",
                   help="folder for results.csv, results.json, results.html, plots/")
    p.add_argument("--metrics", type=lambda v: _names(v, metrics.METRIC_NAMES, "metric"),
                   default=metrics.METRIC_NAMES, metavar="LIST",
                   help=f"default {','.join(metrics.METRIC_NAMES)}")
    p.add_argument("--codecs", type=lambda v: _names(v, compare.CODEC_NAMES, "codec"),
                   default=compare.CODEC_NAMES, metavar="LIST", help=f"default {codecs}")
    p.add_argument("--models-dir", type=Path, metavar="MODELS",
                   help=f"ComfyUI-style models folder (default: ${model_files.MODELS_ENV})")
    p.add_argument("--dinov2", default=metrics.DINO_DEFAULT, metavar="NAME",
                   help="DINOv2 folder: path, or name under MODELS/dinov2 (default %(default)s)")
    p.add_argument("--lpips", default=metrics.LPIPS_DEFAULT, metavar="FILE",
                   help="AlexNet trunk for LPIPS: path, or name under MODELS/lpips (default %(default)s)")
    p.add_argument("--device", type=device, default="auto", metavar="D",
                   help="cuda, cpu... (default: cuda when present)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    add_pixel_limits(p)
    cli_scale.add_scale_arguments(p)
    p.set_defaults(run=run_eval)


# -- compare ------------------------------------------------------------------------------------

def run_compare(args) -> int:
    rgb = load_rgb(args.image, args.max_pixels)
    if args.plic is not None:
        plic = fileformat.load(args.plic, max_working_pixels=args.max_working_pixels)
        budget, size = args.plic.stat().st_size, plic.working_size
    else:
        budget, size = args.bytes, None
    work = to_working(rgb, args.max_side) if size is None else resize(rgb, size)
    print(f"{args.image}: {work.shape[1]}x{work.shape[0]}, budget {budget} bytes")
    for found in compare.same_size(work, budget, [compare.codec_by_name(n) for n in args.codecs]):
        if found.fits:
            name = f".{found.codec.name}-q{found.quality}{found.codec.suffix}"
            target = output_path(args.output, args.image.stem, name)
            write_atomic(target, found.data, overwrite=args.overwrite)
            print(f"  {found.describe()} -> {target}")
        else:
            print(f"  {found.describe()}")
    return 0


# -- eval ---------------------------------------------------------------------------------------

def _by_stem(folder: Path, suffixes: set[str], what: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise PlicInputError(f"{folder}: not a folder of {what}")
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in suffixes}


def pair_files(args) -> list[tuple[Path, Path, Path | None]]:
    """(original, reconstruction, .plic or None) for each original; PlicInputError naming every
    original whose reconstruction or .plic is missing, before any work."""
    originals = batch.expand(args.originals, IMAGE_SUFFIXES, "images")
    recons = _by_stem(args.reconstructions, IMAGE_SUFFIXES, "reconstructions")
    plics = _by_stem(args.plic, {PLIC_SUFFIX}, ".plic files") if args.plic else None
    missing = [f"{o}: no reconstruction {args.reconstructions}/{o.stem}.*" for o in originals
               if o.stem not in recons]
    if plics is not None:
        missing += [f"{o}: no {args.plic}/{o.stem}{PLIC_SUFFIX}" for o in originals
                    if o.stem not in plics]
    if missing:
        raise PlicInputError("; ".join(missing))
    return [(o, recons[o.stem], plics[o.stem] if plics is not None else None) for o in originals]


def run_eval(args) -> int:
    pairs = pair_files(args)
    for name in summary.FILES:
        batch.refuse_existing(args.output / name, args.overwrite)
    status = 0
    if cli_scale.requested(args):
        work = EvalWork(args)
        rows, status = cli_scale.run(work, work.tasks(pairs), args, args.output)
        results = [result for row in rows if row.value for result in row.value]
    else:  # one image a metric cannot take is one failed line; the others go on
        evaluator, results, plics = load_evaluator(args), [], {original: plic for original, _, plic in pairs}
        status = batch.run_each([(original, recon) for original, recon, _ in pairs],
                                lambda original, recon: results.extend(
                                    evaluate_pair(evaluator, original, recon, plics[original], args)))
    if not results:
        return 1
    written = summary.write_summary(results, args.output, overwrite=args.overwrite)
    print(f"wrote {', '.join(str(p) for p in written[:3])} and {len(written) - 3} plots")
    return status


def load_evaluator(args) -> metrics.Evaluator:
    """The evaluator of the metrics ``args`` ask for; a missing model names the --metrics that
    leave it out."""
    try:
        return metrics.Evaluator.load(args.metrics, models_dir=args.models_dir, dino_name=args.dinov2,
                                      lpips_name=args.lpips, device=args.device)
    except ModelNotFoundError as exc:
        others = ",".join(m for m in args.metrics if m not in metrics.MODEL_METRICS)
        raise ModelNotFoundError(f"{exc} Without the model, leave its metric out: --metrics {others}") from None


def evaluate_pair(evaluator: metrics.Evaluator, original: Path, reconstruction: Path,
                  plic_path: Path | None, args) -> list[evaluation.Result]:
    """The rows of one original (see :func:`plic.eval.evaluation.evaluate_image`), each printed;
    a reconstruction a metric cannot take (too small...) is a PlicInputError naming it."""
    plic_bytes = size = None
    if plic_path is not None:
        plic = fileformat.load(plic_path, max_working_pixels=args.max_working_pixels)
        plic_bytes, size = plic_path.stat().st_size, plic.working_size
    pictures = load_rgb(original, args.max_pixels), load_rgb(reconstruction, args.max_pixels)
    try:
        rows = evaluation.evaluate_image(evaluator, original.name, *pictures, plic_bytes, size,
                                         [compare.codec_by_name(n) for n in args.codecs])
    except PlicInputError as exc:
        raise PlicInputError(f"{reconstruction}: {exc}") from None
    for row in rows[1:]:
        print(f"{printable(original.name)} {row.method}: " + (row.note or ", ".join(
            f"{k} {v:.4f}" for k, v in row.scores.items())))
    return rows


#: Where ``plic eval`` keeps each image's scores (see :class:`EvalWork`).
RESULTS_FOLDER = "images"


class EvalWork(runner.Work):
    """``plic eval``: one evaluator per worker, :func:`evaluate_pair` per
    original, its rows (without pictures) kept as ``<output>/images/<name>.json``: what a
    rerun reads back instead of evaluating the image again (its thumbnails are then left out
    of report.html). The rows go back to the command for the report."""

    def __init__(self, args):
        self.args = args

    def tasks(self, pairs: list) -> list[Task]:
        """A task per (original, reconstruction, .plic or None) of :func:`pair_files`."""
        scores = self.args.output / RESULTS_FOLDER
        return [Task(original, output_path(scores, original.stem, ".json"), (recon, plic))
                for original, recon, plic in pairs]

    def open(self, device):
        return load_evaluator(self.args)

    def run_one(self, evaluator, task):
        reconstruction, plic = task.extra
        results = evaluate_pair(evaluator, task.source, reconstruction, plic, self.args)
        rows = [{key: value for key, value in vars(r).items() if key != "picture"} for r in results]
        write_atomic(task.target, json.dumps(rows).encode("utf-8"), overwrite=self.args.overwrite)
        return results[1].bytes, results[1].bpp, results

    def check(self, task):
        from plic.eval.evaluation import Result

        try:
            results = [Result(**row) for row in json.loads(task.target.read_text(encoding="utf-8"))]
        except (OSError, ValueError, TypeError) as exc:
            raise PlicError(f"{task.target}: not the scores of an earlier run ({one_line(exc)})") from None
        return results[1].bytes, results[1].bpp, results
