"""``plic decode``: reconstruct an image from a .plic file with the reference decoder.

    plic decode FILE.plic -o OUT.png --model DIR --inpaint-controlnet PATH
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

from . import codec, fileformat, models
from . import reconstruct as core
from .errors import PlicError
from .image import resize


def add_decode_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``decode`` command to ``subparsers`` (from ``add_subparsers``)."""
    p = subparsers.add_parser("decode", help="reconstruct an image from a .plic file with SD1.5 + ControlNets")
    p.add_argument("file", type=Path, metavar="FILE.plic")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.png")
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
    p.add_argument("--overwrite", action="store_true", help="replace OUT.png if it exists")
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


def run_decode(args) -> int:
    """Decode ``args.file`` to ``args.output``; errors are raised as PlicError for the caller."""
    if args.output.exists() and not args.overwrite:
        raise PlicError(f"{args.output}: already exists; pass --overwrite to replace it")
    plic = fileformat.load(args.file)
    unpacked = codec.unpack(plic, str(args.file))
    reconstructor = core.Reconstructor(
        model_paths(args), core.LoadOptions(args.device, args.precision, args.cpu_offload))
    settings = core.DecodeSettings(steps=args.steps, seed=args.seed, guidance_scale=args.guidance)
    chosen = settings.resolve(unpacked.decode_hints)
    print(f"{args.file}: {chosen.steps} steps, seed {chosen.seed}, {unpacked.width}x{unpacked.height}",
          file=sys.stderr)
    rgb = reconstructor.reconstruct(unpacked, settings)
    if args.size == "original" and tuple(plic.original_size) != (unpacked.width, unpacked.height):
        rgb = resize(rgb, tuple(plic.original_size))
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    fileformat.write_atomic(args.output, buffer.getvalue(), overwrite=args.overwrite)
    print(f"{args.output}: {rgb.shape[1]}x{rgb.shape[0]}")
    return 0
