"""Salient regions: the few pixels (faces, small text, logos) stored verbatim, within a budget.

A salient selection is a binary mask of the working image. It is stored as the mask itself
(JBIG2, see :mod:`plic.codec.jbig2`) plus the pixels of the boxes that cover it, each box an image
file (PNG by default: lossless, as the reference pipeline). Nearby boxes are merged (pixels
outside the mask are zeroed, so a merged box costs little more) to save per-region overhead.

The budget (:class:`Budget`) bounds the salient share of the file. :func:`store` first lowers
the stored quality (lossless PNG -> lossless WebP -> WebP 90 ... ``min_quality``), then drops
the least important candidates (lowest score first; among equal scores the largest first)
until the bytes fit, and reports what it kept. Whatever the settings, the salient bytes never
exceed the raw size of the working image (W x H x 3) nor ``Budget.max_bytes``.

What may be kept arrives as :class:`Candidate` regions: from the detectors of :mod:`plic.salient.detect`
or, for a user's mask, from :func:`user_candidates`.
"""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from plic.codec import jbig2
from plic.codec.fileformat import MAX_REGIONS, REGION_CODECS, SalientRegion
from plic.errors import PlicInputError
from plic.image import check_rgb

#: Default salient share: 0.5 bits per pixel of the working image. A lossless face of a 512x512
#: portrait costs about 1.1 bpp, so by default it is stored as WebP (see :func:`quality_ladder`).
DEFAULT_MAX_BPP = 0.5
#: Lowest WebP quality the budget may lower stored regions to before it drops regions.
DEFAULT_MIN_QUALITY = 50
#: Boxes closer than this many pixels are stored as one region.
DEFAULT_MERGE_GAP = 8
DEFAULT_PAD = 2
LOSSLESS_CODECS = ("png", "webp-lossless")
#: How regions are stored unless told otherwise: losslessly as PNG, as the paper; the WebP
#: quality is for the codec "webp".
DEFAULT_CODEC = "png"
DEFAULT_QUALITY = 90
_SECTION_OVERHEAD = 12  # type, length, crc of a .plic section
_REGION_OVERHEAD = 13  # x, y, w, h, codec, length of one stored region
_QUICK_JBIG2 = {"template": 0, "tpgdon": True}  # one of the sets jbig2.choose_parameters tries
#: Score of a user's mask, above every detector's (0..1): a user's mask is dropped last.
USER_SCORE = 2.0
#: Lossless WebP effort (Pillow's and libwebp's default): on 28 crops of 40-160 x 40-220 px from
#: the shared images 1.5 % smaller in total than the most effort (method 6, quality 100) at 1/86
#: of its time (0.38 s against 33 s; 2.3 s for the astronaut's face alone, bench/README.md).
LOSSLESS_WEBP = {"method": 4, "quality": 80}


@dataclass(frozen=True)
class Candidate:
    """One region worth keeping: where, how sure, and which pixels (``mask``, box-sized)."""

    source: str  # "faces", "text", "dino+sam" or "user"
    label: str
    box: tuple[int, int, int, int]  # x, y, w, h in working-image pixels
    score: float  # 0..1 for detectors; USER_SCORE for a user's mask
    mask: np.ndarray | None = None  # (h, w) bool inside ``box``; None means the whole box

    @property
    def area(self) -> int:
        return int(self.box[2] * self.box[3]) if self.mask is None else int(self.mask.sum())

    def paint(self, canvas: np.ndarray) -> None:
        """Set this candidate's pixels in the (H, W) bool ``canvas``."""
        x, y, w, h = self.box
        if self.mask is None:
            canvas[y:y + h, x:x + w] = True
        else:
            canvas[y:y + h, x:x + w] |= self.mask


def union_mask(candidates: list[Candidate], size: tuple[int, int]) -> np.ndarray:
    """The (H, W) bool union of ``candidates`` for a working image of ``size`` = (w, h)."""
    canvas = np.zeros((size[1], size[0]), dtype=bool)
    for c in candidates:
        c.paint(canvas)
    return canvas


