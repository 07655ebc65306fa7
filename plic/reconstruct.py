"""Reconstruction: SD1.5 + an inpaint ControlNet + a color/canny ControlNet, as the reference did.

The reference (shared reference, "Decoding") ran diffusers' ``StableDiffusionControlNetInpaintPipeline``
with ``control_v11p_sd15_inpaint`` and a color+canny ControlNet, UniPC, 60 steps, ControlNet scale
1.0, a fixed negative prompt and a fixed seed. :class:`Reconstructor` does the same from the
models on disk (offline, see :mod:`plic.models`), then puts the stored salient pixels back
exactly. One loaded pipeline is cached: loading other models, or the same ones with other
:class:`LoadOptions`, replaces it.

Fast paths (measured in bench/README.md, "Decoder speed"), and whether each changes the output
against the reference (same file, same seed):

* ``LoadOptions.precision`` fp16 / bf16 / fp32: changes it by rounding (bf16 most).
* ``LoadOptions.channels_last``: UNet, ControlNets and VAE in channels_last memory format;
  other convolution kernels, so it may change it by rounding.
* ``LoadOptions.compile``: ``torch.compile`` of the UNet and both ControlNets (static shapes,
  whole graphs, so a new size compiles again); fused kernels change it by rounding. The first
  image of each size waits for the compilation. "reduce-overhead" adds CUDA graphs.
* ``DecodeSettings.scheduler`` and ``steps``: another sampler or step count changes it (a
  different image of the same content, not a rounding difference).
* several files in one call (:func:`generate` with a list, ``batch_size`` in the node and the
  CLI): each file keeps its own seed, so it matches the file decoded alone up to rounding.
* ``DecodeSettings.vae_tiling``: the VAE works in overlapping tiles (less memory for large
  outputs); it changes images larger than the VAE's tile (512 px for SD1.5) and leaves smaller
  ones exactly as they were.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from .codec import DEFAULT_DECODE_HINTS, Unpacked
from .deps import require, resolve_device
from .errors import ModelNotFoundError, PlicInputError
from .fileformat import SCHEDULERS, check_decode_hints
from .image import resize
from . import sd15_configs

log = logging.getLogger(__name__)

#: Classifier-free guidance of the reference (diffusers' default; the notebooks left it alone).
DEFAULT_GUIDANCE = 7.5
#: The largest classifier-free guidance scale taken (ComfyUI's cfg goes as far).
MAX_GUIDANCE = 100.0
#: SD1.5 works on multiples of this many pixels (the VAE's downscale factor).
SIZE_MULTIPLE = 8
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: ``torch.compile`` modes for :attr:`LoadOptions.compile` ("off": eager PyTorch).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
#: Scheduler settings that describe the model's noise schedule (kept when switching samplers).
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "prediction_type", "timestep_spacing", "steps_offset")

#: Called after every denoising step with (steps done, total steps); may raise to cancel.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class ModelPaths:
    """Resolved model locations (see :func:`plic.models.find_pipeline` / ``find_controlnet``)."""

    pipeline: Path
    inpaint_controlnet: Path
    color_canny_controlnet: Path


@dataclass(frozen=True)
class LoadOptions:
    """Where and how to run: ``device`` "auto" picks CUDA when present; ``precision`` "auto"
    is fp16 on a GPU and fp32 on the CPU (half precision is never used on the CPU);
    ``channels_last`` and ``compile`` (one of :data:`COMPILE_MODES`) are fast paths, see the
    module's docstring."""

    device: str = "auto"
    precision: str = "auto"
    cpu_offload: bool = False
    channels_last: bool = False
    compile: str = "off"

    def __post_init__(self):
        if self.compile not in COMPILE_MODES:
            raise PlicInputError(f"compile must be one of {', '.join(COMPILE_MODES)}, got '{self.compile}'")
        if self.compile != "off" and self.cpu_offload:
            raise PlicInputError("compile and cpu_offload cannot be combined: offloading moves the "
                                 "models between devices under the compiled code; choose one")


