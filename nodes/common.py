"""What every PLIC node shares: ComfyUI's optional modules, tensor <-> numpy conversion, batches,
progress and the custom socket types. Nothing here imports ComfyUI at module level, so the pack
imports (and its tests run) without ComfyUI."""

from __future__ import annotations

import functools
import importlib
import math
import os
from pathlib import Path
from typing import Callable, Iterable, TypeVar

import numpy as np

from plic import model_files
from plic.errors import PlicInputError

CATEGORY = "PLIC"

# Custom socket types passed between PLIC nodes; values are lists with one item per image.
EDGES = "PLIC_EDGES"
PALETTE = "PLIC_PALETTE"
SALIENT = "PLIC_SALIENT"
PAYLOAD = "PLIC_PAYLOAD"
PIPELINE = "PLIC_PIPELINE"

T = TypeVar("T")
R = TypeVar("R")


def comfy_module(name: str):
    """``folder_paths``, ``comfy.utils``, ``comfy.model_management``... or None outside ComfyUI."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def comfy_device() -> str:
    """The device ComfyUI computes on, or "auto" outside ComfyUI."""
    management = comfy_module("comfy.model_management")
    return str(management.get_torch_device()) if management is not None else "auto"


def comfy_model_dirs(key: str, subfolder: str | None = None) -> list[Path] | None:
    """ComfyUI's folders for the model kind ``key`` (first registered as models/<subfolder or
    key> when ComfyUI does not know it yet, so extra_model_paths.yaml can add more); None
    outside ComfyUI."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is None:
        return None
    if key not in folder_paths.folder_names_and_paths:
        folder_paths.add_model_folder_path(key, str(Path(folder_paths.models_dir) / (subfolder or key)))
    return [Path(p) for p in folder_paths.get_folder_paths(key)]


def model_dirs(key: str, subfolder: str | None = None) -> list[Path]:
    """The folders to search for the model kind ``key``: ComfyUI's (:func:`comfy_model_dirs`),
    outside ComfyUI ``<subfolder or key>`` under $PLIC_MODELS_DIR
    (plic.model_files.search_dirs)."""
    dirs = comfy_model_dirs(key, subfolder)
    return model_files.search_dirs(subfolder or key) if dirs is None else dirs


def image_to_rgb_list(image) -> list[np.ndarray]:
    """ComfyUI IMAGE (float tensor [B,H,W,C] in 0..1) to a list of RGB uint8 arrays."""
    array = image.detach().cpu().float().numpy() if hasattr(image, "detach") else np.asarray(image)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise PlicInputError(f"expected an IMAGE batch [B,H,W,C], got shape {tuple(array.shape)}")
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    rgb = np.clip(np.rint(array[..., :3] * 255.0), 0, 255).astype(np.uint8)
    return [np.ascontiguousarray(item) for item in rgb]


def padded_to_one_size(images: list[np.ndarray], fill: int = 0) -> list[np.ndarray]:
    """RGB pictures padded with ``fill`` on the right and below to the largest one (an IMAGE
    batch holds one size)."""
    height, width = (max(image.shape[i] for image in images) for i in (0, 1))
    return [np.pad(image, ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0)), constant_values=fill)
            for image in images]


def rgb_list_to_image(images: Iterable[np.ndarray]):
    """List of RGB (H,W,3) or gray (H,W) uint8/float arrays of one size to an IMAGE tensor."""
    import torch

    batch = []
    for item in images:
        item = np.asarray(item)
        if item.ndim == 2:
            item = np.repeat(item[..., None], 3, axis=-1)
        batch.append(item.astype(np.float32) / 255.0 if item.dtype == np.uint8 else item.astype(np.float32))
    return torch.from_numpy(np.stack(batch))


def mask_to_list(mask, count: int) -> list[np.ndarray]:
    """ComfyUI MASK ([B,H,W] or [H,W], 0..1) to ``count`` bool arrays; a single mask is
    repeated for every image of the batch."""
    array = mask.detach().cpu().float().numpy() if hasattr(mask, "detach") else np.asarray(mask, dtype=np.float32)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3:
        raise PlicInputError(f"expected a MASK [B,H,W], got shape {tuple(array.shape)}")
    check_batch(array.shape[0], count, "masks")
    return [array[min(i, array.shape[0] - 1)] > 0.5 for i in range(count)]


def check_batch(have: int, count: int, what: str, node: str = "") -> None:
    """Refuse ``have`` items of ``what`` for a batch of ``count`` images unless one item serves
    every image or there is one per image. ``node`` (e.g. "PLIC Pack") starts the message."""
    if have not in (1, count):
        raise PlicInputError(f"{node + ': ' if node else ''}{have} {what} for {count} images; give "
                             "one for all of them or one per image, from the same image batch")


