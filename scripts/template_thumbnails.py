"""Write the template browser's thumbnails (workflows/<name>.jpg) from the shipped example: what
compress makes of plic/data/example.png, and what the three decompress templates start from
(workflows/input/plic_example.plic). Run from the repository root after changing either file:

  python scripts/template_thumbnails.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from plic.codec import fileformat
from plic.codec import pack  # noqa: E402
from plic.image import load_rgb  # noqa: E402

TILE = 256


def _tile(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((TILE, TILE), Image.Resampling.LANCZOS))


def _grid(a: np.ndarray, b: np.ndarray, c: np.ndarray, d: np.ndarray) -> Image.Image:
    """Four tiles in a square (the template browser shows square cards): a b over c d."""
    rows = [np.concatenate([_tile(a), _tile(b)], axis=1), np.concatenate([_tile(c), _tile(d)], axis=1)]
    return Image.fromarray(np.concatenate(rows, axis=0))


def main() -> None:
    parts = pack.unpack(fileformat.load(REPO / "workflows" / "input" / "plic_example.plic"))
    edges = np.repeat((parts.edges * 255).astype(np.uint8)[..., None], 3, axis=-1)
    init = parts.init_image()
    original = load_rgb(REPO / "plic" / "data" / "example.png")
    decompress = _grid(edges, parts.palette_full, parts.color_canny_hint, init)
    thumbnails = {"plic_compress": _grid(original, edges, parts.palette_full, init),
                  **{name: decompress for name in ("plic_decompress", "plic_decompress_fast",
                                                   "plic_decompress_reference")}}
    for name, image in thumbnails.items():
        path = REPO / "workflows" / f"{name}.jpg"
        image.save(path, quality=85)
        print(f"{path.relative_to(REPO)}: {path.stat().st_size} bytes")


if __name__ == "__main__":
    main()
