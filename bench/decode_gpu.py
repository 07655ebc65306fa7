"""Decoder speed against the paper's configuration: SD1.5 UNet + two ControlNets + VAE + CLIP
text encoder, random weights, every fast path of ``plic decode`` / PLIC Reconstruct.

The models are built from PLIC's own SD1.5 configs (plic/decode/sd15_configs.py, the default decoder
family's record) with random weights: nothing is downloaded and the compute is the same as with
real weights. Every variant is set up by ``plic.decode.reconstruct.prepare`` and run by
``plic.decode.reconstruct.decode`` (generate, then the salient pixels restored), the code ``plic decode``
runs, on a real encoded image. The few-step variants (lcm4, tcd4, tcd8) merge a random LoRA
(tests/support/random_models.save_random_lora, read back by plic.decode.lora.merge as ``plic decode --lora``
does) and run its sampler at guidance 1: a merged LoRA costs nothing per step, so their speed is
a real few-step LoRA's; their images are not (random weights), so the pixel difference they
report says nothing of a real LoRA's quality (docs/method.md: measure that with ``plic eval``).

    python -m bench.decode_gpu                          # GPU: 512x512 and 1024x640, every variant
    python -m bench.decode_gpu --variants paper fp16 unipc20 --repeats 5
    python -m bench.decode_gpu --models tiny --steps 2  # CPU run with tiny models
    python -m bench.decode_gpu --models sd15 --sizes 64x64 --steps 2 --variants comfyui  # CPU
    python -m bench.decode_gpu --models sd15 --sizes 64x64 --steps 2 --variants comfyui --low-memory
    python -m bench.decode_gpu --variants lcm4 tcd4 tcd8 lcm4_compile --repeats 5    # few steps, GPU

The ``comfyui`` variant runs the shipped decompress workflow through ComfyUI's own executor and
nodes in this process (bench/comfy_graph.py; ComfyUI's source from ``--comfyui``); ComfyUI
recognises a model by its layer shapes, so it needs the full-size models (at any image size).

Method: per size, every variant gets a fresh pipeline and one untimed warm-up call (reported:
build seconds and first-call seconds, which hold the compilation of the compiled variants; its
peak memory is the variant's). Then ``--repeats`` rounds run every variant once each,
interleaved, the order rotated each round; reported are the median and the spread (min-max)
of seconds per image, images/s and denoising-loop iterations/s, the loop timed between CUDA
events recorded at the step callbacks and the call between ``torch.cuda.synchronize()``.
During the timed rounds dynamo's ``error_on_recompile`` is on: a compiled variant that would
recompile (or fall back to eager) fails instead of being timed. Every variant's images are
compared with the reference's first image (same file, same seed): max and mean absolute pixel
difference; the reference's own row compares its last timed call with its first (run to run).

``--low-memory`` holds one model set at a time: each variant is built, warmed up, timed and
released before the next (the rounds are not interleaved), and on the CPU the models are held in
bf16 (ComfyUI's too: ``--bf16-unet``), computed as each implementation does there. A full-size set
is 7 GB in fp32: the CPU run of the comfyui variant held both, 15.5 GB; with ``--low-memory``
it stays under 8 GB, for a check that the variants run (the tests' run), not for their times.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.timing import StepClock
from plic.codec import fileformat, pack
from plic.decode import lora
from plic.decode import reconstruct as core
from plic.image import load_rgb, resize
from scripts.comfy_server import COMFYUI as DEFAULT_COMFYUI
from tests.support import random_models

EXAMPLE = Path(__file__).resolve().parents[1] / "plic" / "data" / "example.png"
FULL_SIZES = ("512x512", "1024x640")
TINY_SIZES = ("64x64", "128x80")
REFERENCE = "paper"
#: Steps of the fewer-step variants: fixed, whatever --steps says.
FEW_STEPS = 20
#: What --low-memory holds the models in on the CPU: half of fp32, and computed there (fp16 is not).
LOW_MEMORY_CPU_DTYPE = "bfloat16"
#: Rank of the few-step variants' random LoRA (LCM-LoRA's for SD1.5: 64).
LORA_RANK = 64


@dataclass(frozen=True)
class Variant:
    """One configuration; None for ``steps`` means ``--steps`` (the reference's 60)."""

    what: str
    precision: str = "fp16"
    attention: str = "sdpa"  # "efficient": memory-efficient attention only (the paper's xformers)
    cpu_offload: bool = False
    channels_last: bool = False
    compile: str = "off"
    steps: int | None = None
    scheduler: str = "unipc"
    batch: int = 1
    vae_tiling: bool = False
    lora: bool = False  # a random LoRA of LORA_RANK merged in, as plic decode --lora does


VARIANTS = {
    "paper": Variant("the paper's configuration: fp16, memory-efficient attention, model CPU offload",
                     attention="efficient", cpu_offload=True),
    "fp16": Variant("fp16, every model on the GPU, SDPA picks the attention kernel"),
    "bf16": Variant("bf16, every model on the GPU", precision="bf16"),
    "channels_last": Variant("fp16 + channels_last memory format", channels_last=True),
    "compile": Variant("fp16 + torch.compile (mode default) of UNet and ControlNets", compile="default"),
    "compile_graphs": Variant("fp16 + torch.compile mode reduce-overhead (CUDA graphs)",
                              compile="reduce-overhead"),
    "unipc20": Variant(f"fp16, UniPC {FEW_STEPS} steps", steps=FEW_STEPS),
    "dpmpp20": Variant(f"fp16, DPM-Solver++ 2M {FEW_STEPS} steps", steps=FEW_STEPS, scheduler="dpmpp_2m"),
    "batch2": Variant("fp16, two files per call", batch=2),
    "batch4": Variant("fp16, four files per call", batch=4),
    "vae_tiling": Variant("fp16, VAE in tiles", vae_tiling=True),
    "fast": Variant(f"fp16 + compile (default) + UniPC {FEW_STEPS} steps + four files per call",
                    compile="default", steps=FEW_STEPS, batch=4),
    "lcm4": Variant("fp16 + an LCM-LoRA-style LoRA merged, LCM 4 steps, guidance 1", steps=4,
                    scheduler="lcm", lora=True),
    "tcd4": Variant("fp16 + a TCD/Hyper-SD-style LoRA merged, TCD 4 steps, guidance 1", steps=4,
                    scheduler="tcd", lora=True),
    "tcd8": Variant("fp16 + a Hyper-SD 8-step-style LoRA merged, TCD 8 steps, guidance 1", steps=8,
                    scheduler="tcd", lora=True),
    "lcm4_compile": Variant("lcm4 + torch.compile (mode default) of UNet and ControlNets", steps=4,
                            scheduler="lcm", lora=True, compile="default"),
    "comfyui": Variant("workflows/api/plic_decompress.json through ComfyUI's executor and nodes "
                       "(DiffusersLoader for the checkpoint; ComfyUI picks precision and attention)"),
}
COMFYUI = "comfyui"
COMPILED = tuple(name for name, v in VARIANTS.items() if v.compile != "off")
COLUMNS = ("size", "variant", "precision", "attention", "offload", "steps", "cfg", "batch", "repeats",
           "s_per_image", "s_per_image_min", "s_per_image_max", "images_per_s", "loop_it_per_s",
           "x_paper", "max_px_diff", "mean_px_diff", "salient_max_px_diff", "build_s", "first_call_s",
           "peak_allocated_gb", "peak_reserved_gb")


def parse_size(text: str) -> tuple[int, int]:
    width, height = text.lower().split("x")
    return int(width), int(height)


@dataclass(frozen=True)
class Sample:
    """The file every variant decodes: its bytes (ComfyUI reads the file) and its parts."""

    data: bytes
    unpacked: pack.Unpacked


def sample_file(size: tuple[int, int]) -> Sample:
    """The example image at ``size``, encoded, with a salient rectangle."""
    rgb = resize(load_rgb(EXAMPLE), size)
    mask = np.zeros(rgb.shape[:2], bool)
    mask[size[1] // 4: size[1] // 2, size[0] // 4: size[0] // 2] = True
    plic = pack.encode_image(rgb, prompt="a photograph, detailed, natural light",
                              settings=pack.EncodeSettings(max_side=max(size)), salient_mask=mask)
    return Sample(fileformat.dumps(plic), pack.unpack(plic))


def build_components(tiny: bool, dtype):
    """Fresh random models (the tokenizer's files in a folder deleted at once)."""
    with tempfile.TemporaryDirectory() as folder:
        return random_models.build_sd15(Path(folder), tiny=tiny, dtype=dtype)


class Runner:
    """A variant's pipeline on the device of ``setup`` and its timed calls."""

    def __init__(self, variant: Variant, setup: Setup):
        import torch

        self.variant = variant
        self.cuda = setup.device.startswith("cuda")
        self.dtype = (getattr(torch, LOW_MEMORY_CPU_DTYPE) if setup.low_memory and not self.cuda
                      else core.resolve_dtype(variant.precision, setup.device))
        self.settings = core.DecodeSettings(steps=variant.steps or setup.steps, seed=0,
                                            scheduler=variant.scheduler, vae_tiling=variant.vae_tiling)
        resolved = self.settings.resolve({})
        self.steps, self.guidance = resolved.steps, resolved.guidance_scale
        components = build_components(setup.tiny, self.dtype)
        options = core.LoadOptions(device=setup.device, precision=variant.precision,
                                   cpu_offload=variant.cpu_offload and self.cuda,
                                   channels_last=variant.channels_last, compile=variant.compile)
        pipe = random_models.pipeline(components)
        if variant.lora:
            with tempfile.TemporaryDirectory() as folder:
                path = random_models.save_random_lora(components, Path(folder) / "lora.safetensors",
                                                      "kohya", rank=LORA_RANK)
                lora.merge(pipe, lora.LoraSpec(path))
        self.pipe = core.prepare(pipe, options, setup.device)
        self.attention = self._attention_name()
        self.offload = options.cpu_offload
        self.precision = str(self.dtype).removeprefix("torch.")
        self.times: list[dict] = []

    def _attention_name(self) -> str:
        """The paper's xformers when installed; else PyTorch's memory-efficient SDPA kernel
        (xformers' algorithm) on CUDA; plain SDPA on the CPU, which has no such kernel."""
        if self.variant.attention != "efficient" or not self.cuda:
            return "sdpa"
        try:
            self.pipe.enable_xformers_memory_efficient_attention()
            return "xformers"
        except (ImportError, ModuleNotFoundError, ValueError):
            return "sdpa-efficient"

    def _attention_context(self):
        """The memory-efficient kernel wherever it applies (math where it does not, as xformers
        left the text encoder to PyTorch); flash attention off."""
        if self.attention != "sdpa-efficient":
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])

    def call(self, sample: Sample) -> tuple[dict, list[np.ndarray]]:
        """One synchronised decode of ``variant.batch`` copies of the file, as ``plic decode``
        makes it (salient pixels restored): wall seconds and loop iterations/s (see
        :class:`StepClock`)."""
        import torch

        clock = StepClock(self.cuda)
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        with self._attention_context():
            images = core.decode(self.pipe, [sample.unpacked] * self.variant.batch, self.settings,
                                 on_step=lambda done, total: clock.mark())
        if self.cuda:
            torch.cuda.synchronize()
        return {"seconds": time.perf_counter() - start, "loop_it_per_s": clock.rate()}, images

    def release(self) -> None:
        """Drop the pipeline (the times and descriptions stay)."""
        self.pipe = None


