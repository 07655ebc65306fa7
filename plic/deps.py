"""Lazy imports of heavy or optional packages with an install hint when one is missing."""

import importlib
from types import ModuleType

from .errors import MissingDependencyError


def require(module: str, *, package: str, purpose: str, install: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip package and the
    pip arguments that install it (``install``, by default just the package)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{package}', which is not installed "
            f"({exc}). Install it into the Python that runs PLIC (for ComfyUI: its embedded "
            f"Python): pip install {install or package}"
        ) from exc


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; anything else is kept."""
    if device != "auto":
        return device
    torch = require("torch", package="torch", purpose="Running a model")
    return "cuda" if torch.cuda.is_available() else "cpu"