def user_candidates(mask: np.ndarray) -> list[Candidate]:
    """A user's (H, W) bool mask as one candidate per connected component."""
    import cv2

    count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    found = []
    for index in range(1, count):
        x, y, w, h, _area = (int(v) for v in stats[index])
        found.append(Candidate("user", "user mask", (x, y, w, h), USER_SCORE,
                               labels[y:y + h, x:x + w] == index))
    return found


def count_sources(candidates: list[Candidate]) -> dict[str, int]:
    """How many of ``candidates`` each source gave, in the order the sources first appear."""
    return dict(Counter(c.source for c in candidates))


@dataclass(frozen=True)
class Budget:
    """Limits on the salient share; every limit given is honoured (None = no such limit).

    ``max_bpp`` counts bits per pixel of the working image; ``max_fraction`` bounds the share of
    the image's area that may be kept; ``max_bytes`` is an absolute cap (for example the
    original file's size)."""

    max_bpp: float | None = DEFAULT_MAX_BPP
    max_fraction: float | None = None
    max_bytes: int | None = None

    def limit_bytes(self, size: tuple[int, int]) -> int:
        """The byte limit for a working image of ``size`` = (width, height)."""
        width, height = size
        limits = [width * height * 3]  # never more than the raw pixels
        if self.max_bpp is not None:
            limits.append(int(self.max_bpp * width * height / 8))
        if self.max_bytes is not None:
            limits.append(int(self.max_bytes))
        return max(0, min(limits))

    def check(self) -> "Budget":
        """Raise PlicInputError for a negative or out-of-range limit."""
        if self.max_bpp is not None and self.max_bpp < 0:
            raise PlicInputError(f"salient budget: max_bpp must be >= 0, got {self.max_bpp}")
        if self.max_fraction is not None and not 0 <= self.max_fraction <= 1:
            raise PlicInputError(f"salient budget: max_fraction must be in 0..1, got {self.max_fraction}")
        if self.max_bytes is not None and self.max_bytes < 0:
            raise PlicInputError(f"salient budget: max_bytes must be >= 0, got {self.max_bytes}")
        return self


#: No limit but the raw size of the working image.
UNLIMITED = Budget(max_bpp=None)


