"""The paper's quality metrics, each usable alone, and :class:`Evaluator` that runs a chosen set.

Full-reference (original vs reconstruction):

- ``dinov2``: cosine similarity of DINOv2 embeddings, the paper's perceptual similarity: a
  ``facebook/dinov2-base``-layout transformers folder, its image processor, the mean of
  ``last_hidden_state`` over all tokens (CLS and patches). Higher is better, 1 for identical.
- ``lpips``: LPIPS v0.1 with the AlexNet trunk (the paper's variant). The linear layers are the
  ones the ``lpips`` package ships (``lpips/weights/v0.1/alex.pth``); the AlexNet trunk is
  torchvision's ImageNet checkpoint (``alexnet-owt-7be5be79.pth``), read from the user's model
  folder (nothing is downloaded). Lower is better, 0 for identical.
- ``psnr`` (dB, RGB) and ``ssim`` (luma, 11x11 Gaussian window, sigma 1.5), for reference.

No-reference (the reconstruction alone): ``brisque`` and ``cpbd``, see :mod:`plic.eval.no_reference`.

Models live in ComfyUI-style folders: ``models/dinov2/<folder>`` and ``models/lpips/<file>``
(inside ComfyUI its own models folder; outside it ``--models-dir`` or ``PLIC_MODELS_DIR``).
When the two images differ in size, the original is scaled to the reconstruction's size
(Lanczos) first: PLIC reconstructs at the working size.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from plic import model_files
from plic.deps import require, resolve_device
from plic.errors import ModelNotFoundError, PlicInputError
from plic.eval import no_reference
from plic.image import check_rgb, resize

DINO_FOLDER = "dinov2"
DINO_DEFAULT = "dinov2-base"
LPIPS_FOLDER = "lpips"
LPIPS_DEFAULT = "alexnet-owt-7be5be79.pth"
DINO_FILES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("config.json", ("config.json",)),
    ("model.safetensors", ("model*.safetensors", "pytorch_model*.bin", "model*.safetensors.index.json")),
    ("preprocessor_config.json", ("preprocessor_config.json",)),
)

#: Every metric: (name, higher is better, needs the original).
METRICS: tuple[tuple[str, bool, bool], ...] = (
    ("dinov2", True, True), ("lpips", False, True), ("psnr", True, True), ("ssim", True, True),
    ("brisque", False, False), ("cpbd", True, False),
)
METRIC_NAMES = tuple(name for name, _, _ in METRICS)
HIGHER_IS_BETTER = {name: higher for name, higher, _ in METRICS}
NO_REFERENCE = tuple(name for name, _, needs_original in METRICS if not needs_original)
MODEL_METRICS = ("dinov2", "lpips")


def reference_for(original: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """``original`` scaled (Lanczos) to the reconstruction's size when they differ."""
    original, reconstruction = check_rgb(original, "original"), check_rgb(reconstruction, "reconstruction")
    return resize(original, (reconstruction.shape[1], reconstruction.shape[0]))


