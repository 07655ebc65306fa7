"""Shared fixtures: the real test images in ../shared/images beside the repository."""

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_IMAGES = REPO.parent / "shared" / "images"
IMAGE_NAMES = sorted(p.name for p in SHARED_IMAGES.glob("*") if p.suffix in (".png", ".jpg"))


@pytest.fixture(scope="session")
def shared_images() -> Path:
    if not SHARED_IMAGES.is_dir():
        pytest.fail(f"{SHARED_IMAGES} is missing: the repository must sit beside shared/")
    return SHARED_IMAGES


def load_shared(name: str, max_side: int = 1024) -> np.ndarray:
    """A shared image as the working RGB uint8 array."""
    from plic.image import load_rgb, to_working

    return to_working(load_rgb(SHARED_IMAGES / name), max_side)