@dataclass
class Report:
    """What :func:`store` kept and dropped, and what it cost."""

    size: tuple[int, int]
    limit_bytes: int
    salient_bytes: int = 0
    codec: str = DEFAULT_CODEC
    quality: int = DEFAULT_QUALITY
    kept: list[Candidate] = field(default_factory=list)
    dropped: list[Candidate] = field(default_factory=list)
    rejected: list[tuple[Candidate, str]] = field(default_factory=list)  # by a detector threshold, why
    regions: int = 0
    fraction: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def bpp(self) -> float:
        return self.salient_bytes * 8 / (self.size[0] * self.size[1])

    def counts(self, which: str = "kept") -> dict[str, int]:
        """Candidates per source in ``kept`` or ``dropped``."""
        return count_sources(getattr(self, which))

    def summary(self) -> str:
        """A few lines for a log or a node's text output."""
        kept = ", ".join(_counted(n, s) for s, n in self.counts().items()) or "nothing"
        headers = 2 * _SECTION_OVERHEAD if self.salient_bytes else 0  # not in plic info's sizes
        lines = [f"salient: kept {kept} ({self.fraction:.1%} of the image) in {self.regions} regions, "
                 f"{self.salient_bytes - headers} bytes + {headers} of section headers = {self.bpp:.3f} "
                 f"bpp (limit {self.limit_bytes} bytes), "
                 f"stored as {self.codec}" + ("" if self.codec in LOSSLESS_CODECS else f" q{self.quality}")]
        if self.dropped:
            dropped = ", ".join(_counted(n, s) for s, n in self.counts("dropped").items())
            lines.append(f"salient: dropped {dropped} to fit the budget")
        if self.rejected:
            lines.append("salient: rejected " + "; ".join(self._rejections()))
        lines += [f"salient: {note}" for note in self.notes]
        return "\n".join(lines)

    def _rejections(self) -> list[str]:
        """Per source: how many were rejected, by kind of reason (a score under the threshold:
        with the best such score)."""
        groups: dict[tuple[str, str], list[float]] = {}
        for c, why in self.rejected:
            kind = "under the threshold" if why.startswith("score ") else f"with {why}"
            groups.setdefault((c.source, kind), []).append(c.score)
        return [f"{len(scores)} {source} {kind}" + (f" (best {max(scores):.2f})" if kind == "under the threshold" else "")
                for (source, kind), scores in groups.items()]

    def details(self) -> str:
        """One line per candidate: kept, dropped for the budget, or rejected and why."""
        def line(verdict: str, c: Candidate) -> str:
            return f"  {verdict} {c.source} {c.label!r} at {list(c.box)} score {c.score:.2f}"

        return "\n".join([line("kept", c) for c in self.kept]
                         + [line("dropped", c) + " (budget)" for c in self.dropped]
                         + [line("rejected", c) + f" ({why})" for c, why in self.rejected])

    def as_dict(self) -> dict:
        """JSON-friendly form (for `plic encode --json` style output and benchmarks)."""
        def describe(c: Candidate, **extra) -> dict:
            return {"source": c.source, "label": c.label, "box": list(c.box), "score": round(c.score, 3), **extra}

        return {"salient_bytes": self.salient_bytes, "bpp": self.bpp, "limit_bytes": self.limit_bytes,
                "codec": self.codec, "quality": self.quality, "regions": self.regions,
                "fraction": self.fraction, "kept": [describe(c) for c in self.kept],
                "rejected": [describe(c, reason=why) for c, why in self.rejected], "kept_counts": self.counts(),
                "dropped_counts": self.counts("dropped"), "notes": list(self.notes)}


def _counted(n: int, source: str) -> str:
    """"1 face", "2 faces", "1 text", "3 user"."""
    return f"{n} {source[:-1] if n == 1 and source.endswith('s') else source}"


def check_mask(mask: np.ndarray, size: tuple[int, int], what: str = "salient mask") -> np.ndarray:
    """A mask as a (H, W) bool array of the working ``size`` = (width, height)."""
    mask = np.asarray(mask)
    if mask.ndim == 3 and mask.shape[2] in (1, 3, 4):
        mask = mask[..., 0]
    if mask.ndim != 2:
        raise PlicInputError(f"{what}: expected a 2-D mask, got shape {mask.shape}")
    if (mask.shape[1], mask.shape[0]) != tuple(size):
        raise PlicInputError(
            f"{what} is {mask.shape[1]}x{mask.shape[0]} but the working image is "
            f"{size[0]}x{size[1]}; give a mask of the image's size"
        )
    return mask > (0.5 if mask.dtype.kind == "f" else 0)