def per_image(value, count: int, what: str, node: str) -> list:
    """``value`` as one item per image of a batch of ``count`` for ``node``: None applies to
    every image; a list must hold one item per image (or a single item for all)."""
    if value is None:
        return [value] * count
    items = list(value)
    check_batch(len(items), count, what, node)
    return items * count if len(items) == 1 else items


def masks_to_tensor(masks: Iterable[np.ndarray]):
    """List of (H,W) bool/0..1 arrays to a MASK tensor [B,H,W] float."""
    import torch

    return torch.from_numpy(np.stack([np.asarray(m, dtype=np.float32) for m in masks]))


def check_one_size(parts, node: str, verb: str) -> None:
    """Refuse an empty batch, and unpacked files (anything with ``width`` and ``height``) of
    different working sizes: one IMAGE batch holds one size. ``verb`` says what to do with them
    one at a time."""
    if not parts:
        raise PlicInputError(f"{node}: the payload is empty; connect PLIC Load or PLIC Pack")
    sizes = sorted({(part.width, part.height) for part in parts})
    if len(sizes) > 1:
        listed = ", ".join(f"{width}x{height}" for width, height in sizes)
        raise PlicInputError(f"{node}: the batch mixes sizes ({listed}); {verb} such files one at "
                             "a time")


def map_batch(items: list[T], fn: Callable[[T], R]) -> list[R]:
    """Apply ``fn`` to every item with ComfyUI's progress bar when it is present."""
    utils = comfy_module("comfy.utils")
    bar = utils.ProgressBar(len(items)) if utils is not None and len(items) > 1 else None
    out = []
    for item in items:
        out.append(fn(item))
        if bar is not None:
            bar.update(1)
    return out


def comfy_directory(kind: str) -> Path:
    """ComfyUI's ``"input"``, ``"output"`` or ``"temp"`` folder; outside ComfyUI the folder named
    by PLIC_INPUT_DIR / PLIC_OUTPUT_DIR / PLIC_TEMP_DIR, else ``input/``, ``output/`` or ``temp/``
    of the current directory."""
    folder_paths = comfy_module("folder_paths")
    if folder_paths is not None:
        return Path(getattr(folder_paths, f"get_{kind}_directory")())
    return Path(os.environ.get(f"PLIC_{kind.upper()}_DIR") or Path.cwd() / kind)



def guard_inputs(node_class: type, title: str) -> type:
    """Make ``node_class`` check its inputs before it runs (:func:`check_inputs`), whatever
    reaches it: ComfyUI's own range check lets NaN through (every comparison with it is
    false), and a linked input is never checked at all. Returns the class."""
    method = getattr(node_class, node_class.FUNCTION)

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        check_inputs(node_class, title, kwargs)
        return method(self, *args, **kwargs)

    setattr(node_class, node_class.FUNCTION, checked)
    return node_class


def check_inputs(node_class: type, title: str, values: dict) -> None:
    """PlicInputError naming ``title``, the input and what it takes, for a FLOAT that is not a
    finite number within its declared min..max, an INT outside them, or a STRING that cannot
    be written as UTF-8 or holds a NUL character."""
    for name, (kind, spec) in _typed_inputs(node_class).items():
        if name not in values:
            continue
        value = values[name]
        if kind in ("FLOAT", "INT") and isinstance(value, (int, float)) and not isinstance(value, bool):
            low, high = spec.get("min", -math.inf), spec.get("max", math.inf)
            if not (math.isfinite(value) and low <= value <= high):
                raise PlicInputError(f"{title}: input {name!r} is {value}; it must be a number in "
                                     f"{low:g}..{high:g}")
        elif kind == "STRING" and isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise PlicInputError(f"{title}: input {name!r} holds text that is not valid Unicode "
                                     "(a lone surrogate); retype it") from None
            if "\0" in value:
                raise PlicInputError(f"{title}: input {name!r} holds a NUL character; remove it")


@functools.lru_cache(maxsize=None)
def _typed_inputs(node_class: type) -> dict[str, tuple[str, dict]]:
    """name -> (FLOAT, INT or STRING, its options) for the inputs ``node_class`` declares,
    read once: these never change, unlike the lists of files some nodes offer."""
    declared = node_class.INPUT_TYPES()
    return {name: (spec[0], spec[1] if len(spec) > 1 else {})
            for group in ("required", "optional") for name, spec in declared.get(group, {}).items()
            if isinstance(spec[0], str) and spec[0] in ("FLOAT", "INT", "STRING")}
