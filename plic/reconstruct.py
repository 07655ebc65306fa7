"""Reconstruction: SD1.5 + an inpaint ControlNet + a color/canny ControlNet, as the reference did.

The reference (shared reference, "Decoding") ran diffusers' ``StableDiffusionControlNetInpaintPipeline``
with ``control_v11p_sd15_inpaint`` and a color+canny ControlNet, UniPC, 60 steps, ControlNet scale
1.0, a fixed negative prompt and a fixed seed. :class:`Reconstructor` does the same from the
models on disk (offline, see :mod:`plic.models`), then puts the stored salient pixels back
exactly. One loaded pipeline is cached: loading other models, or the same ones with another
device, precision or offload, replaces it.
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from .codec import DEFAULT_DECODE_HINTS, Unpacked
from .deps import require, resolve_device
from .errors import ModelNotFoundError, PlicInputError
from .fileformat import MAX_STEPS
from .image import resize
from . import sd15_configs

log = logging.getLogger(__name__)

#: Classifier-free guidance of the reference (diffusers' default; the notebooks left it alone).
DEFAULT_GUIDANCE = 7.5
#: SD1.5 works on multiples of this many pixels (the VAE's downscale factor).
SIZE_MULTIPLE = 8
PRECISIONS = ("auto", "fp32", "fp16", "bf16")

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
    is fp16 on a GPU and fp32 on the CPU (half precision is never used on the CPU)."""

    device: str = "auto"
    precision: str = "auto"
    cpu_offload: bool = False


@dataclass(frozen=True)
class DecodeSettings:
    """Sampling knobs; None takes the value from the file's decode hints (the reference's)."""

    steps: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    controlnet_scale: float | None = None
    guidance_scale: float = DEFAULT_GUIDANCE

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
        )
        if not 1 <= settings.steps <= MAX_STEPS:
            raise PlicInputError(f"steps must be in 1..{MAX_STEPS}, got {settings.steps}")
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
    pipe.scheduler = diffusers.UniPCMultistepScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    if options.cpu_offload and device.startswith("cuda"):
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.to(device)
    return pipe


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


def pipeline_inputs(unpacked: Unpacked, size: tuple[int, int]) -> dict:
    """The pipeline's image arguments at ``size``: the init image (salient pixels over the
    upscaled palette), the mask of pixels to regenerate (white) and the two control images
    (inpaint hint with -1 to regenerate, as a tensor; the color+canny hint)."""
    import torch

    keep = unpacked.keep_mask()
    init = np.where(keep[..., None], unpacked.salient_pixels, unpacked.palette_full)
    hint = _nearest(unpacked.inpaint_hint(), size)
    return {
        "image": Image.fromarray(_nearest(init, size)),
        "mask_image": Image.fromarray(_nearest(np.where(keep, 0, 255).astype(np.uint8), size)),
        "control_image": [torch.from_numpy(np.ascontiguousarray(hint.transpose(2, 0, 1)))[None],
                          Image.fromarray(_nearest(unpacked.color_canny_hint, size))],
    }


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


def generate(pipe, unpacked: Unpacked, settings: DecodeSettings = DecodeSettings(),
             on_step: StepCallback | None = None, count: int = 1) -> list[np.ndarray]:
    """Run ``pipe`` (a ControlNet inpaint pipeline with the two ControlNets) on ``unpacked``:
    ``count`` RGB uint8 images of the working size, salient pixels not yet restored."""
    import torch

    chosen = settings.resolve(unpacked.decode_hints)
    size = run_size(unpacked.width, unpacked.height)

    def step_end(pipe, step, timestep, tensors):
        if on_step is not None:
            on_step(step + 1, chosen.steps)
        return {}

    result = pipe(
        prompt=unpacked.prompt, negative_prompt=chosen.negative_prompt,
        **pipeline_inputs(unpacked, size), width=size[0], height=size[1], strength=1.0,
        num_inference_steps=chosen.steps, guidance_scale=chosen.guidance_scale,
        controlnet_conditioning_scale=[chosen.controlnet_scale] * 2, num_images_per_prompt=count,
        generator=torch.Generator("cpu").manual_seed(chosen.seed),
        callback_on_step_end=step_end, output_type="np")
    images = []
    for image in result.images:
        rgb = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
        images.append(resize(rgb, (unpacked.width, unpacked.height)))  # Lanczos, no-op at size
    return images


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
        (rgb,) = generate(self.pipeline, unpacked, settings, on_step)
        return restore_salient(rgb, unpacked.salient_pixels, unpacked.salient_mask)
