"""Finding the decoder's models on disk, offline, with errors that say what is missing and where.

Layout (ComfyUI's): an SD1.5 diffusers pipeline folder under ``models/diffusers/`` and the two
ControlNets under ``models/controlnet/`` (each a diffusers folder or a single checkpoint file).
Inside ComfyUI the nodes pass ``folder_paths``' folders; outside it the ``plic`` command and
scripts pass a models folder or set ``PLIC_MODELS_DIR``. Nothing here touches the network.
The local captioners (:mod:`plic.caption`), the metrics' models (:mod:`plic.eval.metrics`) and
Grounding DINO / SAM (:mod:`plic.salient.detect`) find their folders with :func:`search_dirs` /
:func:`models_roots` and list and look up their models with :func:`names_in` and
:func:`candidate_paths`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from plic.errors import ModelNotFoundError

#: Environment variable naming a ComfyUI-style ``models`` folder outside ComfyUI.
MODELS_ENV = "PLIC_MODELS_DIR"
#: File endings accepted for a single-file ControlNet checkpoint.
SINGLE_FILE_SUFFIXES = (".safetensors", ".pth", ".ckpt", ".bin", ".pt")
#: File ending of a LoRA and of a single-file model checkpoint (read as safetensors only, never
#: as pickles).
LORA_SUFFIX = CHECKPOINT_SUFFIX = ".safetensors"

#: Weight files diffusers or transformers may have written (plain, fp16 variant, sharded).
_DIFFUSERS_WEIGHTS = ("diffusion_pytorch_model*.safetensors", "diffusion_pytorch_model*.bin",
                      "diffusion_pytorch_model*.safetensors.index.json")
_TRANSFORMERS_WEIGHTS = ("model*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json")

#: What a usable SD1.5 pipeline folder holds: (description, alternatives that satisfy it).
PIPELINE_FILES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("model_index.json", ("model_index.json",)),
    ("unet/config.json", ("unet/config.json",)),
    ("unet/diffusion_pytorch_model.safetensors", tuple("unet/" + g for g in _DIFFUSERS_WEIGHTS)),
    ("vae/config.json", ("vae/config.json",)),
    ("vae/diffusion_pytorch_model.safetensors", tuple("vae/" + g for g in _DIFFUSERS_WEIGHTS)),
    ("text_encoder/config.json", ("text_encoder/config.json",)),
    ("text_encoder/model.safetensors", tuple("text_encoder/" + g for g in _TRANSFORMERS_WEIGHTS)),
    ("tokenizer/vocab.json + merges.txt (or tokenizer.json)",
     ("tokenizer/vocab.json", "tokenizer/tokenizer.json")),
    ("scheduler/scheduler_config.json", ("scheduler/scheduler_config.json",)),
)
#: What a diffusers ControlNet folder holds.
CONTROLNET_FILES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("config.json", ("config.json",)),
    ("diffusion_pytorch_model.safetensors", _DIFFUSERS_WEIGHTS),
)


def models_roots(models_dir: str | os.PathLike | None = None) -> list[Path]:
    """The ``models`` folders used outside ComfyUI, in order: ``models_dir`` (the argument,
    e.g. ``--models-dir``), then the one ``PLIC_MODELS_DIR`` names. Empty when neither is set."""
    roots = [Path(models_dir).expanduser()] if models_dir else []
    value = os.environ.get(MODELS_ENV, "").strip()
    env = Path(value).expanduser() if value else None
    if env is not None and env not in roots:
        roots.append(env)
    return roots


def search_dirs(kind: str | Sequence[str], models_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders to search for the model kind ``kind`` ("diffusers", "controlnet", "dinov2",
    "captioners"... or several, in order) outside ComfyUI: ``<root>/<kind>`` for each of
    :func:`models_roots`. The nodes use ComfyUI's folders instead (nodes.common.model_dirs)."""
    kinds = (kind,) if isinstance(kind, str) else tuple(kind)
    return [root / name for name in kinds for root in models_roots(models_dir)]


def missing_files(folder: Path, required: Sequence[tuple[str, tuple[str, ...]]]) -> list[str]:
    """Descriptions of the required files ``folder`` lacks."""
    return [label for label, patterns in required
            if not any(any(folder.glob(pattern)) for pattern in patterns)]


def candidate_paths(name: str | os.PathLike, dirs: Iterable[Path]) -> list[Path]:
    """Where the model ``name`` may be, in order: ``name`` itself (a path), then, unless it is
    absolute, ``<dir>/<name>`` for each of ``dirs``."""
    given = Path(name).expanduser()
    return [given] + ([Path(d) / given for d in dirs] if not given.is_absolute() else [])


def names_in(dirs: Iterable[Path], accept: Callable[[Path], bool]) -> list[str]:
    """Sorted names (no duplicates) of the entries directly inside ``dirs`` that ``accept``
    takes; folders that do not exist are skipped. What model dropdowns list."""
    return sorted({entry.name for folder in map(Path, dirs) if folder.is_dir()
                   for entry in folder.iterdir() if accept(entry)})


def not_found(what: str, name: str, dirs: Sequence[Path], hint: str) -> ModelNotFoundError:
    looked = ", ".join(str(d) for d in dirs) or "(no folder: give a models folder or set " + MODELS_ENV + ")"
    return ModelNotFoundError(f"{what} '{name}' was not found; looked in: {looked}. {hint}")