def memory_mark() -> tuple[int, int]:
    """Allocated and reserved bytes now, with the allocator's cache emptied and the peaks reset,
    so that the next peaks minus these are what the next pipeline adds."""
    import torch

    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated(), torch.cuda.memory_reserved()


@dataclass(frozen=True)
class Setup:
    """What every variant of a run shares."""

    device: str
    tiny: bool
    steps: int  # --steps
    comfyui: object = None  # bench.comfy_graph.ComfyUI, when the comfyui variant runs
    low_memory: bool = False  # --low-memory


def new_runner(name: str, setup: Setup):
    """``name``'s runner: a diffusers pipeline, or ComfyUI's graph for ``comfyui``."""
    if name != COMFYUI:
        return Runner(VARIANTS[name], setup)
    import torch

    from bench.comfy_graph import ComfyGraphRunner

    # written as fp16 files, on the CPU too (half the disk and memory): ComfyUI casts as it loads
    return ComfyGraphRunner(VARIANTS[name], build_components(setup.tiny, torch.float16),
                            setup.device, setup.steps, setup.comfyui)


def warm_up(name: str, setup: Setup, sample: Sample) -> tuple[object, dict, list]:
    """Build ``name``'s pipeline and make its first call: build and first-call seconds, peak
    memory above what was held before (allocated, and reserved: the allocator's cache, cuDNN
    and cuBLAS workspaces and CUDA-graph pools included), and its images."""
    import torch

    cuda = setup.device.startswith("cuda")
    before = memory_mark() if cuda else (0, 0)
    start = time.perf_counter()
    runner = new_runner(name, setup)
    built = time.perf_counter() - start
    first, images = runner.call(sample)
    info = {"build_s": built, "first_call_s": first["seconds"], "peak_allocated_gb": None,
            "peak_reserved_gb": None}
    if cuda:
        info["peak_allocated_gb"] = (torch.cuda.max_memory_allocated() - before[0]) / 2**30
        info["peak_reserved_gb"] = (torch.cuda.max_memory_reserved() - before[1]) / 2**30
    return runner, info, images


