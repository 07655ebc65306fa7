"""``plic decode``: reconstruct an image from a .plic file with the reference decoder.

    plic decode FILE.plic... -o OUT.png|DIR --model DIR --inpaint-controlnet PATH
                --color-canny-controlnet PATH [--family F] [--lora FILE[:WEIGHT]]...
                [--steps N] [--seed S] [--cfg G] [--device D]
                [--precision P] [--cpu-offload] [--size working|original] [--models-dir DIR]
                [--channels-last] [--compile MODE] [--scheduler S] [--batch-size N] [--vae-tiling]

Model arguments are paths, or names looked up in ``<models-dir>/diffusers``,
``<models-dir>/controlnet`` and ``<models-dir>/loras`` (``--models-dir`` or
``PLIC_MODELS_DIR``). Nothing is downloaded. ``--family`` picks the decoder family's record
(:mod:`plic.decode.families`): which ControlNet options it needs and its default sampler, steps and
guidance. The fast paths (--precision, --channels-last, --compile, --scheduler with --steps,
a few-step LoRA with --scheduler lcm|tcd, --batch-size, --vae-tiling) and how each changes the
output are described in :mod:`plic.decode.reconstruct`.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from functools import partial
from pathlib import Path

from PIL import Image

from plic import batch, model_files, runner
from plic.atomic import write_atomic
from plic.cli import scale as cli_scale
from plic.cli.args import add_pixel_limits, device, float_in, int_in
from plic.codec import fileformat, pack
from plic.decode import families, lora
from plic.decode import reconstruct as core
from plic.deps import resolve_device
from plic.errors import PlicError, one_line, printable
from plic.image import resize
from plic.runner import FAILED
from plic.safefs import output_path


def add_decode_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``decode`` command to ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser("decode", help="reconstruct an image from a .plic file with SD1.5 + ControlNets")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.plic",
                   help=".plic files or folders of them (the models load once for all)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.png|DIR",
                   help="the PNG for one file; a folder (written as DIR/<name>.png) for several")
    p.add_argument("--model", required=True, metavar="DIR|FILE",
                   help="the family's diffusers folder, e.g. SD1.5 or a fine-tune of it (path, or "
                        "name under MODELS/diffusers), or a fine-tune's single .safetensors "
                        "checkpoint (name under MODELS/checkpoints) with --base-model")
    p.add_argument("--base-model", metavar="DIR",
                   help="for a single-file --model: a diffusers folder of its family (e.g. "
                        "stable-diffusion-v1-5) whose configs, tokenizer and scheduler it is read with")
    p.add_argument("--family", choices=tuple(families.FAMILIES), default=families.DEFAULT.name,
                   help="decoder family: its pipeline, ControlNets and default sampler, steps and "
                        "guidance (default %(default)s: " + families.DEFAULT.title + ")")
    for control in families.control_roles():
        p.add_argument(control.option, metavar="PATH",
                       help=f"{control.expects}: diffusers folder or single file (path, or name under "
                            "MODELS/controlnet); needed by " + ", ".join(
                                f.name for f in families.FAMILIES.values() if control in f.controls))
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:WEIGHT]",
                   help="merge a LoRA (kohya/A1111 or diffusers .safetensors; path, or name under "
                        f"MODELS/loras) at WEIGHT (default {lora.DEFAULT_WEIGHT:g}); repeatable. A few-step LoRA wants "
                        "its sampler: LCM-LoRA --scheduler lcm, TCD and Hyper-SD --scheduler tcd")
    p.add_argument("--models-dir", type=Path, metavar="MODELS",
                   help=f"ComfyUI-style models folder for names (default: ${model_files.MODELS_ENV})")
    p.add_argument("--steps", type=int_in(1, fileformat.MAX_STEPS), metavar="N",
                   help=f"denoising steps (default: the file's, {pack.DEFAULT_DECODE_SETTINGS['steps']})")
    p.add_argument("--seed", type=int_in(0, fileformat.MAX_SEED), metavar="S",
                   help=f"random seed (default: the file's, {pack.DEFAULT_DECODE_SETTINGS['seed']})")
    p.add_argument("--cfg", "--guidance", dest="guidance", type=float_in(0, core.MAX_GUIDANCE), metavar="G",
                   help=f"classifier-free guidance scale (default: 1 with lcm and tcd, which is none and "
                        f"halves the work; else the family's, {core.DEFAULT_GUIDANCE:g} for sd15)")
    p.add_argument("--device", type=device, default="auto", metavar="D",
                   help="cuda, cuda:1, cpu... (default: cuda when present, else cpu)")
    p.add_argument("--precision", choices=core.PRECISIONS, default="auto",
                   help="auto = fp16 on a GPU, fp32 on the CPU (half precision is never used on the CPU)")
    p.add_argument("--cpu-offload", action="store_true", help="keep models on the CPU until needed")
    p.add_argument("--channels-last", action="store_true",
                   help="channels_last memory format for UNet, ControlNets and VAE (output: rounding only)")
    p.add_argument("--compile", choices=core.COMPILE_MODES, default="off",
                   help="torch.compile the UNet and ControlNets; the first image of each size waits "
                        "for the compilation (output: rounding only; not with --cpu-offload; max-autotune "
                        "tunes for many minutes)")
    p.add_argument("--scheduler", choices=core.SCHEDULERS,
                   help=f"sampler (default: the file's, {pack.DEFAULT_DECODE_SETTINGS['scheduler']}); another sampler "
                        "or --steps changes the image; "
                        "lcm and tcd are for few-step LoRAs (default 4 steps)")
    p.add_argument("--batch-size", type=int_in(1, 1024), default=1, metavar="N",
                   help="decode up to N files of the same size in one call (each keeps its seed; "
                        "output: rounding only)")
    p.add_argument("--vae-tiling", action="store_true",
                   help="run the VAE in tiles (less memory; changes images larger than 512 px)")
    p.add_argument("--size", choices=("working", "original"), default="working",
                   help="output at the working size (salient pixels exact) or scaled to the original size")
    p.add_argument("--overwrite", action="store_true", help="replace existing PNGs")
    add_pixel_limits(p)
    cli_scale.add_scale_arguments(p, devices=True)
    p.set_defaults(run=run_decode)
    return p


def model_paths(args) -> core.ModelPaths:
    """Resolve the model arguments the family needs, and the LoRAs (paths or names), offline."""
    family = families.get(args.family)
    nets = model_files.search_dirs("controlnet", args.models_dir)
    controlnets = []
    for control in family.controls:
        name = getattr(args, control.input_name)
        if name is None:
            raise PlicError(f"{control.option} is needed by the {family.name} decoder family: give "
                            f"{control.expects} (a path, or a name under MODELS/controlnet)")
        controlnets.append(model_files.find_controlnet(name, nets, control.title))
    loras = []
    for text in args.lora:
        name, weight = lora.parse(text)
        loras.append(lora.LoraSpec(model_files.find_lora(name, model_files.search_dirs("loras", args.models_dir)), weight))
    pipeline, base = model_files.find_decoder_model(
        args.model, args.base_model, model_files.search_dirs("diffusers", args.models_dir),
        model_files.search_dirs("checkpoints", args.models_dir), family.pipeline_files)
    return core.ModelPaths(pipeline=pipeline, controlnets=tuple(controlnets), family=family.name,
                           loras=tuple(loras), base=base)


def targets(files: list[Path], output: Path) -> list[batch.Job]:
    """(input, output PNG) pairs: ``output`` itself for one file given as a .png, else
    ``output/<stem>.png`` for every .plic file (folders expanded)."""
    inputs = batch.expand(files, {fileformat.SUFFIX}, ".plic files")
    if len(inputs) == 1 and len(files) == 1 and not files[0].is_dir() and output.suffix.lower() == ".png":
        return [(inputs[0], output)]
    return [(path, output_path(output, path.stem, ".png")) for path in inputs]


def run_decode(args) -> int:
    """Decode every file, ``--batch-size`` neighbours of one size per call; a file (or a batch)
    that fails is reported on one line and the others go on."""
    jobs = targets(args.files, args.output)
    settings = core.DecodeSettings(steps=args.steps, seed=args.seed, guidance_scale=args.guidance,
                                   scheduler=args.scheduler, vae_tiling=args.vae_tiling)
    if cli_scale.requested(args):
        folder = args.output.parent if jobs[0][1] == args.output else args.output
        return cli_scale.run(DecodeWork(args, model_paths(args), settings), jobs, args, folder,
                             cli_scale.decode_devices(args))[1]
    for _, target in jobs:
        batch.refuse_existing(target, args.overwrite)
    reconstructor = core.Reconstructor(model_paths(args), core.LoadOptions(
        args.device, args.precision, args.cpu_offload, args.channels_last, args.compile))
    status = 0
    for start in range(0, len(jobs), args.batch_size):
        read: list[tuple] = []  # (unpacked, source, target, plic) of the files that could be read
        status |= batch.run_each(jobs[start:start + args.batch_size],
                                 lambda source, target: read.append(read_one(settings, source, target, args)))
        by_part = {id(item[0]): item for item in read}
        for group in core.batches([item[0] for item in read], settings, args.batch_size, reconstructor.family):
            status |= decode_group(reconstructor, settings, [by_part[id(u)] for u in group], args)
    return status


def read_one(settings: core.DecodeSettings, source: Path, target: Path, args) -> tuple:
    """(unpacked, source, target, plic) for one file, its decode settings printed; a file whose
    output at ``--size original`` would exceed ``--max-pixels`` is refused before any work."""
    plic = fileformat.load(source, max_working_pixels=args.max_working_pixels)
    width, height = plic.original_size
    if args.size == "original" and width * height > args.max_pixels:
        raise PlicError(f"{source}: declares an original size of {width}x{height}, more than the "
                        f"{args.max_pixels} pixels --max-pixels allows (no encoder with that limit "
                        "read such an image); decode it at --size working, or raise --max-pixels")
    unpacked = pack.unpack(plic, str(source))
    chosen = settings.resolve(unpacked.decode_settings, families.get(args.family))
    print(f"{printable(str(source))}: {chosen.scheduler} {chosen.steps} steps, cfg "
          f"{chosen.guidance_scale:g}, seed {chosen.seed}, {unpacked.width}x{unpacked.height}",
          file=sys.stderr)
    return unpacked, source, target, plic


def decode_group(reconstructor: core.Reconstructor, settings: core.DecodeSettings, group: list,
                 args) -> int:
    """Reconstruct ``group`` [(unpacked, source, target, plic)] in one call and write each PNG
    atomically; 1 when it fails (one line naming the files) or a PNG cannot be written."""
    try:
        images = reconstructor.reconstruct_batch([item[0] for item in group], settings)
    except PlicError as exc:
        named = ", ".join(str(item[1]) for item in group)
        print(f"plic: {one_line(f'{named}: {exc}')}", file=sys.stderr)
        return 1
    done = {item[2]: (rgb, item) for rgb, item in zip(images, group)}
    return batch.run_each([item[1:3] for item in group],
                          lambda source, target: write_png(*done[target], args))


def write_png(rgb, item: tuple, args) -> None:
    """Write ``rgb`` for ``item`` (unpacked, source, target, plic) as PNG, atomically, scaled to
    the original size when ``--size original``."""
    unpacked, _, target, plic = item
    if args.size == "original" and tuple(plic.original_size) != (unpacked.width, unpacked.height):
        rgb = resize(rgb, tuple(plic.original_size))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    write_atomic(target, buffer.getvalue(), overwrite=args.overwrite)
    print(f"{target}: {rgb.shape[1]}x{rgb.shape[0]}")


class DecodeWork(runner.Work):
    """``plic decode``: one pipeline per worker (on its device), ``--batch-size`` files at a time
    through :func:`read_one`, one pipeline call per run of one size
    (:func:`plic.decode.reconstruct.batches`) and :func:`write_png`. Workers on the
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
        return cli_scale.plic_size(task.source)