def find_pipeline(name: str, dirs: Sequence[Path],
                  required: Sequence[tuple[str, tuple[str, ...]]] = PIPELINE_FILES) -> Path:
    """The SD1.5 diffusers pipeline folder ``name`` (a path, or a folder name under one of
    ``dirs``), checked complete (``required``: a decoder family's files), or a single-file
    checkpoint (``.safetensors``, e.g. a fine-tune in models/checkpoints). Raises
    ModelNotFoundError naming each missing file."""
    if not name:
        raise not_found("The SD1.5 pipeline folder", "", dirs, "Choose a pipeline folder.")
    for folder in candidate_paths(name, dirs):
        if folder.is_dir():
            missing = missing_files(folder, required)
            if missing:
                raise ModelNotFoundError(
                    f"The SD1.5 pipeline folder {folder} is incomplete: missing "
                    f"{', '.join(missing)}. Copy the whole diffusers folder of an SD1.5 model "
                    f"(e.g. stable-diffusion-v1-5) there.")
            return folder
        if folder.is_file() and folder.suffix.lower() == CHECKPOINT_SUFFIX:
            return folder
    raise not_found("The SD1.5 pipeline folder", name, dirs,
                     "Put a diffusers SD1.5 folder (with model_index.json, unet/, vae/, "
                     "text_encoder/, tokenizer/, scheduler/) into models/diffusers, or a "
                     "single-file checkpoint (.safetensors) into models/checkpoints.")


def find_controlnet(name: str, dirs: Sequence[Path], role: str = "ControlNet") -> Path:
    """The ControlNet ``name``: a diffusers folder (config.json + weights) or a single
    checkpoint file. ``role`` names it in errors (e.g. "inpaint ControlNet")."""
    if not name:
        raise not_found(f"The {role}", "", dirs, "Choose a ControlNet.")
    for path in candidate_paths(name, dirs):
        if path.is_dir():
            missing = missing_files(path, CONTROLNET_FILES)
            if missing:
                raise ModelNotFoundError(
                    f"The {role} folder {path} is incomplete: missing {', '.join(missing)}.")
            return path
        if path.is_file():
            if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
                raise ModelNotFoundError(
                    f"The {role} {path} is not a checkpoint (expected one of "
                    f"{', '.join(SINGLE_FILE_SUFFIXES)}) or a diffusers folder.")
            return path
    raise not_found(f"The {role}", name, dirs,
                     "Put its diffusers folder or single checkpoint file into models/controlnet.")


def find_decoder_model(name: str, base_name: str | None, folder_dirs: Sequence[Path],
                       file_dirs: Sequence[Path],
                       required: Sequence[tuple[str, tuple[str, ...]]] = PIPELINE_FILES) -> tuple[Path, Path | None]:
    """(model, base): the pipeline folder ``name`` (under ``folder_dirs``, models/diffusers) or
    single-file checkpoint (under ``file_dirs``, models/checkpoints); for a single file also the
    diffusers folder ``base_name`` (under ``folder_dirs``) whose configurations, tokenizer and
    scheduler it is read with, else None."""
    model = find_pipeline(name, [*folder_dirs, *file_dirs], required)
    if model.is_dir():
        return model, None
    if not base_name:
        raise ModelNotFoundError(
            f"The checkpoint {model} is a single file: also name a diffusers folder of its family "
            "to read it with (its configs, tokenizer and scheduler, e.g. stable-diffusion-v1-5): "
            "--base-model on the command line, base_model on PLIC Diffusers Loader")
    base = find_pipeline(base_name, folder_dirs, required)
    if not base.is_dir():
        raise ModelNotFoundError(f"The base model {base} must be a diffusers folder, not a single file")
    return model, base


def find_lora(name: str, dirs: Sequence[Path]) -> Path:
    """The LoRA file ``name``: a path, or a file name under one of ``dirs`` (models/loras, as
    ComfyUI keeps them, subfolders included: ``styles/x.safetensors``)."""
    for path in candidate_paths(name, dirs):
        if path.is_file():
            if path.suffix.lower() != LORA_SUFFIX:
                raise ModelNotFoundError(f"The LoRA {path} is not a {LORA_SUFFIX} file; convert it "
                                         f"or choose its {LORA_SUFFIX} release")
            return path
    raise not_found("The LoRA", name, dirs, f"Put the {LORA_SUFFIX} file into models/loras.")


def list_models(dirs: Iterable[Path], kind: str) -> list[str]:
    """Names offered in a node's dropdown: pipeline folders (``kind="diffusers"``), ControlNet
    folders and checkpoint files (``kind="controlnet"``), or LoRA and checkpoint files
    (``kind="loras"`` / ``"checkpoints"``, those in subfolders as ``sub/name``) found in ``dirs``."""
    if kind in ("loras", "checkpoints"):
        return sorted({path.relative_to(folder).as_posix() for folder in map(Path, dirs) if folder.is_dir()
                       for path in folder.rglob("*" + LORA_SUFFIX) if path.is_file()})

    def accept(entry: Path) -> bool:
        if kind == "diffusers":
            return (entry / "model_index.json").is_file()
        if kind == "controlnet":
            return (entry / "config.json").is_file() or entry.suffix.lower() in SINGLE_FILE_SUFFIXES
        return False

    return names_in(dirs, accept)