def salient_difference(images: list[np.ndarray], unpacked: pack.Unpacked) -> int:
    """Max difference, in 8-bit levels, of every image from the file's stored salient pixels
    inside its salient mask: 0 when a variant restores them verbatim, as PLIC promises."""
    keep = unpacked.keep_mask()
    return int(max(np.abs(image[keep].astype(np.int16) - unpacked.salient_pixels[keep]).max()
                   for image in images))


def pixel_difference(images: list[np.ndarray], reference: np.ndarray) -> tuple[int, float]:
    """Max and mean absolute difference of every image from ``reference``, in 8-bit levels."""
    diffs = [np.abs(image.astype(np.int16) - reference.astype(np.int16)) for image in images]
    return int(max(d.max() for d in diffs)), float(np.mean([d.mean() for d in diffs]))


def timed_rounds(runners: dict, sample: Sample, repeats: int, outputs: dict) -> None:
    """``repeats`` rounds that call every runner once, the order rotated each round: each call's
    times are kept by its runner, the last images in ``outputs``."""
    import torch

    names = list(runners)
    # a compiled variant that would compile again (new guards, eager fallback) fails instead
    with torch._dynamo.config.patch(error_on_recompile=True, fail_on_recompile_limit_hit=True):
        for round_ in range(repeats):
            shift = round_ % len(names)
            for name in names[shift:] + names[:shift]:
                timing, outputs[name] = runners[name].call(sample)
                runners[name].times.append(timing)


