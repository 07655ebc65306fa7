"""One image's evaluation: the reconstruction's metrics and bpp, and beside them the same-size
JPEG, WebP and AVIF of the original (when the .plic's byte count is known) with theirs.

Shared by ``plic eval`` (:mod:`plic.cli.eval`) and the PLIC Evaluate node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from plic.codec.pack import bits_per_pixel
from plic.eval import compare
from plic.eval.metrics import Evaluator, reference_for
from plic.image import check_rgb, resize_to_height

PLIC_METHOD = "plic"


@dataclass
class Result:
    """One row of the table: a method's output for one image and its scores."""

    image: str
    method: str
    bytes: int | None
    bpp: float | None
    quality: int | None
    scores: dict[str, float]
    note: str = ""
    picture: np.ndarray | None = field(default=None, repr=False)

    def row(self) -> dict:
        return {"image": self.image, "method": self.method, "bytes": self.bytes, "bpp": self.bpp,
                "quality": self.quality, **self.scores, "note": self.note}


def evaluate_image(evaluator: Evaluator, name: str, original: np.ndarray, reconstruction: np.ndarray,
                   plic_bytes: int | None = None, working_size: tuple[int, int] | None = None,
                   codecs=compare.CODECS) -> list[Result]:
    """Rows for the original (its no-reference scores), the reconstruction and, given
    ``plic_bytes``, each codec at that size. Codecs encode the original at the reconstruction's size; bpp counts the pixels of
    ``working_size`` (the .plic's) or of the reconstruction."""
    reconstruction = check_rgb(reconstruction, f"{name}: reconstruction")
    reference = reference_for(original, reconstruction)
    size = working_size or (reconstruction.shape[1], reconstruction.shape[0])
    results = [
        Result(name, "original", None, None, None, evaluator.no_reference(reference), picture=reference),
        Result(name, PLIC_METHOD, plic_bytes, bits_per_pixel(plic_bytes, size) if plic_bytes else None,
               None, evaluator(reference, reconstruction), picture=reconstruction),
    ]
    if plic_bytes:
        for found in compare.same_size(reference, plic_bytes, codecs):
            if found.fits:
                decoded = found.decoded()
                results.append(Result(name, found.codec.name, len(found.data),
                                      bits_per_pixel(len(found.data), size), found.quality,
                                      evaluator(reference, decoded), picture=decoded))
            else:
                results.append(Result(name, found.codec.name, None, None, None, {},
                                      note=found.describe()))
    return results


def side_by_side(results: list[Result], height: int = 256) -> np.ndarray:
    """The pictures of ``results`` in a row at ``height`` pixels, each labelled with its method
    (a grey tile saying "too large" where a codec cannot go this small)."""
    tiles = []
    for result in results:
        if result.picture is not None:
            tile = resize_to_height(result.picture, height)
            label = result.method + (f" q{result.quality}" if result.quality is not None else "")
        else:
            tile = np.full((height, height, 3), 96, dtype=np.uint8)
            label = f"{result.method}: cannot go this small"
        image = Image.fromarray(np.ascontiguousarray(tile))
        draw = ImageDraw.Draw(image)
        box = draw.textbbox((4, 4), label)
        draw.rectangle((box[0] - 2, box[1] - 2, box[2] + 2, box[3] + 2), fill=(0, 0, 0))
        draw.text((4, 4), label, fill=(255, 255, 255))
        tiles.append(np.asarray(image))
    return np.concatenate(tiles, axis=1)