@dataclass(frozen=True)
class DecodeSettings:
    """Sampling knobs; None takes the value from the file's decode hints (the reference's).
    ``scheduler`` is one of :data:`SCHEDULERS`; ``vae_tiling`` decodes in tiles."""

    steps: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    controlnet_scale: float | None = None
    guidance_scale: float = DEFAULT_GUIDANCE
    scheduler: str | None = None
    vae_tiling: bool = False

    def resolve(self, hints: dict) -> "DecodeSettings":
        """Fill every None from ``hints`` (falling back to the reference defaults)."""
        merged = {**DEFAULT_DECODE_HINTS, **(hints or {})}
        settings = DecodeSettings(
            steps=int(self.steps if self.steps is not None else merged["steps"]),
            seed=int(self.seed if self.seed is not None else merged["seed"]),
            negative_prompt=str(self.negative_prompt if self.negative_prompt is not None
                                else merged["negative_prompt"]),
            controlnet_scale=float(self.controlnet_scale if self.controlnet_scale is not None
                                   else merged["controlnet_scale"]),
            guidance_scale=float(self.guidance_scale),
            scheduler=str(self.scheduler if self.scheduler is not None else merged["scheduler"]),
            vae_tiling=bool(self.vae_tiling),
        )
        try:
            check_decode_hints({key: getattr(settings, key) for key in DEFAULT_DECODE_HINTS},
                               "decode setting")
        except ValueError as exc:
            raise PlicInputError(str(exc)) from None
        if not 0 <= settings.guidance_scale <= MAX_GUIDANCE:  # False for NaN
            raise PlicInputError(f"guidance scale must be a number in 0..{MAX_GUIDANCE:g}, got "
                                 f"{settings.guidance_scale}")
        return settings


