"""Random-weight SD1.5-layout models (and LoRAs): the compute of the real thing without any download.

Used by ``bench/decode_gpu.py`` (full size: the speed is the same as with real weights) and by
the tests (tiny size, saved as a ComfyUI-style ``models/`` tree and loaded back through the very
code path a user's files take). Nothing here is needed to decode with real models, so it lives
beside the benchmarks rather than in the installed ``plic`` library.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from plic.decode import families, sd15_configs
from plic.deps import require

#: CLIP's special tokens; a tokenizer made here puts them first.
SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


@dataclass
class Components:
    """Everything a ``StableDiffusionControlNetInpaintPipeline`` needs, two ControlNets included."""

    unet: object
    controlnets: list
    vae: object
    text_encoder: object
    tokenizer: object
    scheduler: object


def _diffusers():
    return require("diffusers", package="diffusers", purpose="Building SD1.5 models")


def character_vocabulary() -> dict[str, int]:
    """A CLIP BPE vocabulary of single printable ASCII characters (plain and word-final):
    every ASCII prompt tokenizes without merges; anything else becomes the unknown token."""
    chars = [chr(code) for code in range(33, 127)]
    tokens = list(SPECIAL_TOKENS) + chars + [c + "</w>" for c in chars]
    return {token: index for index, token in enumerate(tokens)}


def save_tokenizer(folder: Path) -> Path:
    """Write vocab.json, merges.txt and the tokenizer config of :func:`character_vocabulary`."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(character_vocabulary()), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    start, end = SPECIAL_TOKENS
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": start,
              "eos_token": end, "unk_token": end, "pad_token": end}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return folder


def load_tokenizer(folder: Path):
    """The CLIPTokenizer of a folder written by :func:`save_tokenizer`."""
    transformers = require("transformers", package="transformers", purpose="Building SD1.5 models")
    return transformers.CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)


def build(configs: dict[str, dict], tokenizer, seed: int = 0, device: str = "cpu",
          dtype=None) -> Components:
    """Instantiate every component from ``configs`` (see :mod:`plic.decode.sd15_configs`) with random
    weights drawn from ``seed``, on ``device`` in ``dtype`` (default float32)."""
    import torch

    diffusers = _diffusers()
    transformers = require("transformers", package="transformers", purpose="Building SD1.5 models")
    torch.manual_seed(seed)
    text_config = {k: v for k, v in configs["text_encoder"].items()
                   if k not in ("architectures", "model_type")}

    def place(model):
        model = model.to(device)
        if dtype is not None and dtype != torch.float32:
            model = model.to(dtype)
        return model.eval()

    return Components(
        unet=place(diffusers.UNet2DConditionModel.from_config(configs["unet"])),
        controlnets=[place(diffusers.ControlNetModel.from_config(configs["controlnet"]))
                     for _ in families.SD15.controls],
        vae=place(diffusers.AutoencoderKL.from_config(configs["vae"])),
        text_encoder=place(transformers.CLIPTextModel(transformers.CLIPTextConfig(**text_config))),
        tokenizer=tokenizer,
        scheduler=diffusers.UniPCMultistepScheduler.from_config(configs["scheduler"]),
    )


def build_sd15(folder: Path, *, tiny: bool, seed: int = 0, device: str = "cpu",
               dtype=None) -> Components:
    """Random SD1.5 components, full size or ``tiny``, with the tokenizer of
    :func:`character_vocabulary` (its files go to ``folder``); see :func:`build`."""
    configs = sd15_configs.tiny(len(character_vocabulary())) if tiny else families.SD15.configs()
    return build(configs, load_tokenizer(save_tokenizer(folder)), seed, device, dtype)