def psnr(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Peak signal-to-noise ratio over the RGB channels in dB (infinite for identical images)."""
    a = reference_for(original, reconstruction).astype(np.float64)
    mse = float(np.mean((a - reconstruction.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0 ** 2 / mse)


def ssim(original: np.ndarray, reconstruction: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004) of the luma (ITU-R 601), Gaussian window sigma 1.5 (11x11),
    K1 = 0.01, K2 = 0.03, over the pixels whose window lies inside the image."""
    ndimage = require("scipy", package="scipy", purpose="SSIM").ndimage
    a = no_reference.gray_uint8(reference_for(original, reconstruction)).astype(np.float64)
    b = no_reference.gray_uint8(reconstruction).astype(np.float64)
    blur = functools.partial(ndimage.gaussian_filter, sigma=1.5, truncate=3.5)
    mu_a, mu_b = blur(a), blur(b)
    var_a, var_b = blur(a * a) - mu_a ** 2, blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    margin = 5 if min(a.shape) > 10 else 0
    return float(index[margin:index.shape[0] - margin, margin:index.shape[1] - margin].mean())


def _torch():
    return require("torch", package="torch", purpose="DINOv2 and LPIPS")


class DinoSimilarity:
    """Cosine similarity of mean-pooled DINOv2 ``last_hidden_state`` embeddings."""

    def __init__(self, folder: Path, device: str = "auto"):
        transformers = require("transformers", package="transformers", purpose="DINOv2 similarity")
        self.device = resolve_device(device)
        self.processor = transformers.AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
        self.model = transformers.Dinov2Model.from_pretrained(str(folder), local_files_only=True)
        self.model.to(self.device).eval()

    def embed(self, rgb: np.ndarray):
        torch = _torch()
        inputs = self.processor(images=check_rgb(rgb), return_tensors="pt").to(self.device)
        with torch.inference_mode():
            return self.model(**inputs).last_hidden_state.mean(dim=1)[0].float()

    def __call__(self, original: np.ndarray, reconstruction: np.ndarray) -> float:
        torch = _torch()
        a, b = self.embed(reference_for(original, reconstruction)), self.embed(reconstruction)
        return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


class Lpips:
    """LPIPS v0.1, AlexNet trunk: the lpips package's linear layers on the trunk ``checkpoint``."""

    def __init__(self, checkpoint: Path, device: str = "auto"):
        torch = _torch()
        lpips = require("lpips", package="lpips", purpose="LPIPS")
        self.device = resolve_device(device)
        # The trunk starts random (no download) and takes the user's AlexNet weights below; the
        # package loads its own trained linear layers (pretrained=True).
        self.model = lpips.LPIPS(net="alex", version="0.1", pretrained=True, pnet_rand=True, verbose=False)
        trunk = load_alexnet_features(checkpoint, torch)
        # lpips keeps torchvision's layer numbers inside its slices: "3.weight" -> "slice2.3.weight"
        places = {name.split(".", 1)[1]: name for name in self.model.net.state_dict()}
        missing = sorted(set(places) - set(trunk))
        if missing:
            raise ModelNotFoundError(f"{checkpoint}: not a torchvision AlexNet checkpoint; it lacks "
                                     + ", ".join(f"features.{key}" for key in missing))
        state = {name: trunk[key] for key, name in places.items()}
        self.model.net.load_state_dict(state, strict=True)
        self.model.to(self.device).eval()

    def __call__(self, original: np.ndarray, reconstruction: np.ndarray) -> float:
        torch = _torch()

        def tensor(rgb):
            return (torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
                    .div(127.5).sub(1).to(self.device))

        with torch.inference_mode():
            return float(self.model(tensor(reference_for(original, reconstruction)), tensor(reconstruction)))


def load_alexnet_features(path: Path, torch) -> dict:
    """The ``features.*`` tensors of a torchvision AlexNet checkpoint (.pth or .safetensors),
    keyed without the ``features.`` prefix."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: name it
        raise ModelNotFoundError(f"{path}: cannot read this AlexNet checkpoint ({exc})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else {}
    return {key.split(".", 1)[1]: value for key, value in state.items() if key.startswith("features.")}


def find_dino(name: str, dirs: Sequence[Path]) -> Path:
    """The DINOv2 folder ``name`` (a path or a folder under ``dirs``), checked complete."""
    for folder in model_files.candidate_paths(name, dirs):
        if folder.is_dir():
            missing = model_files.missing_files(folder, DINO_FILES)
            if missing:
                raise ModelNotFoundError(f"The DINOv2 folder {folder} is incomplete: missing "
                                         f"{', '.join(missing)}. Copy the whole facebook/dinov2-base "
                                         "folder (weights, config, preprocessor_config.json).")
            return folder
    raise model_files.not_found("The DINOv2 model", name, dirs,
                           "Put the facebook/dinov2-base folder into models/dinov2.")


def find_lpips(name: str, dirs: Sequence[Path]) -> Path:
    """The AlexNet trunk checkpoint ``name`` (a path or a file under ``dirs``)."""
    for path in model_files.candidate_paths(name, dirs):
        if path.is_file():
            return path
    raise model_files.not_found("The LPIPS AlexNet checkpoint", name, dirs,
                           "Put torchvision's ImageNet AlexNet weights (alexnet-owt-7be5be79.pth) "
                           "into models/lpips.")


@dataclass
class Evaluator:
    """Runs the chosen ``metrics`` on image pairs; the model metrics load their models once."""

    metrics: tuple[str, ...] = METRIC_NAMES
    dino: DinoSimilarity | None = None
    lpips: Lpips | None = None
    _functions: dict[str, Callable] = field(init=False, repr=False)

    def __post_init__(self):
        unknown = [m for m in self.metrics if m not in METRIC_NAMES]
        if unknown:
            raise PlicInputError(f"unknown metric(s) {', '.join(unknown)}; choose from "
                                 f"{', '.join(METRIC_NAMES)}")
        self._functions = {"dinov2": self.dino, "lpips": self.lpips, "psnr": psnr, "ssim": ssim,
                           "brisque": lambda _, rec: no_reference.brisque(rec),
                           "cpbd": lambda _, rec: no_reference.cpbd(rec)}
        for name in MODEL_METRICS:
            if name in self.metrics and self._functions[name] is None:
                raise PlicInputError(f"the metric {name} needs its model; load it or leave {name} out")

    @classmethod
    def load(cls, metrics: Sequence[str] = METRIC_NAMES, *, models_dir=None, dino_name: str = DINO_DEFAULT,
             lpips_name: str = LPIPS_DEFAULT, device: str = "auto",
             dino_search: Sequence[Path] | None = None, lpips_search: Sequence[Path] | None = None) -> "Evaluator":
        """Load the models the chosen metrics need from the model folders (``*_search``, else
        ``models_dir`` / PLIC_MODELS_DIR)."""
        metrics = tuple(metrics)
        dino = lpips = None
        if "dinov2" in metrics:
            dino = DinoSimilarity(find_dino(dino_name, dino_search if dino_search is not None
                                            else model_files.search_dirs(DINO_FOLDER, models_dir)), device)
        if "lpips" in metrics:
            lpips = Lpips(find_lpips(lpips_name, lpips_search if lpips_search is not None
                                     else model_files.search_dirs(LPIPS_FOLDER, models_dir)), device)
        return cls(metrics, dino, lpips)

    def __call__(self, original: np.ndarray, reconstruction: np.ndarray) -> dict[str, float]:
        """Every chosen metric of ``reconstruction`` against ``original``."""
        return {name: self._functions[name](original, reconstruction) for name in self.metrics}

    def no_reference(self, rgb: np.ndarray) -> dict[str, float]:
        """The chosen metrics that judge an image alone (BRISQUE, CPBD), e.g. for the original."""
        return {name: self._functions[name](None, rgb) for name in self.metrics if name in NO_REFERENCE}


def format_scores(scores: dict[str, float]) -> str:
    """``dinov2 0.9123 (higher is better)`` lines, in the order of :data:`METRIC_NAMES`."""
    lines = []
    for name in METRIC_NAMES:
        if name in scores:
            better = "higher" if HIGHER_IS_BETTER[name] else "lower"
            lines.append(f"{name:8s} {scores[name]:.4f} ({better} is better)")
    return "\n".join(lines)