def run_size(size: str, names: list[str], setup: Setup, repeats: int) -> list[dict]:
    """Every variant at ``size``: warm-ups one after another, then interleaved timed rounds (with
    ``setup.low_memory``, each variant's rounds follow its warm-up and it is released after them)."""
    import torch

    sample = sample_file(parse_size(size))
    runners, rows, first, outputs = {}, {}, {}, {}
    for name in names:
        runners[name], rows[name], first[name] = warm_up(name, setup, sample)
        print(f"# {size} {name}: built in {rows[name]['build_s']:.1f} s, first call "
              f"{rows[name]['first_call_s']:.1f} s", file=sys.stderr, flush=True)
        if setup.low_memory:
            timed_rounds({name: runners[name]}, sample, repeats, outputs)
            runners[name].release()
            gc.collect()
    if not setup.low_memory:
        timed_rounds(runners, sample, repeats, outputs)
    results = []
    for name in names:
        runner = runners[name]
        per_image = [t["seconds"] / runner.variant.batch for t in runner.times]
        row = {"size": size, "variant": name, "precision": runner.precision,
               "attention": runner.attention, "offload": runner.offload,
               "steps": runner.steps, "cfg": runner.guidance, "batch": runner.variant.batch,
               "repeats": len(per_image), "s_per_image": statistics.median(per_image),
               "s_per_image_min": min(per_image), "s_per_image_max": max(per_image),
               "images_per_s": 1 / statistics.median(per_image),
               "loop_it_per_s": statistics.median(t["loop_it_per_s"] for t in runner.times),
               **rows[name]}
        row["max_px_diff"], row["mean_px_diff"] = (
            pixel_difference(outputs[name], first[REFERENCE][0]) if REFERENCE in first else (None, None))
        row["salient_max_px_diff"] = salient_difference(outputs[name], sample.unpacked)
        results.append(row)
    reference = next((r for r in results if r["variant"] == REFERENCE), None)
    for row in results:
        row["x_paper"] = reference["s_per_image"] / row["s_per_image"] if reference else None
    del runners
    torch._dynamo.reset()  # the next size compiles afresh, from fresh pipelines
    if setup.device.startswith("cuda"):
        gc.collect()
        torch.cuda.empty_cache()
    return results


