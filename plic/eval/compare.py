"""What the familiar codecs give at PLIC's size: for an image and a byte budget, the JPEG, WebP
and AVIF files with the smallest error that fit in the budget.

Each codec's quality is searched by bisection for the highest quality that fits (file size
grows with quality, though not strictly), then the few qualities just below it are tried too
and the one with the smallest mean squared error is kept. When even the lowest quality is
larger than the budget the result says so (``data`` is None). Files carry no metadata.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from plic.errors import PlicInputError
from plic.image import check_rgb


@dataclass(frozen=True)
class Codec:
    name: str
    pil_format: str
    suffix: str
    lowest: int
    highest: int
    options: tuple[tuple[str, object], ...] = ()

    def encode(self, rgb: np.ndarray, quality: int) -> bytes:
        out = io.BytesIO()
        Image.fromarray(rgb).save(out, self.pil_format, quality=quality, **dict(self.options))
        return out.getvalue()


#: The codecs compared, each with its quality range and the options that spend fewest bytes.
CODECS = (
    Codec("jpeg", "JPEG", ".jpg", 1, 95, (("optimize", True), ("subsampling", "4:2:0"))),
    Codec("webp", "WEBP", ".webp", 0, 100, (("method", 6),)),
    Codec("avif", "AVIF", ".avif", 0, 100, (("speed", 4), ("subsampling", "4:2:0"))),
)
CODEC_NAMES = tuple(codec.name for codec in CODECS)
#: Qualities below the highest fitting one also tried (size and error are not strictly monotone).
EXTRA_TRIES = 3


@dataclass(frozen=True)
class SameSize:
    """One codec's best file within ``budget`` bytes and its decoded ``picture``; ``data`` and
    ``picture`` are None when it cannot fit."""

    codec: Codec
    budget: int
    quality: int | None
    data: bytes | None
    lowest_size: int
    picture: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def fits(self) -> bool:
        return self.data is not None

    def decoded(self) -> np.ndarray:
        return self.picture

    def describe(self) -> str:
        if not self.fits:
            return (f"{self.codec.name}: cannot go this small (its lowest quality, "
                    f"{self.codec.lowest}, needs {self.lowest_size} bytes > {self.budget})")
        return f"{self.codec.name}: quality {self.quality}, {len(self.data)} bytes (budget {self.budget})"


def codec_by_name(name: str) -> Codec:
    for codec in CODECS:
        if codec.name == name:
            return codec
    raise PlicInputError(f"unknown codec {name!r}; choose from {', '.join(CODEC_NAMES)}")


def fit(rgb: np.ndarray, budget: int, codec: Codec) -> SameSize:
    """The file of ``codec`` with the smallest error among those of at most ``budget`` bytes."""
    rgb = check_rgb(rgb)
    if budget < 1:
        raise PlicInputError(f"the byte budget must be positive, got {budget}")
    sizes: dict[int, bytes] = {}
    pictures: dict[int, np.ndarray] = {}

    def encoded(quality: int) -> bytes:
        if quality not in sizes:
            sizes[quality] = codec.encode(rgb, quality)
        return sizes[quality]

    def decoded(quality: int) -> np.ndarray:
        if quality not in pictures:
            pictures[quality] = _decode(encoded(quality))
        return pictures[quality]

    low, high = codec.lowest, codec.highest
    if len(encoded(low)) > budget:
        return SameSize(codec, budget, None, None, len(encoded(low)))
    while low < high:  # invariant: ``low`` fits
        middle = (low + high + 1) // 2
        if len(encoded(middle)) <= budget:
            low = middle
        else:
            high = middle - 1
    candidates = [q for q in range(max(codec.lowest, low - EXTRA_TRIES), low + 1)
                  if len(encoded(q)) <= budget]
    quality = min(candidates, key=lambda q: (_mse(rgb, decoded(q)), -q))
    return SameSize(codec, budget, quality, encoded(quality), len(encoded(codec.lowest)), decoded(quality))


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def _mse(rgb: np.ndarray, decoded: np.ndarray) -> float:
    return float(np.mean((decoded.astype(np.float64) - rgb) ** 2))


def same_size(rgb: np.ndarray, budget: int, codecs=CODECS) -> list[SameSize]:
    """:func:`fit` for each codec."""
    return [fit(rgb, budget, codec) for codec in codecs]
