"""PLIC's ComfyUI nodes. Each module holds one concern and exports its own mappings."""

import importlib
import importlib.util
import sys
from pathlib import Path


def _make_plic_importable() -> None:
    """ComfyUI imports the pack by its folder path, so its core library ``plic`` (beside this
    package) is not on sys.path; append the pack's folder unless ``plic`` is importable."""
    if importlib.util.find_spec("plic") is None:
        sys.path.append(str(Path(__file__).resolve().parents[1]))


_make_plic_importable()

# One entry per node module; each defines NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS.
_MODULES = ("caption", "edges", "palette", "salient", "pack", "files", "unpack", "reconstruct",
            "decode_graph")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _name in _MODULES:
    _module = importlib.import_module(f"{__name__}.{_name}")
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)


def _settle_into_comfyui() -> None:
    """Inside ComfyUI: put the shipped workflows' inputs into its input folder (never replacing
    a file), so that every template queues as it is, and drop PLIC's cached models whenever
    ComfyUI unloads all of its own (nodes/memory.py)."""
    from .common import comfy_directory, comfy_module
    from .files import install_example_inputs
    from .memory import chain_release_to_unload_all

    if comfy_module("folder_paths") is not None:
        install_example_inputs(comfy_directory("input"))
        chain_release_to_unload_all()


_settle_into_comfyui()