def resolve_dtype(precision: str, device: str):
    """The torch dtype for ``precision`` on ``device``; half precision on the CPU becomes fp32
    (it is far slower there, or unsupported)."""
    import torch

    if precision not in PRECISIONS:
        raise PlicInputError(f"precision must be one of {', '.join(PRECISIONS)}, got '{precision}'")
    on_cpu = device.startswith("cpu")
    if precision in ("fp16", "bf16") and on_cpu:
        log.warning("PLIC: %s is not used on the CPU; running in fp32", precision)
        return torch.float32
    return {"auto": torch.float32 if on_cpu else torch.float16, "fp32": torch.float32,
            "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _load_controlnet(path: Path, dtype):
    """A diffusers ControlNet folder, or a single checkpoint converted with the SD1.5 config
    (or with ``<file stem>.json`` beside the file when it has another architecture)."""
    diffusers = require("diffusers", package="diffusers", purpose="Reconstruction")
    if path.is_dir():
        return diffusers.ControlNetModel.from_pretrained(str(path), torch_dtype=dtype,
                                                         local_files_only=True)
    sibling = path.with_suffix(".json")
    config = (json.loads(sibling.read_text(encoding="utf-8")) if sibling.is_file()
              else sd15_configs.full()["controlnet"])
    with tempfile.TemporaryDirectory(prefix="plic-controlnet-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config), encoding="utf-8")
        return diffusers.ControlNetModel.from_single_file(str(path), config=folder, torch_dtype=dtype,
                                                          local_files_only=True)


def load_pipeline(paths: ModelPaths, options: LoadOptions = LoadOptions()):
    """Build the reference pipeline from disk (no network): both ControlNets, UniPC scheduler,
    no safety checker. Failures to read a model raise ModelNotFoundError naming the folder."""
    diffusers = require("diffusers", package="diffusers", purpose="Reconstruction")
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.precision, device)
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renamed torch_dtype to dtype; the old name works in every version
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            controlnet = diffusers.MultiControlNetModel([
                _load_controlnet(Path(paths.inpaint_controlnet), dtype),
                _load_controlnet(Path(paths.color_canny_controlnet), dtype)])
            pipe = diffusers.StableDiffusionControlNetInpaintPipeline.from_pretrained(
                str(paths.pipeline), controlnet=controlnet, torch_dtype=dtype, local_files_only=True,
                safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"Could not load the decoder models ({paths.pipeline}, {paths.inpaint_controlnet}, "
            f"{paths.color_canny_controlnet}): {exc}") from exc
    pipe.scheduler = make_scheduler("unipc", pipe.scheduler.config)
    return prepare(pipe, options, device)


def prepare(pipe, options: LoadOptions, device: str):
    """Put ``pipe`` on ``device`` (or offload it) and apply the fast paths of ``options``:
    the one place both :func:`load_pipeline` and bench/decode_gpu.py set a pipeline up."""
    torch = require("torch", package="torch", purpose="Reconstruction")
    pipe.set_progress_bar_config(disable=True)
    if options.cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    if options.channels_last:
        for model in (pipe.unet, pipe.vae, *pipe.controlnet.nets):
            model.to(memory_format=torch.channels_last)
    if options.compile != "off":
        for model in (pipe.unet, *pipe.controlnet.nets):
            compiled = torch.compile(model.forward, mode=options.compile, fullgraph=True, dynamic=False)
            model.forward = _copy_outputs(compiled) if options.compile == "reduce-overhead" else compiled
    return pipe


def _copy_outputs(compiled):
    """``compiled`` (CUDA graphs) with its outputs copied out at once: a graph's outputs live in
    memory that its next replay overwrites, and MultiControlNetModel adds the second net's
    residuals to the first's after the second net ran (the same compiled graph)."""
    import torch

    def forward(*args, **kwargs):
        torch.compiler.cudagraph_mark_step_begin()
        outputs = compiled(*args, **kwargs)
        return torch.utils._pytree.tree_map_only(torch.Tensor, torch.clone, outputs)
    return forward


def make_scheduler(name: str, config):
    """The sampler ``name`` (one of :data:`SCHEDULERS`) for the noise schedule in ``config``
    (any diffusers scheduler's config: only the schedule is kept)."""
    diffusers = require("diffusers", package="diffusers", purpose="Reconstruction")
    schedule = {key: config[key] for key in _SCHEDULE_KEYS if key in config}
    if name == "unipc":
        return diffusers.UniPCMultistepScheduler.from_config(schedule)
    if name == "dpmpp_2m":
        return diffusers.DPMSolverMultistepScheduler.from_config(
            schedule, algorithm_type="dpmsolver++", solver_order=2)
    raise PlicInputError(f"scheduler must be one of {', '.join(SCHEDULERS)}, got '{name}'")


_CACHE: dict[tuple, object] = {}


def cached_pipeline(paths: ModelPaths, options: LoadOptions = LoadOptions()):
    """:func:`load_pipeline`, loaded once for (paths, options) and kept until :func:`release`
    or until a pipeline for other (paths, options) is asked for (only one is held)."""
    key = (paths, options)
    if key not in _CACHE:
        release()  # one pipeline at a time: SD1.5 + two ControlNets is several GB
        _CACHE[key] = load_pipeline(paths, options)
    return _CACHE[key]


def release() -> None:
    """Drop every cached pipeline and give the GPU memory back."""
    _CACHE.clear()
    import gc

    gc.collect()
    torch = require("torch", package="torch", purpose="Reconstruction")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_size(width: int, height: int) -> tuple[int, int]:
    """The size SD1.5 runs at: each side rounded to the nearest multiple of 8 (at least 8)."""
    def snap(side: int) -> int:
        return max(SIZE_MULTIPLE, int(round(side / SIZE_MULTIPLE)) * SIZE_MULTIPLE)
    return snap(width), snap(height)


def _nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W[, C]) array to ``size`` = (w, h) with nearest neighbour (keeps hint
    values such as -1 and white edge pixels exact)."""
    if (array.shape[1], array.shape[0]) == size:
        return array
    rows = (np.arange(size[1]) * array.shape[0] // size[1])
    cols = (np.arange(size[0]) * array.shape[1] // size[0])
    return array[rows][:, cols]


def pipeline_inputs(parts: Sequence[Unpacked], size: tuple[int, int]) -> dict:
    """The pipeline's image arguments for ``parts`` (one batch) at ``size``: the init images
    (salient pixels over the upscaled palette), the masks of pixels to regenerate (white) and
    the two control images as one tensor each (the inpaint hint with -1 to regenerate; the
    color+canny hint scaled to 0..1, as diffusers does with an image)."""
    import torch

    def stacked(arrays) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))

    images, masks, inpaint, color_canny = [], [], [], []
    for unpacked in parts:
        images.append(Image.fromarray(_nearest(unpacked.init_image(), size)))
        masks.append(Image.fromarray(_nearest(np.where(unpacked.keep_mask(), 0, 255).astype(np.uint8), size)))
        inpaint.append(_nearest(unpacked.inpaint_hint(), size))
        color_canny.append(_nearest(unpacked.color_canny_hint, size).astype(np.float32) / 255.0)
    return {"image": images, "mask_image": masks,
            "control_image": [stacked(inpaint), stacked(color_canny)]}


def batch_key(unpacked: Unpacked, settings: DecodeSettings) -> tuple:
    """What files decoded in one call must share: working size, steps, ControlNet scale and
    sampler (seeds and negative prompts may differ)."""
    return _resolved_key(unpacked, settings.resolve(unpacked.decode_hints))


def _resolved_key(unpacked: Unpacked, chosen: DecodeSettings) -> tuple:
    """:func:`batch_key` from settings already resolved for ``unpacked``."""
    return (unpacked.width, unpacked.height), chosen.steps, chosen.controlnet_scale, chosen.scheduler


def batches(parts: Sequence[Unpacked], settings: DecodeSettings, batch_size: int) -> list[list[Unpacked]]:
    """``parts`` in order, cut into runs of at most ``batch_size`` neighbours that share a
    :func:`batch_key` (each run is one :func:`generate` call)."""
    if batch_size < 1:
        raise PlicInputError(f"batch size must be at least 1, got {batch_size}")
    groups: list[list[Unpacked]] = []
    for unpacked in parts:
        if (groups and len(groups[-1]) < batch_size
                and batch_key(groups[-1][0], settings) == batch_key(unpacked, settings)):
            groups[-1].append(unpacked)
        else:
            groups.append([unpacked])
    return groups


def restore_salient(image: np.ndarray, salient_pixels: np.ndarray,
                    salient_mask: np.ndarray | None) -> np.ndarray:
    """``image`` with every pixel of ``salient_mask`` replaced by the stored one, exactly."""
    if salient_mask is None:
        return image
    if image.shape[:2] != salient_mask.shape or salient_pixels.shape[:2] != salient_mask.shape:
        raise PlicInputError(
            f"cannot restore salient pixels: the image is {image.shape[1]}x{image.shape[0]}, the "
            f"salient pixels {salient_pixels.shape[1]}x{salient_pixels.shape[0]} and the mask "
            f"{salient_mask.shape[1]}x{salient_mask.shape[0]}; they must be the same size")
    keep = salient_mask.astype(bool)
    out = image.copy()
    out[keep] = salient_pixels[keep]
    return out


def decode(pipe, parts: Sequence[Unpacked], settings: DecodeSettings = DecodeSettings(),
           on_step: StepCallback | None = None) -> list[np.ndarray]:
    """:func:`generate`, then each part's salient pixels restored exactly: what ``plic decode``
    and PLIC Reconstruct return."""
    images = generate(pipe, parts, settings, on_step)
    return [restore_salient(rgb, p.salient_pixels, p.salient_mask) for rgb, p in zip(images, parts)]


def generate(pipe, parts: Sequence[Unpacked], settings: DecodeSettings = DecodeSettings(),
             on_step: StepCallback | None = None) -> list[np.ndarray]:
    """Run ``pipe`` (a ControlNet inpaint pipeline with the two ControlNets) on ``parts`` as one
    batch, each with its own seed and negative prompt: one RGB uint8 image per part at the
    working size, salient pixels not yet restored. The parts must share a :func:`batch_key`."""
    import torch

    chosen = [settings.resolve(unpacked.decode_hints) for unpacked in parts]
    if len({_resolved_key(unpacked, c) for unpacked, c in zip(parts, chosen)}) != 1:
        raise PlicInputError("files decoded as one batch must share the working size, steps, "
                             "ControlNet scale and scheduler; decode them separately")
    first, steps = parts[0], chosen[0].steps
    size = run_size(first.width, first.height)
    pipe.scheduler = make_scheduler(chosen[0].scheduler, pipe.scheduler.config)
    if settings.vae_tiling:
        pipe.vae.enable_tiling()
    else:
        pipe.vae.disable_tiling()

    def step_end(pipe, step, timestep, tensors):
        if on_step is not None:
            on_step(step + 1, steps)
        return {}

    with _quiet(type(pipe).__module__):
        result = pipe(
            prompt=[p.prompt for p in parts], negative_prompt=[c.negative_prompt for c in chosen],
            **pipeline_inputs(parts, size), width=size[0], height=size[1], strength=1.0,
            num_inference_steps=steps, guidance_scale=chosen[0].guidance_scale,
            controlnet_conditioning_scale=[chosen[0].controlnet_scale] * 2,
            generator=[torch.Generator("cpu").manual_seed(c.seed) for c in chosen],
            callback_on_step_end=step_end, output_type="np")
    images = []
    for image in result.images:
        rgb = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        images.append(resize(rgb, (first.width, first.height)))  # Lanczos, no-op at size
    return images


@contextlib.contextmanager
def _quiet(logger_name: str):
    """Errors only from ``logger_name`` meanwhile: diffusers warns that the "conditionings will
    be fixed across the prompts" whenever a MultiControlNet pipeline gets a list of prompts,
    which is wrong here (every control image is batched with its prompt)."""
    logger = logging.getLogger(logger_name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class Reconstructor:
    """Decode unpacked ``.plic`` files with one cached pipeline."""

    def __init__(self, paths: ModelPaths, options: LoadOptions = LoadOptions()):
        self.paths = paths
        self.options = options

    @property
    def pipeline(self):
        return cached_pipeline(self.paths, self.options)

    def reconstruct(self, unpacked: Unpacked, settings: DecodeSettings = DecodeSettings(),
                    on_step: StepCallback | None = None) -> np.ndarray:
        """RGB uint8 image of the working size with the salient pixels restored exactly."""
        (rgb,) = self.reconstruct_batch([unpacked], settings, on_step)
        return rgb

    def reconstruct_batch(self, parts: Sequence[Unpacked], settings: DecodeSettings = DecodeSettings(),
                          on_step: StepCallback | None = None) -> list[np.ndarray]:
        """:meth:`reconstruct` for ``parts`` decoded in one pipeline call (see :func:`batches`)."""
        return decode(self.pipeline, parts, settings, on_step)
