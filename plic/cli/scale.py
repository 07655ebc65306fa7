"""``--jobs N``, ``--ray ADDRESS``, ``--manifest FILE`` and ``--devices LIST`` of ``plic encode``,
``decode`` and ``eval``: each command wraps its own per-file functions as a
:class:`plic.runner.Work` (EncodeWork, DecodeWork, EvalWork, beside them), which :func:`run` hands
to :mod:`plic.runner` (docs/scale.md).

Without these options a command runs as it always did, one file after another in one process.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from plic import runner
from plic.codec import fileformat, pack
from plic.deps import resolve_device
from plic.runner import FAILED, Task

MANIFEST_NAME = "manifest.jsonl"


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


def plic_size(path: Path) -> tuple[int, float, None]:
    """(bytes, bpp, None) of a ``.plic`` file, read back with every CRC checked."""
    plic = fileformat.load(path)
    size = path.stat().st_size
    return size, pack.bits_per_pixel(size, plic.working_size), None
