"""PLIC's models under ComfyUI's model management (comfy.model_management).

- Before a PLIC model is loaded, ComfyUI is asked for the memory it needs (``make_room``), and
  before every run for the model plus the memory of inference (``load_for_run``): ComfyUI then
  offloads only as many of its own models as it must, least recently used first, instead of all.
- Every loaded PLIC model is registered as a ``comfy.model_patcher.ModelPatcher``, so ComfyUI
  counts it among the loaded models and may move it to its offload device (RAM) when its own
  models need the room; ``load_for_run`` brings it back.
- When ComfyUI unloads everything (the "free model and node cache" button / POST /free, an
  out-of-memory error, --disable-smart-memory), PLIC's caches are dropped too: the decoder
  pipeline, the local captioner and Grounding DINO + SAM.

Outside ComfyUI every function here does nothing, so the nodes run (and are tested) without it.
"""

from __future__ import annotations

import logging
import weakref
from pathlib import Path
from typing import Callable, Iterable

from .common import comfy_module

log = logging.getLogger(__name__)

#: Weight files whose sizes estimate a model's memory before it is loaded.
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")
#: Marks ComfyUI's unload_all_models once PLIC's release is chained to it.
_HOOKED = "_plic_releases_caches"


def _management():
    return comfy_module("comfy.model_management")


def _on_accelerator(device: str) -> bool:
    return not str(device).startswith("cpu") and device != "auto"


def weight_bytes(paths: Iterable[Path]) -> int:
    """Bytes of the weight files in ``paths`` (files or folders): what loading them will take,
    at most (a half-precision load takes half)."""
    total = 0
    for path in map(Path, paths):
        files = [path] if path.is_file() else path.rglob("*")
        total += sum(f.stat().st_size for f in files if f.suffix in WEIGHT_SUFFIXES and f.is_file())
    return total


def make_room(needed: int, device: str) -> None:
    """Ask ComfyUI to free ``needed`` bytes (plus its inference reserve) on ``device`` by
    offloading as few of its loaded models as it can; on the CPU ComfyUI frees nothing."""
    management = _management()
    if management is None or not _on_accelerator(device):
        return
    import torch

    management.free_memory(needed + management.minimum_inference_memory(), torch.device(device))


class ManagedModel:
    """The torch modules of one loaded PLIC model, as ComfyUI's memory manager sees them: a
    ModelPatcher over them, already on ``device``."""

    def __init__(self, modules: dict, device: str):
        import torch
        from comfy.model_patcher import ModelPatcher

        management = _management()
        holder = torch.nn.ModuleDict(modules)
        self.patcher = ModelPatcher(holder, load_device=torch.device(device),
                                    offload_device=management.unet_offload_device())
        # the modules are on ``device`` already: tell ComfyUI's bookkeeping so
        holder.device = torch.device(device)
        holder.model_loaded_weight_memory = self.patcher.model_size()

    def load_for_run(self, inference_bytes: int = 0) -> None:
        """Make room for the run and move the modules back to the device if ComfyUI offloaded
        them; a full load (diffusers modules cannot run partly offloaded)."""
        _management().load_models_gpu([self.patcher], memory_required=inference_bytes,
                                      force_full_load=True)


#: One ManagedModel per loaded object (a diffusers pipeline, a captioner...), dropped with it.
_MANAGED: "weakref.WeakKeyDictionary[object, ManagedModel]" = weakref.WeakKeyDictionary()


def manage(owner, modules: Callable[[], dict], device: str) -> ManagedModel | None:
    """The ManagedModel of ``owner`` (registered on first use, with the modules ``modules()``
    returns); None outside ComfyUI."""
    if _management() is None:
        return None
    if owner not in _MANAGED:
        _MANAGED[owner] = ManagedModel(modules(), device)
        log.info("PLIC: %s registered with ComfyUI's model management (%.1f MB on %s)",
                 type(owner).__name__, _MANAGED[owner].patcher.model_size() / 2**20, device)
    return _MANAGED[owner]


def use(owner, modules: Callable[[], dict], device: str) -> None:
    """Before a run: ``owner``'s modules registered with ComfyUI (see :func:`manage`) and on
    ``device``, with room to run; does nothing outside ComfyUI."""
    managed = manage(owner, modules, device)
    if managed is not None:
        managed.load_for_run()


def pipeline_modules(pipe) -> dict:
    """The torch modules of a diffusers pipeline (UNet, ControlNets, VAE, text encoder)."""
    import torch

    return {name: part for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)}


def release_caches() -> None:
    """Drop every model PLIC keeps loaded between runs."""
    from plic import caption, grounded_sam
    from plic import reconstruct as core

    caption.release_local_models()
    grounded_sam.release()
    core.release()
    log.info("PLIC: released the decoder, captioner and Grounding DINO/SAM caches")


def chain_release_to_unload_all() -> None:
    """Make ComfyUI's unload_all_models (POST /free, out of memory, --disable-smart-memory)
    drop PLIC's caches as well. Idempotent; does nothing outside ComfyUI."""
    management = _management()
    if management is None or getattr(management.unload_all_models, _HOOKED, False):
        return
    unload_all = management.unload_all_models

    def unload_all_models(*args, **kwargs):
        result = unload_all(*args, **kwargs)
        release_caches()
        return result

    setattr(unload_all_models, _HOOKED, True)
    management.unload_all_models = unload_all_models
