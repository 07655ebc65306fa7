"""LoRAs merged into a loaded decoder: few-step LoRAs (LCM-LoRA, TCD, Hyper-SD) and styles.

A LoRA file is read in either of the two ``.safetensors`` layouts SD1.5 LoRAs are published in:

* kohya / A1111 (what kohya's sd-scripts write, and ComfyUI's LoraLoader reads):
  ``lora_unet_<module path with _>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``, and
  ``lora_te_<module path>...`` for the text encoder;
* diffusers: ``unet.<module path>.lora_A.weight`` / ``.lora_B.weight`` (PEFT, what diffusers'
  ``save_lora_weights`` writes) or ``.lora.down.weight`` / ``.lora.up.weight`` (older), and
  ``text_encoder.<module path>...``.

Each pair is merged into its layer's weight, ``W += weight * alpha / rank * up @ down`` (alpha
defaults to the rank), as ComfyUI's LoraLoader does: the merged decoder runs at the speed of the
plain one. A weight that names no layer of the decoder is an error naming the file, so a LoRA of
another model family is refused rather than half applied.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from plic.errors import ModelNotFoundError, PlicInputError

#: The weight a LoRA is merged with unless told otherwise.
DEFAULT_WEIGHT = 1.0
#: The components a LoRA may change: its key prefix in each layout -> the pipeline attribute.
_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "unet.": "unet",
             "text_encoder.": "text_encoder"}
_DOWN = (".lora_down.weight", ".lora_A.weight", ".lora.down.weight")
_UP = (".lora_up.weight", ".lora_B.weight", ".lora.up.weight")
_ALPHA = ".alpha"
#: transformers 4 named the CLIP text model's layers under ``text_model.``; transformers 5 not.
_TEXT_MODEL = re.compile(r"^text_model[._]")


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file and the weight it is merged with."""

    path: Path
    weight: float = DEFAULT_WEIGHT


def parse(text: str) -> tuple[str, float]:
    """``FILE[:WEIGHT]`` as (name, weight): the part after the last colon is the weight when it
    is a number (so ``C:\\loras\\x.safetensors`` is a name); PlicInputError for a weight that is
    not finite."""
    name, sep, tail = text.rpartition(":")
    if sep:
        try:
            weight = float(tail)
        except ValueError:
            return text, DEFAULT_WEIGHT
        if weight != weight or abs(weight) == float("inf"):
            raise PlicInputError(f"LoRA '{text}': the weight must be a finite number, got '{tail}'")
        return name, weight
    return text, DEFAULT_WEIGHT


def _module_tables(pipe) -> dict[str, tuple[dict, dict]]:
    """Per component: its modules by dotted name and by kohya's underscored name."""
    tables = {}
    for component in set(_PREFIXES.values()):
        model = getattr(pipe, component)
        dotted = {name: module for name, module in model.named_modules() if hasattr(module, "weight")}
        tables[component] = (dotted, {name.replace(".", "_"): module for name, module in dotted.items()})
    return tables


def _split(key: str) -> tuple[str, str, str] | None:
    """(component, module name, part) of a LoRA key, part one of "down", "up", "alpha"."""
    prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
    if prefix is None:
        return None
    rest = key[len(prefix):]
    for part, endings in (("down", _DOWN), ("up", _UP), ("alpha", (_ALPHA,))):
        ending = next((e for e in endings if rest.endswith(e)), None)
        if ending is not None:
            return _PREFIXES[prefix], rest[:-len(ending)], part
    return None


def _find(tables, component: str, name: str):
    dotted, underscored = tables[component]
    for candidate in (name, _TEXT_MODEL.sub("", name)):
        module = dotted.get(candidate) or underscored.get(candidate)
        if module is not None:
            return module
    return None


def merge(pipe, spec: LoraSpec) -> int:
    """Merge the LoRA ``spec`` into ``pipe``'s UNet and text encoder; the number of layers
    changed. ModelNotFoundError for a file that cannot be read, PlicInputError for one that is
    not an SD1.5-layout LoRA of this decoder."""
    import torch
    from safetensors.torch import load_file

    try:
        state = load_file(str(spec.path))
    except (OSError, ValueError, RuntimeError) as exc:  # safetensors raises its own error types too
        raise ModelNotFoundError(f"The LoRA {spec.path} could not be read ({exc}); it must be a "
                                 ".safetensors LoRA file") from None
    pairs: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        split = _split(key)
        if split is None:
            raise PlicInputError(f"The LoRA {spec.path} holds '{key}', which is neither the kohya "
                                 "(lora_unet_..., lora_te_...) nor the diffusers (unet..., "
                                 "text_encoder...) layout of an SD1.5 LoRA")
        component, module, part = split
        pairs.setdefault((component, module), {})[part] = tensor
    tables = _module_tables(pipe)
    updates = []
    for (component, name), parts in pairs.items():
        layer = _find(tables, component, name)
        if layer is None or "down" not in parts or "up" not in parts:
            raise PlicInputError(
                f"The LoRA {spec.path} changes '{name}', which is no layer of this decoder's "
                f"{component} (or lacks its down or up weight): it is a LoRA of another model family")
        updates.append((layer, _delta(parts, layer.weight.shape, spec, name)))
    with torch.no_grad():
        for layer, delta in updates:
            layer.weight += delta.to(layer.weight.device, layer.weight.dtype)
    return len(updates)


def _delta(parts: dict, shape, spec: LoraSpec, name: str):
    """``weight * alpha / rank * up @ down`` in float32, shaped as the layer's weight (linear
    and 1x1 layers alike; a convolution's down weight keeps its kernel)."""
    down, up = parts["down"].float(), parts["up"].float()
    rank = down.shape[0]
    alpha = float(parts["alpha"]) if "alpha" in parts else rank
    delta = up.flatten(1) @ down.flatten(1)
    if delta.numel() != shape.numel():
        raise PlicInputError(f"The LoRA {spec.path} changes '{name}' by {tuple(delta.shape)}, which "
                             f"does not fit its {tuple(shape)}: it is a LoRA of another model family")
    return (spec.weight * alpha / rank) * delta.reshape(shape)
