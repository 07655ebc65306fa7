"""``--jobs N``, ``--ray ADDRESS``, ``--manifest FILE`` and ``--devices LIST`` of ``plic encode``,
``decode`` and ``eval``: the command's own per-file functions as :class:`plic.runner.Work`, run
by :mod:`plic.runner` (docs/scale.md).

Without these options a command runs as it always did, one file after another in one process.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

from PIL import Image

from plic import runner
from plic.atomic import write_atomic
from plic.codec import fileformat
from plic.codec import pack
from plic.deps import resolve_device
from plic.errors import PlicError, one_line
from plic.runner import FAILED, Task
from plic.safefs import output_path

MANIFEST_NAME = "manifest.jsonl"
#: Where ``plic eval`` keeps each image's scores (see :class:`EvalWork`).
RESULTS_FOLDER = "images"


def add_scale_arguments(parser: argparse.ArgumentParser, devices: bool = False) -> None:
    """The options of a restartable run over many files (``devices``: decode's ``--devices``)."""
    group = parser.add_argument_group(
        "many files at once (docs/scale.md)", "any of these makes a restartable run: outputs that "
        "exist and check out are skipped, each file gets a manifest line, one progress line")
    group.add_argument("--jobs", type=int, metavar="N",
                       help="worker processes on this machine (1: this process)"
                            + ("; decode on GPUs: one pipeline on each of the first N" if devices else "")
                            + "; with --ray the tasks in flight (default: the cluster's CPUs)")
    group.add_argument("--ray", metavar="ADDRESS",
                       help="run on a Ray cluster: auto (the one this machine belongs to), local "
                            "(start one here) or HOST:PORT / ray://HOST:10001; needs "
                            'pip install "comfyui-plic[ray]"')
    group.add_argument("--manifest", type=Path, metavar="FILE.jsonl",
                       help=f"where each file's line goes (default: {MANIFEST_NAME} in the output folder)")
    if devices:
        group.add_argument("--devices", metavar="LIST",
                           help="one decode worker per device: cuda:0,cuda:1,... (default: "
                                "the first --jobs GPUs, else --jobs on the CPU)")


def requested(args) -> bool:
    """Whether the command line asks for a restartable run."""
    return any(getattr(args, name, None) is not None for name in ("jobs", "ray", "manifest", "devices"))


def run(work: runner.Work, jobs: list, args, folder: Path,
        devices: tuple[str, ...] = ()) -> tuple[list[runner.Row], int]:
    """Run ``work`` on ``jobs`` (Tasks, or (input, output) pairs) as the options say, the
    manifest in ``folder`` unless --manifest: (rows in job order, exit status 1 when a file
    failed)."""
    tasks = [job if isinstance(job, Task) else Task(*job) for job in jobs]
    options = runner.Options(manifest=args.manifest or folder / MANIFEST_NAME, jobs=args.jobs,
                             ray=args.ray, devices=devices, overwrite=args.overwrite)
    rows = runner.run(work, tasks, options)
    return rows, int(any(row.status == FAILED for row in rows))


def decode_devices(args) -> tuple[str, ...]:
    """One device per decode worker: --devices; else, decoding on the GPU, the first --jobs
    visible GPUs (one pipeline each); else --jobs times the CPU. Empty on Ray (the cluster's
    GPUs are its actors)."""
    if args.ray is not None:
        return ()
    if args.devices:
        return tuple(d.strip() for d in args.devices.split(",") if d.strip())
    device = resolve_device(args.device)
    if device == "cuda":
        import torch

        return tuple(f"cuda:{i}" for i in range(min(args.jobs or 1, torch.cuda.device_count())))
    return (device,) * (args.jobs or 1)


def _plic_size(path: Path) -> tuple[int, float, None]:
    """(bytes, bpp, None) of a ``.plic`` file, read back with every CRC checked."""
    plic = fileformat.load(path)
    size = path.stat().st_size
    return size, pack.bits_per_pixel(size, plic.working_size), None


class EncodeWork(runner.Work):
    """``plic encode``: :func:`plic.cli.main.encode_one` per image."""

    def __init__(self, args, settings: pack.EncodeSettings, decode_settings: dict):
        self.args, self.settings, self.decode_settings = args, settings, decode_settings

    def open(self, device):
        from plic.cli.encode import captioner_from_args

        return (None if self.args.prompt is not None else captioner_from_args(self.args)), set()

    def run_one(self, opened, task):
        from plic.cli.main import encode_one

        captioner, shown_notes = opened
        encode_one(task.source, task.target, self.args, self.settings, captioner, shown_notes,
                   self.decode_settings)
        return self.check(task)

    def check(self, task):
        return _plic_size(task.target)


class DecodeWork(runner.Work):
    """``plic decode``: one pipeline per worker (on its device), ``--batch-size`` files at a time
    through :func:`plic.cli.decode.read_one`, one pipeline call per run of one size
    (:func:`plic.decode.reconstruct.batches`) and :func:`plic.cli.decode.write_png`. Workers on the
    CPU compute with as many threads as this process (the same images, at the price of sharing
    the cores when several run on one machine)."""

    on_devices = True

    def __init__(self, args, paths, settings):
        import torch

        self.args, self.paths, self.settings = args, paths, settings
        self.batch_size = args.batch_size
        self.on_gpus = not args.device.startswith("cpu")
        self.cpu_threads = torch.get_num_threads()

    def open(self, device):
        from plic.decode import reconstruct as core

        a = self.args
        if resolve_device(device or a.device).startswith("cpu"):
            import torch

            # the threads of one process here (Ray gives its workers one): another count
            # changes the image by rounding; on a GPU it does not matter
            torch.set_num_threads(self.cpu_threads)
        reconstructor = core.Reconstructor(self.paths, core.LoadOptions(
            device or a.device, a.precision, a.cpu_offload, a.channels_last, a.compile))
        reconstructor.pipeline  # noqa: B018 - loaded once, here; a model that cannot load ends the run
        return reconstructor

    def run(self, reconstructor, tasks):
        from plic.cli.decode import read_one
        from plic.decode import reconstruct as core

        rows, read = {}, {}  # read: id(unpacked) -> (task, item of read_one, its row)
        for task in tasks:
            row = runner.attempt(task, lambda task=task: (None, None, read_one(self.settings, task.source,
                                                                               task.target, self.args)))
            if row.status == FAILED:
                rows[task] = row
            else:
                read[id(row.value[0])] = (task, row.value, row)
        for group in core.batches([item[0] for _, item, _ in read.values()], self.settings, self.batch_size):
            start = time.perf_counter()
            try:
                images = reconstructor.reconstruct_batch(group, self.settings)
            except Exception as exc:  # out of GPU memory included: this batch's files fail, not the run
                images = [exc] * len(group)
            share = (time.perf_counter() - start) / len(group)
            for rgb, unpacked in zip(images, group):
                task, item, first = read[id(unpacked)]
                row = runner.attempt(task, partial(self._write, rgb, task, item), share + first.seconds)
                row.out, row.err = first.out + row.out, first.err + row.err
                rows[task] = row
        return [rows[task] for task in tasks]

    def _write(self, rgb, task, item):
        """Write the PNG of ``item`` (from :func:`read_one`), or raise what its batch raised."""
        from plic.cli.decode import write_png

        if isinstance(rgb, Exception):
            raise rgb
        write_png(rgb, item, self.args)
        return self.check(task)

    def check(self, task):
        try:
            with Image.open(task.target) as image:
                image.load()
        except Exception as exc:  # Pillow raises many kinds for a broken file
            raise PlicError(f"{task.target}: not an image that opens ({one_line(exc)})") from None
        return _plic_size(task.source)


class EvalWork(runner.Work):
    """``plic eval``: one evaluator per worker, :func:`plic.cli.eval.evaluate_pair` per
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
        from plic.cli.eval import load_evaluator

        return load_evaluator(self.args)

    def run_one(self, evaluator, task):
        from plic.cli.eval import evaluate_pair

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
