"""PLIC's ComfyUI nodes. Each module holds one concern and exports its own mappings."""

import importlib
import importlib.util
import sys
from pathlib import Path


def _bind_plic() -> None:
    """The nodes import the core library as ``plic``. ComfyUI imports the pack by its folder
    path, so that library (beside this package) is not on sys.path: load it under its name from
    there, leaving sys.path alone. A different ``plic`` already imported is refused, naming both,
    rather than used silently."""
    library = Path(__file__).resolve().parents[1] / "plic"
    loaded = sys.modules.get("plic")
    if loaded is not None:
        if Path(loaded.__file__).resolve().parent != library:
            raise ImportError(f"PLIC's nodes need the plic library in {library}, but another one "
                              f"is already imported from {Path(loaded.__file__).parent}: "
                              "uninstall that one (pip uninstall comfyui-plic) or remove it from the path")
        return
    spec = importlib.util.spec_from_file_location("plic", library / "__init__.py",
                                                  submodule_search_locations=[str(library)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["plic"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["plic"]
        raise


_bind_plic()

# One entry per node module; each defines NODE_CLASS_MAPPINGS and NODE_DISPLAY_NAME_MAPPINGS.
_MODULES = ("caption", "edges", "palette", "salient", "pack", "files", "unpack", "preview", "reconstruct",
            "decode_graph", "evaluate")

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
for _name in _MODULES:
    _module = importlib.import_module(f"{__name__}.{_name}")
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

from .common import guard_inputs  # noqa: E402 - after the library is bound above

for _key, _class in NODE_CLASS_MAPPINGS.items():  # every node checks what reaches it
    guard_inputs(_class, NODE_DISPLAY_NAME_MAPPINGS[_key])


def _settle_into_comfyui() -> None:
    """Inside ComfyUI: put the shipped workflows' inputs into its input folder (never replacing
    a file), so that every template queues as it is."""
    from .common import comfy_directory, comfy_module
    from .files import install_example_inputs

    if comfy_module("folder_paths") is not None:
        install_example_inputs(comfy_directory("input"))


_settle_into_comfyui()
