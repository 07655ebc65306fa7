"""Decoder speed: SD1.5 UNet + two ControlNets + VAE + CLIP text encoder, random weights.

The models are built from PLIC's own SD1.5 configs (plic/sd15_configs.py) with random weights:
nothing is downloaded and the compute is the same as with real weights. Each run goes through
the same code as ``plic decode`` (plic.reconstruct.generate) on a real encoded image.

    python bench/decode_gpu.py                       # GPU: 512x512 and 1024x640, fp16 and bf16
    python bench/decode_gpu.py --variants base channels_last compile unipc20 batch2
    python bench/decode_gpu.py --tiny --steps 1      # CPU smoke run with tiny models

Reported per (size, precision, variant): iterations/s of the denoising loop, seconds per image
(whole call divided by the images it made) and peak GPU memory. Without a CUDA GPU only the
tiny models run (full size on a CPU takes minutes per step).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import random_models  # noqa: E402
from plic import codec  # noqa: E402
from plic import reconstruct as core  # noqa: E402
from plic.image import load_rgb, resize  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "plic" / "data" / "example.png"
FULL_SIZES = ("512x512", "1024x640")
TINY_SIZES = ("64x64", "128x80")
#: What each variant changes; "base" is the reference pipeline with PyTorch SDPA attention.
VARIANTS = {
    "base": "reference pipeline, SDPA attention",
    "channels_last": "UNet, ControlNets and VAE in channels_last memory format",
    "compile": "torch.compile of UNet and ControlNets (max-autotune, no CUDA graphs)",
    "compile_graphs": "torch.compile mode=reduce-overhead (CUDA graphs)",
    "unipc20": "20 UniPC steps instead of the reference's 60",
    "batch2": "two images per call",
}
DEFAULT_VARIANTS = ("base", "channels_last", "unipc20", "batch2")


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


def sample_file(size: tuple[int, int]) -> codec.Unpacked:
    """The example image at ``size``, encoded and unpacked, with a salient rectangle."""
    rgb = resize(load_rgb(EXAMPLE), size)
    mask = np.zeros(rgb.shape[:2], bool)
    mask[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = True
    plic = codec.encode_image(rgb, prompt="a photograph, detailed, natural light",
                              settings=codec.EncodeSettings(max_side=max(size)), salient_mask=mask)
    return codec.unpack(plic)


def build_pipeline(tiny: bool, device: str, dtype, variant: str):
    """Random-weight pipeline for ``variant`` on ``device`` in ``dtype``."""
    import torch

    with tempfile.TemporaryDirectory() as folder:
        components = random_models.build_sd15(Path(folder), tiny=tiny, device=device, dtype=dtype)
    pipe = random_models.pipeline(components)
    pipe.set_progress_bar_config(disable=True)
    if variant == "channels_last":
        for model in (pipe.unet, pipe.vae, *pipe.controlnet.nets):
            model.to(memory_format=torch.channels_last)
    if variant in ("compile", "compile_graphs"):
        mode = "reduce-overhead" if variant == "compile_graphs" else "max-autotune-no-cudagraphs"
        pipe.unet = torch.compile(pipe.unet, mode=mode, fullgraph=True)
        pipe.controlnet.nets = torch.nn.ModuleList(
            torch.compile(net, mode=mode, fullgraph=True) for net in pipe.controlnet.nets)
    return pipe


def measure(pipe, unpacked, steps: int, count: int, device: str) -> dict:
    """One timed call: iterations/s of the loop, seconds per image, peak memory."""
    import torch

    marks: list[float] = []
    settings = core.DecodeSettings(steps=steps, seed=0)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    core.generate(pipe, unpacked, settings, on_step=lambda done, total: marks.append(time.perf_counter()),
                  count=count)
    if cuda:
        torch.cuda.synchronize()
    total = time.perf_counter() - start
    loop = (len(marks) - 1) / (marks[-1] - marks[0]) if len(marks) > 1 else 1 / (marks[0] - start)
    return {"iterations_per_s": round(loop, 3), "seconds_per_image": round(total / count, 4),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None}


def speedup(rows: list[dict], row: dict) -> float | None:
    """Seconds per image of the reference pipeline ("base", same size and precision, this run)
    over this row's: the peer every variant is judged against."""
    for other in rows:
        if (other["variant"], other["size"], other["precision"]) == ("base", row["size"], row["precision"]):
            return round(other["seconds_per_image"] / row["seconds_per_image"], 2)
    return None


def run(args) -> list[dict]:
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # random weights: no casting or loading chatter
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    tiny = args.tiny or not cuda
    if not cuda:
        print("No CUDA GPU is available: the full-size table needs one. Running the tiny models on "
              "the CPU (fp32) so the benchmark is exercised.", file=sys.stderr)
    sizes = args.sizes or (TINY_SIZES if tiny else FULL_SIZES)
    precisions = args.precisions or (("fp16", "bf16") if cuda else ("fp32",))
    variants = args.variants or DEFAULT_VARIANTS
    name = torch.cuda.get_device_name() if cuda else "CPU"
    rows = []
    for precision in precisions:
        dtype = core.resolve_dtype(precision, device)
        for variant in variants:
            pipe = build_pipeline(tiny, device, dtype, variant)
            steps = 20 if variant == "unipc20" and args.steps == 60 else args.steps
            count = 2 if variant == "batch2" else 1
            for size in sizes:
                unpacked = sample_file(parse_size(size))
                measure(pipe, unpacked, min(steps, 2), count, device)  # warm-up (and compilation)
                row = {"device": name, "models": "tiny" if tiny else "sd15", "size": size,
                       "precision": precision, "variant": variant, "steps": steps, "batch": count,
                       **measure(pipe, unpacked, steps, count, device)}
                row["speedup_vs_base"] = speedup(rows + [row], row)
                rows.append(row)
                print(" | ".join(str(v) for v in row.values()), flush=True)
            del pipe
            if cuda:
                torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny random models (CPU smoke run)")
    parser.add_argument("--steps", type=int, default=60, help="denoising steps (default: 60, the reference)")
    parser.add_argument("--sizes", nargs="+", metavar="WxH", help=f"default {FULL_SIZES} ({TINY_SIZES} with --tiny)")
    parser.add_argument("--precisions", nargs="+", choices=("fp32", "fp16", "bf16"),
                        help="default fp16 bf16 on a GPU, fp32 on the CPU")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS),
                        help=f"default {' '.join(DEFAULT_VARIANTS)}; " +
                             "; ".join(f"{k}: {v}" for k, v in VARIANTS.items()))
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    print("device | models | size | precision | variant | steps | batch | it/s | s/image | peak GB | x base")
    rows = run(args)
    if args.json:
        args.json.write_text(json.dumps({"results": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
