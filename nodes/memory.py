"""PLIC's models under ComfyUI's model management (comfy.model_management).

- Before a PLIC model is loaded, ComfyUI is asked for the memory it needs (``make_room``), and
  before every run for the model plus the memory of inference (``load_for_run``): ComfyUI then
  offloads only as many of its own models as it must, least recently used first, instead of all.
- Every loaded PLIC model is registered as a ``comfy.model_patcher.ModelPatcher`` and loaded with
  ``load_models_gpu``, so ComfyUI counts it among its loaded models.
- When ComfyUI unloads a PLIC model (the "unload models" and "free model and node cache" buttons,
  i.e. POST /free, an out-of-memory error, --disable-smart-memory, or room for its own models),
  the patcher's ``on_detach_after`` callback drops PLIC's cache of it (the decoder pipeline, the
  local captioner, Grounding DINO + SAM): the next run loads it again.

docs/comfyui_node_api.md says which parts of ComfyUI's API this relies on. Outside ComfyUI every
function here does nothing, so the nodes run (and are tested) without it.
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
    ModelPatcher over them, already on ``device``, that calls ``release`` (which drops PLIC's
    cache of the model) when ComfyUI unloads it."""

    def __init__(self, name: str, modules: dict, device: str, release: Callable[[], None]):
        import torch
        from comfy.model_patcher import ModelPatcher
        from comfy.patcher_extension import CallbacksMP

        management = _management()
        holder = torch.nn.ModuleDict(modules)
        self.patcher = ModelPatcher(holder, load_device=torch.device(device),
                                    offload_device=management.unet_offload_device())
        # the modules are on ``device`` already: tell ComfyUI's bookkeeping so
        holder.device = torch.device(device)
        holder.model_loaded_weight_memory = self.patcher.model_size()
        self.patcher.add_callback(CallbacksMP.ON_DETACH, _release_when_unloaded(name, release))

    def load_for_run(self, inference_bytes: int = 0) -> None:
        """Make room for the run and move the modules back to the device if ComfyUI partly
        offloaded them; a full load (diffusers modules cannot run partly offloaded)."""
        _management().load_models_gpu([self.patcher], memory_required=inference_bytes,
                                      force_full_load=True)


#: The patchers of PLIC's models when ComfyUI last unloaded one, kept alive until the next
#: registration: a patcher that died inside ComfyUI's free_memory would run cleanup_models (the
#: finaliser of the patcher's module) while free_memory still walks current_loaded_models by
#: index, and releasing one cache may drop more than one model.
_UNLOADED: list = []


def _release_when_unloaded(name: str, release: Callable[[], None]):
    """The patcher's detach callback. ComfyUI detaches a patcher with ``unpatch_all=True`` only
    when it unloads the model (``LoadedModel.model_unload``, which then drops it from
    ``current_loaded_models``); with ``unpatch_all=False`` when it loads the same model again
    (``load_models_gpu``) or the patcher is garbage collected, which keep PLIC's cache as it is.
    Holds no reference to the model, so that PLIC's cache alone keeps it alive."""

    def on_detach(patcher, unpatch_all: bool) -> None:
        if not unpatch_all:
            return
        registered = [managed.patcher for managed in _MANAGED.values()]
        _UNLOADED.extend(registered)
        release()
        still = {id(managed.patcher) for managed in _MANAGED.values()}
        for dropped in (p for p in registered if id(p) not in still):
            dropped.model.clear()  # its modules go with PLIC's cache, the empty patcher stays
        log.info("PLIC: released %s (ComfyUI unloaded it)", name)

    return on_detach


#: One ManagedModel per loaded object (a diffusers pipeline, a captioner...), dropped with it.
_MANAGED: "weakref.WeakKeyDictionary[object, ManagedModel]" = weakref.WeakKeyDictionary()


def manage(owner, modules: Callable[[], dict], device: str,
           release: Callable[[], None]) -> ManagedModel | None:
    """The ManagedModel of ``owner`` (registered on first use, with the modules ``modules()``
    returns; ``release`` drops PLIC's cache of ``owner``); None outside ComfyUI."""
    if _management() is None:
        return None
    _UNLOADED.clear()  # nodes run on the thread that unloads: no free_memory is under way
    if owner not in _MANAGED:
        name = type(owner).__name__
        _MANAGED[owner] = ManagedModel(name, modules(), device, release)
        log.info("PLIC: %s registered with ComfyUI's model management (%.1f MB on %s)",
                 name, _MANAGED[owner].patcher.model_size() / 2**20, device)
    return _MANAGED[owner]


def use(owner, modules: Callable[[], dict], device: str, release: Callable[[], None]) -> None:
    """Before a run: ``owner``'s modules registered with ComfyUI (see :func:`manage`) and on
    ``device``, with room to run; does nothing outside ComfyUI."""
    managed = manage(owner, modules, device, release)
    if managed is not None:
        managed.load_for_run()


def pipeline_modules(pipe) -> dict:
    """The torch modules of a diffusers pipeline (UNet, ControlNets, VAE, text encoder)."""
    import torch

    return {name: part for name, part in pipe.components.items() if isinstance(part, torch.nn.Module)}
