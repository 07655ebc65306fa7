"""The two image sets the tests (and the benchmarks) read: the core set in tests/data, with the
repository, and the extended set in ../shared/images beside it."""

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "data"
SHARED = REPO.parent / "shared"
SHARED_IMAGES = SHARED / "images"
#: ComfyUI 0.3.64's node schemas, trimmed to the classes our workflows and tests use.
OBJECT_INFO = DATA / "comfyui_object_info.json"
SHARED_OBJECT_INFO = SHARED / "comfyui" / "object_info.json"


def _images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*") if p.suffix in (".png", ".jpg"))


CORE_IMAGES = _images(DATA)
assert CORE_IMAGES, f"no test images in {DATA}: the repository is incomplete"
SHARED_PRESENT = SHARED_IMAGES.is_dir() and bool(_images(SHARED_IMAGES))
EXTENDED_IMAGES = [name for name in _images(SHARED_IMAGES) if name not in CORE_IMAGES]


def image_path(name: str) -> Path:
    """A test image: from tests/data when it is there, else from ../shared/images."""
    return DATA / name if name in CORE_IMAGES else SHARED_IMAGES / name


def load_shared(name: str, max_side: int = 1024) -> np.ndarray:
    """A test image (see image_path) as the working RGB uint8 array."""
    from plic.image import load_rgb, to_working

    return to_working(load_rgb(image_path(name)), max_side)
