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


def read_pbm(raw: bytes) -> np.ndarray:
    """Parse a binary PBM (P4), as jbig2dec writes it, to a 0/1 array; 1 = black."""
    tokens, pos = [], 0
    while len(tokens) < 3:
        while raw[pos:pos + 1].isspace():
            pos += 1
        if raw[pos:pos + 1] == b"#":
            pos = raw.index(b"\n", pos)
            continue
        end = pos
        while not raw[end:end + 1].isspace():
            end += 1
        tokens.append(raw[pos:end])
        pos = end
    assert tokens[0] == b"P4"
    width, height = int(tokens[1]), int(tokens[2])
    pos += 1  # the single whitespace byte
    row_bytes = (width + 7) // 8
    data = np.frombuffer(raw[pos:pos + row_bytes * height], dtype=np.uint8)
    return np.unpackbits(data.reshape(height, row_bytes), axis=1)[:, :width]