def environment(device: str) -> dict:
    """What the numbers were measured on."""
    import diffusers
    import torch

    info = {"torch": torch.__version__, "diffusers": diffusers.__version__, "device": "CPU"}
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info()  # before any model: the CUDA context (and others)
        info.update(device=torch.cuda.get_device_name(), gpu_memory_gb=round(total / 2**30, 1),
                    in_use_before_models_gb=round((total - free) / 2**30, 2))
    return info


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table, rounded."""
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return "-" if value is None else str(value)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def open_comfyui(names: list[str], explicit: bool, tiny: bool, source: Path, cuda: bool, low_memory: bool):
    """ComfyUI imported for the comfyui variant when ``names`` holds it, or None (holding its
    models in bf16 with ``low_memory`` on the CPU). Where it cannot run, a variant the user named
    stops the run before any work; a default one is left out (removed from ``names``), saying
    why."""
    if COMFYUI not in names:
        return None
    reason = ("it needs the full-size models (--models sd15): ComfyUI recognises SD1.5 by its "
              "layer shapes and loads no tiny model") if tiny else None
    if reason is None:
        from bench.comfy_graph import ComfyUI

        try:
            return ComfyUI(source, cuda, bf16_unet=low_memory and not cuda)
        except ImportError as exc:
            reason = str(exc)
    if explicit:
        raise SystemExit(f"The comfyui variant cannot run: {reason}")
    names.remove(COMFYUI)
    print(f"Leaving out the comfyui variant: {reason}.", file=sys.stderr)
    return None


def run(args) -> tuple[dict, list[dict]]:
    import torch
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # random weights: no casting or loading chatter
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    tiny = args.models == "tiny" or (args.models == "auto" and not cuda)
    if not cuda:
        print(f"No CUDA GPU is available: the full-size table needs one. Running the "
              f"{'tiny' if tiny else 'full-size'} models on the CPU "
              f"({LOW_MEMORY_CPU_DTYPE if args.low_memory else 'fp32'}, no offload, plain SDPA: "
              "the paper's configuration cannot run there).", file=sys.stderr)
    # warm-ups compile every variant's models once per shape: never fall back to eager silently
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    torch._dynamo.config.recompile_limit = 64
    # on the CPU not the compiled variants: inductor compiles C++ there for minutes
    names = list(args.variants or [n for n in VARIANTS if cuda or n not in COMPILED])
    comfyui = open_comfyui(names, bool(args.variants), tiny, args.comfyui, cuda, args.low_memory)
    if REFERENCE not in names:
        names.insert(0, REFERENCE)  # every variant is judged against it, in the same run
    info = {**environment(device), "models": "tiny" if tiny else "sd15", "steps": args.steps,
            "repeats": args.repeats, "comfyui": args.comfyui.name if comfyui else None,
            "low_memory": args.low_memory}
    rows = []
    setup = Setup(device, tiny, args.steps, comfyui, args.low_memory)
    for size in args.sizes or (TINY_SIZES if tiny else FULL_SIZES):
        rows += run_size(size, names, setup, args.repeats)
    return info, rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", choices=("auto", "sd15", "tiny"), default="auto",
                        help="random models: full-size SD1.5 or tiny (default: sd15 on a GPU, tiny "
                             "on the CPU)")
    parser.add_argument("--comfyui", type=Path, default=DEFAULT_COMFYUI,
                        help="ComfyUI's source folder, for the comfyui variant (default: %(default)s)")
    parser.add_argument("--steps", type=int, default=60,
                        help="denoising steps of every variant but the fewer-step ones (default: 60, "
                             f"the reference); unipc20, dpmpp20 and fast always run {FEW_STEPS}, lcm4 "
                             "and tcd4 4, tcd8 8")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (default %(default)s)")
    parser.add_argument("--sizes", nargs="+", metavar="WxH", help=f"default {FULL_SIZES} ({TINY_SIZES} with tiny models)")
    parser.add_argument("--variants", nargs="+", choices=tuple(VARIANTS),
                        help="default: all on a GPU, all but the compiled ones on the CPU, comfyui where it can "
                             "run; 'paper' is "
                             "always added. " + "; ".join(f"{k}: {v.what}" for k, v in VARIANTS.items()))
    parser.add_argument("--low-memory", action="store_true",
                        help="one model set at a time, in bf16 on the CPU: a check that the variants run "
                             "(under 8 GB for the full-size models), not interleaved timings")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    info, rows = run(args)
    print(json.dumps(info))
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps({"environment": info, "results": rows}, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
