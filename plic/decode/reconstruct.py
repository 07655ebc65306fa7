"""Reconstruction: SD1.5 + an inpaint ControlNet + a color/canny ControlNet, as the reference did.

The reference (shared reference, "Decoding") ran diffusers' ``StableDiffusionControlNetInpaintPipeline``
with ``control_v11p_sd15_inpaint`` and a color+canny ControlNet, UniPC, 60 steps, ControlNet scale
1.0, a fixed negative prompt and a fixed seed. :class:`Reconstructor` does the same from the
models on disk (offline, see :mod:`plic.model_files`), then puts the stored salient pixels back
exactly. What the decoder is made of (pipeline class, ControlNets and their images, default
sampler, steps, guidance and negative prompt) is its family's record (:mod:`plic.decode.families`;
SD1.5 by default). One loaded pipeline is cached: loading other models, or the same ones with
other :class:`LoadOptions`, replaces it.

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
* ``ModelPaths.loras`` with the few-step samplers ``lcm`` and ``tcd``: a consistency LoRA
  (LCM-LoRA, TCD, Hyper-SD) merged into the UNet (:mod:`plic.decode.lora`) makes 4-8 steps enough, and
  their guidance of 1 runs the UNet once per step instead of twice. A different image again; how
  far it is from the reference's can only be judged with the real weights (``plic eval``).
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

from plic.codec.fileformat import SCHEDULERS, check_decode_settings
from plic.codec.pack import DEFAULT_DECODE_SETTINGS, Unpacked, non_default_settings
from plic.decode import families, lora
from plic.decode.families import Family
from plic.deps import require, resolve_device
from plic.errors import ModelNotFoundError, PlicInputError
from plic.image import resize

log = logging.getLogger(__name__)

#: Classifier-free guidance of the reference (diffusers' default; the notebooks left it alone).
DEFAULT_GUIDANCE = families.DEFAULT.guidance
#: The largest classifier-free guidance scale taken (ComfyUI's cfg goes as far).
MAX_GUIDANCE = 100.0
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
#: ``torch.compile`` modes for :attr:`LoadOptions.compile` ("off": eager PyTorch).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune-no-cudagraphs")
#: Scheduler settings that describe the model's noise schedule (kept when switching samplers).
_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "prediction_type", "timestep_spacing", "steps_offset")

#: Called after every denoising step with (steps done, total steps); may raise to cancel.
StepCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Sampler:
    """What a few-step sampler's LoRAs' authors document: steps, classifier-free guidance (1:
    none, one UNet pass per step) and the scheduler's ``eta`` (TCD's gamma)."""

    steps: int
    guidance: float
    eta: float = 0.0
    max_steps: int = 50  # the LCM and TCD schedules' original_inference_steps


#: Defaults of the few-step samplers (LCM-LoRA: 4 steps, guidance 1; TCD: 4 steps, gamma 0.3),
#: used where neither the user nor the file sets steps or guidance.
FEW_STEP_SAMPLERS = {"lcm": Sampler(steps=4, guidance=1.0), "tcd": Sampler(steps=4, guidance=1.0, eta=0.3)}


@dataclass(frozen=True)
class ModelPaths:
    """Resolved model locations (see :func:`plic.model_files.find_pipeline` / ``find_controlnet`` /
    ``find_lora``): the pipeline folder or single-file checkpoint, the family's ControlNets in
    its order, the LoRAs merged into it, and for a single file ``base``: a diffusers folder of
    the family whose configurations, tokenizer and scheduler it is read with (its weights are
    not read)."""

    pipeline: Path
    controlnets: tuple[Path, ...]
    family: str = families.DEFAULT.name
    loras: tuple[lora.LoraSpec, ...] = ()
    base: Path | None = None

    def files(self) -> list[Path]:
        """Every file or folder whose weights the decoder is read from."""
        return [self.pipeline, *self.controlnets, *(spec.path for spec in self.loras)]


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


def _first(*values):
    """The first of ``values`` that is not None."""
    return next(value for value in values if value is not None)


@dataclass(frozen=True)
class DecodeSettings:
    """Sampling knobs; None takes the value from the file's decode settings, else from the few-step
    sampler's defaults (:data:`FEW_STEP_SAMPLERS`: steps and guidance), else from the decoder
    family's record (the reference's for SD1.5). ``scheduler`` is one of :data:`SCHEDULERS`;
    ``vae_tiling`` decodes in tiles."""

    steps: int | None = None
    seed: int | None = None
    negative_prompt: str | None = None
    controlnet_scale: float | None = None
    guidance_scale: float | None = None
    scheduler: str | None = None
    vae_tiling: bool = False

    def resolve(self, stored: dict, family: Family = families.DEFAULT) -> "DecodeSettings":
        """Every None filled: from what ``stored`` says (a setting equal to the format's default says
        nothing, as encoders never write one), the sampler's and ``family``'s defaults."""
        said = non_default_settings(stored or {})
        base = {**DEFAULT_DECODE_SETTINGS, **family.defaults}
        scheduler = _first(self.scheduler, said.get("scheduler"), base["scheduler"])
        sampler = FEW_STEP_SAMPLERS.get(scheduler)
        settings = DecodeSettings(
            steps=int(_first(self.steps, said.get("steps"), sampler and sampler.steps, base["steps"])),
            seed=int(_first(self.seed, said.get("seed"), base["seed"])),
            negative_prompt=str(_first(self.negative_prompt, said.get("negative_prompt"),
                                       base["negative_prompt"])),
            controlnet_scale=float(_first(self.controlnet_scale, said.get("controlnet_scale"),
                                          base["controlnet_scale"])),
            guidance_scale=float(_first(self.guidance_scale, sampler and sampler.guidance, family.guidance)),
            scheduler=str(scheduler),
            vae_tiling=bool(self.vae_tiling),
        )
        try:
            check_decode_settings({key: getattr(settings, key) for key in DEFAULT_DECODE_SETTINGS},
                               "decode setting")
        except ValueError as exc:
            raise PlicInputError(str(exc)) from None
        if not 0 <= settings.guidance_scale <= MAX_GUIDANCE:  # False for NaN
            raise PlicInputError(f"guidance scale must be a number in 0..{MAX_GUIDANCE:g}, got "
                                 f"{settings.guidance_scale}")
        if sampler and settings.steps > sampler.max_steps:
            raise PlicInputError(f"the {scheduler} sampler takes at most {sampler.max_steps} steps "
                                 f"(its schedule's), got {settings.steps}; give fewer steps (4-8)")
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


def _load_controlnet(path: Path, dtype, family: Family):
    """A diffusers ControlNet folder, or a single checkpoint converted with the family's config
    (or with ``<file stem>.json`` beside the file when it has another architecture)."""
    diffusers = require("diffusers", package="diffusers", purpose="Reconstruction")
    if path.is_dir():
        return diffusers.ControlNetModel.from_pretrained(str(path), torch_dtype=dtype,
                                                         local_files_only=True)
    sibling = path.with_suffix(".json")
    config = (json.loads(sibling.read_text(encoding="utf-8")) if sibling.is_file()
              else family.configs()["controlnet"])
    with tempfile.TemporaryDirectory(prefix="plic-controlnet-") as folder:
        (Path(folder) / "config.json").write_text(json.dumps(config), encoding="utf-8")
        return diffusers.ControlNetModel.from_single_file(str(path), config=folder, torch_dtype=dtype,
                                                          local_files_only=True)


def load_pipeline(paths: ModelPaths, options: LoadOptions = LoadOptions()):
    """Build the family's pipeline from disk (no network): its ControlNets, the LoRAs merged in,
    its default scheduler, no safety checker. Failures to read a model raise ModelNotFoundError
    naming the folder."""
    diffusers = require("diffusers", package="diffusers", purpose="Reconstruction")
    family = families.get(paths.family)
    device = resolve_device(options.device)
    dtype = resolve_dtype(options.precision, device)
    try:
        with warnings.catch_warnings():
            # diffusers >= 0.36 renamed torch_dtype to dtype; the old name works in every version
            warnings.filterwarnings("ignore", message=".*torch_dtype.*", category=FutureWarning)
            controlnet = diffusers.MultiControlNetModel(
                [_load_controlnet(Path(path), dtype, family) for path in paths.controlnets])
            pipeline_class = getattr(diffusers, family.pipeline_class)
            common = dict(controlnet=controlnet, torch_dtype=dtype, local_files_only=True,
                          safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            if Path(paths.pipeline).is_file():  # a fine-tune's checkpoint, in the A1111 layout
                pipe = pipeline_class.from_single_file(str(paths.pipeline), config=str(paths.base), **common)
            else:
                pipe = pipeline_class.from_pretrained(str(paths.pipeline), **common)
    except (OSError, ValueError) as exc:
        raise ModelNotFoundError(
            f"Could not load the decoder models ({', '.join(map(str, paths.files()))}): {exc}") from exc
    for spec in paths.loras:
        lora.merge(pipe, spec)
    pipe.scheduler = make_scheduler(family.defaults["scheduler"], pipe.scheduler.config)
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
    if name == "lcm":
        return diffusers.LCMScheduler.from_config(schedule)
    if name == "tcd":
        return diffusers.TCDScheduler.from_config(schedule)
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


def run_size(width: int, height: int, family: Family = families.DEFAULT) -> tuple[int, int]:
    """The size the family runs at: each side rounded to the nearest multiple of its
    ``size_multiple`` (8 for SD1.5, the VAE's downscale factor; at least one multiple)."""
    multiple = family.size_multiple

    def snap(side: int) -> int:
        return max(multiple, int(round(side / multiple)) * multiple)
    return snap(width), snap(height)


def _nearest(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W[, C]) array to ``size`` = (w, h) with nearest neighbour (keeps hint
    values such as -1 and white edge pixels exact)."""
    if (array.shape[1], array.shape[0]) == size:
        return array
    rows = (np.arange(size[1]) * array.shape[0] // size[1])
    cols = (np.arange(size[0]) * array.shape[1] // size[0])
    return array[rows][:, cols]


def pipeline_inputs(parts: Sequence[Unpacked], size: tuple[int, int],
                    family: Family = families.DEFAULT) -> dict:
    """The pipeline's image arguments for ``parts`` (one batch) at ``size``: the init images
    (salient pixels over the upscaled palette), the masks of pixels to regenerate (white) and
    one tensor per ControlNet of ``family``, each made by its record (for SD1.5 the inpaint
    hint with -1 to regenerate; the color+canny hint scaled to 0..1, as diffusers does with an
    image)."""
    import torch

    def stacked(arrays) -> "torch.Tensor":
        return torch.from_numpy(np.ascontiguousarray(np.stack(arrays).transpose(0, 3, 1, 2)))

    images = [Image.fromarray(_nearest(unpacked.init_image(), size)) for unpacked in parts]
    masks = [Image.fromarray(_nearest(np.where(unpacked.keep_mask(), 0, 255).astype(np.uint8), size))
             for unpacked in parts]
    controls = [stacked([_nearest(control.image(unpacked), size) for unpacked in parts])
                for control in family.controls]
    return {"image": images, "mask_image": masks, "control_image": controls}


def batch_key(unpacked: Unpacked, settings: DecodeSettings, family: Family = families.DEFAULT) -> tuple:
    """What files decoded in one call must share: working size, steps, ControlNet scale and
    sampler (seeds and negative prompts may differ)."""
    return _resolved_key(unpacked, settings.resolve(unpacked.decode_settings, family))


def _resolved_key(unpacked: Unpacked, chosen: DecodeSettings) -> tuple:
    """:func:`batch_key` from settings already resolved for ``unpacked``."""
    return (unpacked.width, unpacked.height), chosen.steps, chosen.controlnet_scale, chosen.scheduler


def batches(parts: Sequence[Unpacked], settings: DecodeSettings, batch_size: int,
            family: Family = families.DEFAULT) -> list[list[Unpacked]]:
    """``parts`` in order, cut into runs of at most ``batch_size`` neighbours that share a
    :func:`batch_key` (each run is one :func:`generate` call)."""
    if batch_size < 1:
        raise PlicInputError(f"batch size must be at least 1, got {batch_size}")
    groups: list[list[Unpacked]] = []
    for unpacked in parts:
        if (groups and len(groups[-1]) < batch_size
                and batch_key(groups[-1][0], settings, family) == batch_key(unpacked, settings, family)):
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
           on_step: StepCallback | None = None, family: Family = families.DEFAULT) -> list[np.ndarray]:
    """:func:`generate`, then each part's salient pixels restored exactly: what ``plic decode``
    and PLIC Reconstruct return."""
    images = generate(pipe, parts, settings, on_step, family)
    return [restore_salient(rgb, p.salient_pixels, p.salient_mask) for rgb, p in zip(images, parts)]


def generate(pipe, parts: Sequence[Unpacked], settings: DecodeSettings = DecodeSettings(),
             on_step: StepCallback | None = None, family: Family = families.DEFAULT) -> list[np.ndarray]:
    """Run ``pipe`` (``family``'s ControlNet inpaint pipeline with its ControlNets) on ``parts``
    as one batch, each with its own seed and negative prompt: one RGB uint8 image per part at
    the working size, salient pixels not yet restored. The parts must share a :func:`batch_key`.
    A part whose decode settings name another family is decoded all the same, with a warning."""
    import torch

    for unpacked in parts:
        families.check_family(unpacked.decode_settings, family)
    chosen = [settings.resolve(unpacked.decode_settings, family) for unpacked in parts]
    if len({_resolved_key(unpacked, c) for unpacked, c in zip(parts, chosen)}) != 1:
        raise PlicInputError("files decoded as one batch must share the working size, steps, "
                             "ControlNet scale and scheduler; decode them separately")
    first, steps = parts[0], chosen[0].steps
    size = run_size(first.width, first.height, family)
    sampler = FEW_STEP_SAMPLERS.get(chosen[0].scheduler)
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
            **pipeline_inputs(parts, size, family), width=size[0], height=size[1], strength=1.0,
            num_inference_steps=steps, guidance_scale=chosen[0].guidance_scale,
            eta=sampler.eta if sampler else 0.0,
            controlnet_conditioning_scale=[chosen[0].controlnet_scale] * len(family.controls),
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
        self.family = families.get(paths.family)

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
        return decode(self.pipeline, parts, settings, on_step, self.family)