def region_boxes(mask: np.ndarray, pad: int = DEFAULT_PAD,
                 merge_gap: int = 0) -> list[tuple[int, int, int, int]]:
    """Boxes (x, y, w, h) covering ``mask``: parts closer than ``merge_gap`` pixels share a
    box, each box grows by ``pad``, and overlapping boxes are merged until none overlap.
    The gap widens by itself if the boxes would exceed the format's region limit."""
    boxes = _group_boxes(mask, pad, merge_gap)
    while len(boxes) > MAX_REGIONS:
        merge_gap = 2 * merge_gap + 8
        boxes = _group_boxes(mask, pad, merge_gap)
    return [(x0, y0, x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes]


def _group_boxes(mask: np.ndarray, pad: int, merge_gap: int) -> list[tuple[int, int, int, int]]:
    import cv2

    grouped = mask.astype(np.uint8)
    if merge_gap > 0:
        grouped = cv2.dilate(grouped, np.ones((merge_gap + 1, merge_gap + 1), np.uint8))
    count, labels = cv2.connectedComponents(grouped, connectivity=8)
    ys, xs = np.nonzero(mask)
    owner = labels[ys, xs]
    x0, y0 = np.full(count, mask.shape[1]), np.full(count, mask.shape[0])
    x1, y1 = np.zeros(count, int), np.zeros(count, int)
    np.minimum.at(x0, owner, xs)
    np.minimum.at(y0, owner, ys)
    np.maximum.at(x1, owner, xs + 1)
    np.maximum.at(y1, owner, ys + 1)
    height, width = mask.shape
    boxes = [(max(0, x0[i] - pad), max(0, y0[i] - pad), min(width, x1[i] + pad), min(height, y1[i] + pad))
             for i in range(1, count) if x1[i] > 0]
    return merge_overlaps([tuple(int(v) for v in b) for b in boxes])


def grow_box(box, dx: int, dy: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` (x, y, w, h) grown by ``dx`` / ``dy`` on each side, clipped to the image."""
    x, y, w, h = box
    x0, y0 = max(0, x - dx), max(0, y - dy)
    return x0, y0, min(width, x + w + dx) - x0, min(height, y + h + dy) - y0


def merge_overlaps(boxes: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """(x0, y0, x1, y1) boxes merged until no two overlap."""
    merged = True
    while merged:
        merged = False
        out: list[tuple[int, int, int, int]] = []
        for box in boxes:
            for i, other in enumerate(out):
                if box[0] < other[2] and other[0] < box[2] and box[1] < other[3] and other[1] < box[3]:
                    out[i] = (min(box[0], other[0]), min(box[1], other[1]),
                              max(box[2], other[2]), max(box[3], other[3]))
                    merged = True
                    break
            else:
                out.append(box)
        boxes = out
    return boxes


def encode_crop(pixels: np.ndarray, codec: str = DEFAULT_CODEC, quality: int = DEFAULT_QUALITY) -> bytes:
    """One region's pixels as an image file in ``codec`` (see fileformat.REGION_CODECS)."""
    buffer = io.BytesIO()
    image = Image.fromarray(pixels)
    if codec == "png":
        image.save(buffer, format="PNG", optimize=True)
    elif codec == "webp-lossless":
        image.save(buffer, format="WEBP", lossless=True, **LOSSLESS_WEBP)
    elif codec == "webp":
        image.save(buffer, format="WEBP", quality=quality, method=6)
    else:
        _check_codec(codec)
    return buffer.getvalue()


def _check_codec(codec: str) -> None:
    if codec not in REGION_CODECS.values():
        raise PlicInputError(f"unknown salient codec {codec!r} (--salient-codec, or the codec input of "
                             f"PLIC Salient Regions); use one of {sorted(REGION_CODECS.values())}")


def quality_ladder(codec: str, quality: int, min_quality: int = DEFAULT_MIN_QUALITY) -> list[tuple[str, int]]:
    """The (codec, quality) steps :func:`store` tries, best first: the requested one, the other
    lossless codec when it was lossless, then WebP from ``quality`` (90 after lossless) down to
    ``min_quality`` in steps of 10."""
    _check_codec(codec)
    if codec in LOSSLESS_CODECS:
        steps = [(codec, quality)] + [(c, quality) for c in LOSSLESS_CODECS if c != codec]
        start = 90
    else:
        steps, start = [], quality
    steps += [("webp", q) for q in range(start, min_quality - 1, -10)]
    return steps or [("webp", quality)]


def pixels_cost(mask_stream: bytes | None, regions: list[SalientRegion]) -> int:
    """Bytes the salient mask and pixel sections add to a .plic file (framing included)."""
    if mask_stream is None:
        return 0
    spix = 2 + sum(_REGION_OVERHEAD + len(r.data) for r in regions)
    return 2 * _SECTION_OVERHEAD + len(mask_stream) + spix


@dataclass
class _Selection:
    """What :func:`store` keeps for one prefix of its candidates: the mask, and all that does not
    depend on the stored quality (worked out once, then priced at several ladder steps)."""

    mask: np.ndarray  # (H, W) bool
    allowed: bool  # within Budget.max_fraction
    boxes: list[tuple[int, int, int, int]]
    masked: np.ndarray | None  # the image, zero outside the mask
    quick_stream: bytes | None  # the mask coded with _QUICK_JBIG2 (None when empty)

    @classmethod
    def of(cls, rgb: np.ndarray, candidates: list[Candidate], max_fraction: float | None,
           pad: int, merge_gap: int) -> "_Selection":
        mask = union_mask(candidates, (rgb.shape[1], rgb.shape[0]))
        allowed = max_fraction is None or mask.mean() <= max_fraction
        if not (allowed and mask.any()):
            return cls(mask, allowed, [], None, None)
        return cls(mask, True, region_boxes(mask, pad, merge_gap),
                   np.where(mask[..., None], rgb, 0).astype(np.uint8),
                   jbig2.encode_embedded(mask.astype(np.uint8), **_QUICK_JBIG2))

    def regions(self, codec: str, quality: int, crops: dict) -> list[SalientRegion]:
        """Each box's pixels as an image in ``codec``; ``crops`` caches encoded boxes across
        selections and steps of the same image."""
        regions = []
        for x, y, w, h in self.boxes:
            key = (x, y, w, h, codec, quality, self.mask[y:y + h, x:x + w].tobytes())
            if key not in crops:
                crops[key] = encode_crop(self.masked[y:y + h, x:x + w], codec, quality)
            regions.append(SalientRegion(x, y, w, h, codec, crops[key]))
        return regions


@dataclass(frozen=True)
class SalientPart:
    """The salient pixels of one image as PLIC Pack and :func:`plic.codec.pack.pack_parts` take them:
    the JBIG2 ``mask_stream`` (None when nothing is kept), the stored ``regions`` and the
    ``working_size`` (width, height) of the image they were taken from."""

    mask_stream: bytes | None
    regions: tuple[SalientRegion, ...]
    working_size: tuple[int, int]


@dataclass
class Stored:
    """The result of :func:`store`: what goes into the file, and the report."""

    mask_stream: bytes | None
    regions: list[SalientRegion]
    report: Report
    mask: np.ndarray  # (H, W) bool, what was kept

    @property
    def part(self) -> SalientPart:
        """What PLIC Pack takes."""
        return SalientPart(self.mask_stream, tuple(self.regions), self.report.size)


def keep_order(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates most worth keeping first: highest score, then smallest area."""
    return sorted(candidates, key=lambda c: (-c.score, c.area))


def store(rgb: np.ndarray, candidates: list[Candidate], *, codec: str = DEFAULT_CODEC,
          quality: int = DEFAULT_QUALITY,
          budget: Budget = Budget(), min_quality: int = DEFAULT_MIN_QUALITY, pad: int = DEFAULT_PAD,
          merge_gap: int = DEFAULT_MERGE_GAP) -> Stored:
    """Store the pixels of ``rgb`` (the working image) under ``candidates``
    within ``budget``. If every candidate fits at the cheapest step of :func:`quality_ladder`
    they are all kept, at the best step that fits; otherwise the longest prefix of
    :func:`keep_order` that fits at the cheapest step is kept, again at the best step that fits.
    (Costs are taken as growing with the count and with the quality; the result is always one
    that was checked to fit.)"""
    rgb = check_rgb(rgb)
    budget.check()
    size = (rgb.shape[1], rgb.shape[0])
    limit = budget.limit_bytes(size)
    ordered = keep_order(candidates)
    ladder = quality_ladder(codec, quality, min_quality)
    selections: dict[int, _Selection] = {}
    fitting: dict[tuple[int, int], bool] = {}
    crops: dict = {}

    def selection(count: int) -> _Selection:
        if count not in selections:
            selections[count] = _Selection.of(rgb, ordered[:count], budget.max_fraction, pad, merge_gap)
        return selections[count]

    def fits(count: int, step: int) -> bool:
        """Whether the first ``count`` candidates fit at ladder ``step`` (mask coded quickly)."""
        if (count, step) not in fitting:
            chosen = selection(count)
            cost = pixels_cost(chosen.quick_stream, chosen.regions(*ladder[step], crops))
            fitting[(count, step)] = chosen.allowed and cost <= limit
        return fitting[(count, step)]

    cheapest = len(ladder) - 1
    count = len(ordered)
    if not fits(count, cheapest):
        count = _longest_fitting_prefix(lambda k: fits(k, cheapest), count)
    step = cheapest - _longest_fitting_prefix(lambda s: fits(count, cheapest - s), cheapest + 1)
    chosen = selection(count)
    mask = chosen.mask
    # The full parameter search also tries the quick set, so this stream is never longer.
    stream = jbig2.encode_embedded(mask.astype(np.uint8)) if chosen.boxes else None
    regions = chosen.regions(*ladder[step], crops)
    cost = pixels_cost(stream, regions)
    report = Report(size=size, limit_bytes=limit, salient_bytes=cost, codec=ladder[step][0],
                    quality=ladder[step][1], kept=ordered[:count], dropped=ordered[count:],
                    regions=len(regions), fraction=float(mask.mean()))
    if (report.codec, report.quality) != ladder[0] and count:
        report.notes.append(f"stored as {report.codec} q{report.quality} instead of {codec} to fit the budget")
    return Stored(stream, regions, report, mask)


def _longest_fitting_prefix(fits, total: int) -> int:
    """The largest k in 0..total-1 with fits(k) by bisection, given fits(0) (fitting assumed
    monotone; fits(total) is never called). The answer is always 0 or one checked to fit."""
    low, high = 0, total
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            low = middle
        else:
            high = middle
    return low


def pack(rgb: np.ndarray, mask: np.ndarray, *, codec: str = DEFAULT_CODEC, quality: int = DEFAULT_QUALITY,
         pad: int = DEFAULT_PAD, budget: Budget = UNLIMITED) -> tuple[bytes | None, list[SalientRegion]]:
    """Store the pixels of ``rgb`` under ``mask`` within ``budget``: the JBIG2 mask stream and
    the regions (each connected part of the mask is a candidate; see :func:`store`). A mask
    given explicitly is only capped at the raw size of the image by default; the detectors'
    path (:func:`plic.salient.detect.run_salient`) applies :class:`Budget`'s default.

    Pixels inside a box but outside the mask are zeroed, which costs almost nothing to store
    and is never shown (the decoder regenerates them). An empty mask stores nothing."""
    mask = check_mask(mask, (rgb.shape[1], rgb.shape[0]))
    stored = store(rgb, user_candidates(mask), codec=codec, quality=quality, budget=budget, pad=pad)
    return stored.mask_stream, stored.regions


def unpack(mask_stream: bytes | None, regions: list[SalientRegion],
           size: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray]:
    """The kept-pixel mask (bool, or None when nothing is salient) and an RGB image of the
    working ``size`` holding the stored pixels (zero elsewhere)."""
    width, height = size
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    if mask_stream is None:
        return None, pixels
    mask = jbig2.decode(mask_stream, max_pixels=width * height).astype(bool)
    if mask.shape != (height, width):
        raise ValueError(f"salient mask is {mask.shape[1]}x{mask.shape[0]}, expected {width}x{height}")
    for r in regions:
        with Image.open(io.BytesIO(r.data)) as im:
            if im.size != (r.width, r.height):
                raise ValueError(f"salient region at ({r.x}, {r.y}) holds a {im.size[0]}x{im.size[1]} "
                                 f"image, expected {r.width}x{r.height}")
            crop = np.asarray(im.convert("RGB"), dtype=np.uint8)
        box = (slice(r.y, r.y + r.height), slice(r.x, r.x + r.width))
        pixels[box] = np.where(mask[box][..., None], crop, pixels[box])
    return mask, pixels