def pipeline(components: Components):
    """The SD1.5 family's pipeline (``StableDiffusionControlNetInpaintPipeline``) made of
    ``components``."""
    diffusers = _diffusers()
    return getattr(diffusers, families.SD15.pipeline_class)(
        vae=components.vae, text_encoder=components.text_encoder, tokenizer=components.tokenizer,
        unet=components.unet, controlnet=diffusers.MultiControlNetModel(components.controlnets),
        scheduler=components.scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def _released_text_encoder_keys(path: Path) -> None:
    """Rewrite a CLIPTextModel file saved by transformers 5 (keys ``embeddings.*``,
    ``encoder.*``, ``final_layer_norm.*``) in the layout of released SD1.5 pipelines, written by
    transformers 4: the same keys under ``text_model.``. transformers 5 loads both; ComfyUI's
    DiffusersLoader and CLIPLoader read only the released one."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    released = {key if key.startswith(("text_model.", "text_projection")) else f"text_model.{key}": value
                for key, value in state.items()}
    if released != state:
        save_file(released, str(path), metadata={"format": "pt"})


def save_models_tree(components: Components, models_dir: Path, pipeline_name: str = "sd15",
                     controlnet_names: tuple[str, str] = ("inpaint", "color_canny")) -> dict[str, Path]:
    """Save ``components`` as ComfyUI keeps them: ``models/diffusers/<pipeline_name>`` (a
    diffusers pipeline folder without ControlNets) and ``models/controlnet/<name>`` (one
    diffusers folder per ControlNet). Returns the paths written."""
    pipe_dir = models_dir / "diffusers" / pipeline_name
    parts = {"unet": components.unet, "vae": components.vae,
             "text_encoder": components.text_encoder, "tokenizer": components.tokenizer,
             "scheduler": components.scheduler}
    for name, part in parts.items():
        part.save_pretrained(str(pipe_dir / name))
    _released_text_encoder_keys(pipe_dir / "text_encoder" / "model.safetensors")
    index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _diffusers().__version__,
             "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "CLIPTokenizer"],
             "scheduler": ["diffusers", type(components.scheduler).__name__],
             "safety_checker": [None, None], "feature_extractor": [None, None],
             "requires_safety_checker": False}
    (pipe_dir / "model_index.json").write_text(json.dumps(index, indent=1), encoding="utf-8")
    paths = {"pipeline": pipe_dir}
    for name, net in zip(controlnet_names, components.controlnets):
        paths[name] = models_dir / "controlnet" / name
        net.save_pretrained(str(paths[name]))
    return paths


#: The layers a random LoRA changes: the attention projections of the UNet and the text encoder,
#: as LCM-LoRA, TCD and most style LoRAs do (LCM-LoRA also changes convolutions).
LORA_LAYERS = re.compile(r"(attn[12]\.(to_q|to_k|to_v|to_out\.0)|self_attn\.(q|k|v|out)_proj)$")
#: The two layouts of :func:`save_random_lora`, as plic.decode.lora reads them.
LORA_LAYOUTS = ("kohya", "diffusers")


def _lora_key(component: str, name: str, layout: str) -> str:
    """A layer's key prefix in a published LoRA of ``layout``: kohya's sd-scripts name the text
    encoder's layers as transformers 4 did (under ``text_model``); so do diffusers' files."""
    if component == "text_encoder" and not name.startswith("text_model."):
        name = "text_model." + name
    if layout == "kohya":
        return {"unet": "lora_unet_", "text_encoder": "lora_te_"}[component] + name.replace(".", "_")
    return f"{component}.{name}"


def save_random_lora(components: Components, path: Path, layout: str, rank: int = 4, seed: int = 0,
                     scale: float = 0.05) -> Path:
    """A LoRA of ``rank`` with random weights (drawn from ``seed``, the same in either layout) for
    the :data:`LORA_LAYERS` of ``components``' UNet and text encoder, saved as ``layout``
    (kohya: ``lora_down``/``lora_up``/``alpha``; diffusers: PEFT's ``lora_A``/``lora_B``, with
    the alpha of the rank)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for component in ("unet", "text_encoder"):
        for name, module in getattr(components, component).named_modules():
            if not LORA_LAYERS.search(name):
                continue
            down = torch.randn(rank, module.in_features, generator=generator) * scale
            up = torch.randn(module.out_features, rank, generator=generator) * scale
            key = _lora_key(component, name, layout)
            if layout == "kohya":
                state.update({f"{key}.lora_down.weight": down, f"{key}.lora_up.weight": up,
                              f"{key}.alpha": torch.tensor(float(rank))})
            else:
                state.update({f"{key}.lora_A.weight": down, f"{key}.lora_B.weight": up})
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path
