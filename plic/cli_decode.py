"""``plic decode``: reconstruct an image from a .plic file with the reference decoder.

    plic decode FILE.plic... -o OUT.png|DIR --model DIR --inpaint-controlnet PATH
                --color-canny-controlnet PATH [--steps N] [--seed S] [--device D]
                [--precision P] [--cpu-offload] [--size working|original] [--models-dir DIR]

Model arguments are paths, or names looked up in ``<models-dir>/diffusers`` and
``<models-dir>/controlnet`` (``--models-dir`` or ``PLIC_MODELS_DIR``). Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

from PIL import Image

from . import batch, codec, fileformat, models
from . import reconstruct as core
from .errors import PlicError
from .image import resize


def add_decode_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``decode`` command to ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser("decode", help="reconstruct an image from a .plic file with SD1.5 + ControlNets")
    p.add_argument("files", nargs="+", type=Path, metavar="FILE.plic",
                   help=".plic files or folders of them (the models load once for all)")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.png|DIR",
                   help="the PNG for one file; a folder (written as DIR/<name>.png) for several")
    p.add_argument("--model", required=True, metavar="DIR",
                   help="SD1.5 diffusers folder (path, or name under MODELS/diffusers)")
    p.add_argument("--inpaint-controlnet", required=True, metavar="PATH",
                   help="control_v11p_sd15_inpaint: diffusers folder or single file "
                        "(path, or name under MODELS/controlnet)")
    p.add_argument("--color-canny-controlnet", required=True, metavar="PATH",
                   help="the color+canny ControlNet: diffusers folder or single file")
    p.add_argument("--models-dir", type=Path, metavar="MODELS",
                   help=f"ComfyUI-style models folder for names (default: ${models.MODELS_ENV})")
    p.add_argument("--steps", type=int, metavar="N", help="denoising steps (default: the file's, 60)")
    p.add_argument("--seed", type=int, metavar="S", help="random seed (default: the file's, 786)")
    p.add_argument("--guidance", type=float, default=core.DEFAULT_GUIDANCE, metavar="G",
                   help="classifier-free guidance scale (default %(default)s)")
    p.add_argument("--device", default="auto", metavar="D",
                   help="cuda, cuda:1, cpu... (default: cuda when present, else cpu)")
    p.add_argument("--precision", choices=core.PRECISIONS, default="auto",
                   help="auto = fp16 on a GPU, fp32 on the CPU (half precision is never used on the CPU)")
    p.add_argument("--cpu-offload", action="store_true", help="keep models on the CPU until needed")
    p.add_argument("--size", choices=("working", "original"), default="working",
                   help="output at the working size (salient pixels exact) or scaled to the original size")
    p.add_argument("--overwrite", action="store_true", help="replace existing PNGs")
    p.set_defaults(run=run_decode)
    return p


def model_paths(args) -> core.ModelPaths:
    """Resolve the three model arguments (paths or names) offline."""
    nets = models.search_dirs("controlnet", args.models_dir)
    return core.ModelPaths(
        pipeline=models.find_pipeline(args.model, models.search_dirs("diffusers", args.models_dir)),
        inpaint_controlnet=models.find_controlnet(args.inpaint_controlnet, nets, "inpaint ControlNet"),
        color_canny_controlnet=models.find_controlnet(args.color_canny_controlnet, nets,
                                                      "color+canny ControlNet"))


def targets(files: list[Path], output: Path) -> list[batch.Job]:
    """(input, output PNG) pairs: ``output`` itself for one file given as a .png, else
    ``output/<stem>.png`` for every .plic file (folders expanded)."""
    inputs = batch.expand(files, {".plic"}, ".plic files")
    if len(inputs) == 1 and len(files) == 1 and not files[0].is_dir() and output.suffix.lower() == ".png":
        return [(inputs[0], output)]
    return [(path, output / f"{path.stem}.png") for path in inputs]


def run_decode(args) -> int:
    """Decode every file; a file that fails is reported on one line and the others go on."""
    jobs = targets(args.files, args.output)
    for _, target in jobs:
        if target.exists() and not args.overwrite:
            raise PlicError(f"{target}: already exists; pass --overwrite to replace it")
    reconstructor = core.Reconstructor(
        model_paths(args), core.LoadOptions(args.device, args.precision, args.cpu_offload))
    settings = core.DecodeSettings(steps=args.steps, seed=args.seed, guidance_scale=args.guidance)
    return batch.run_each(jobs, lambda source, target: decode_one(reconstructor, settings, source,
                                                                  target, args))


def decode_one(reconstructor: core.Reconstructor, settings: core.DecodeSettings, source: Path,
               target: Path, args) -> None:
    """Reconstruct ``source`` and write it to ``target`` as PNG, atomically."""
    plic = fileformat.load(source)
    unpacked = codec.unpack(plic, str(source))
    chosen = settings.resolve(unpacked.decode_hints)
    print(f"{source}: {chosen.steps} steps, seed {chosen.seed}, {unpacked.width}x{unpacked.height}",
          file=sys.stderr)
    rgb = reconstructor.reconstruct(unpacked, settings)
    if args.size == "original" and tuple(plic.original_size) != (unpacked.width, unpacked.height):
        rgb = resize(rgb, tuple(plic.original_size))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    fileformat.write_atomic(target, buffer.getvalue(), overwrite=args.overwrite)
    print(f"{target}: {rgb.shape[1]}x{rgb.shape[0]}")
