"""Lazy imports of heavy or optional packages with an install hint when one is missing."""

import importlib
from types import ModuleType

from plic.errors import MissingDependencyError, PlicInputError


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
    """"auto" -> "cuda" when torch sees a GPU, else "cpu"; any other device is kept when it is
    one torch knows and this machine has (PlicInputError naming what there is otherwise)."""
    torch = require("torch", package="torch", purpose="Running a model")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise PlicInputError(f"device {device!r} is not one torch knows; use auto, cpu, cuda, "
                             "cuda:N or mps") from None
    gpus = torch.cuda.device_count() if kind.type == "cuda" else 0
    if kind.type == "cuda" and (gpus == 0 or (kind.index or 0) >= gpus):
        raise PlicInputError(f"device {device!r} is not on this machine (torch sees "
                             f"{gpus or 'no'} CUDA GPU{'s' if gpus != 1 else ''}); use "
                             f"{'cpu' if not gpus else 'cuda:0..cuda:' + str(gpus - 1)} or auto")
    if kind.type == "mps" and not torch.backends.mps.is_available():
        raise PlicInputError(f"device {device!r} is not on this machine; use cpu or auto")
    return device
