"""Rate control: bring a whole .plic file to a size by searching the encoder's own settings.

:func:`fit` starts from the given settings (the paper's by default) and, only while the file is
over the target, changes them in this order (docs/ratecontrol.md gives the reasons and sources):

1. drop the shortest edge fragments (8-connected components of the Canny map, see
   :func:`plic.codec.edges.fragments`): texture a diffusion model redraws anyway. Fragments of
   :data:`STRUCTURE_SHARE` of the image's longer side or more are structure lines and stay;
2. raise the Canny thresholds along :data:`THRESHOLD_LADDER`, which stays inside the range the
   ControlNets were used with (high <= 255), doing step 1 again at each;
3. lower the palette's WebP quality along :data:`PALETTE_QUALITIES`;
4. store the salient pixels more cheaply (:func:`plic.codec.salient.quality_ladder`; none is dropped);
5. only then drop longer fragments as well, still shortest first.

The first step at which the file can fit wins, and within it the fewest fragments are dropped.
Every candidate is priced exactly: the edge map is coded and the file's framing added, and the
chosen file is assembled and measured. The result is a normal .plic; the decoder needs nothing
new.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, features

from plic.codec import edges as edges_mod
from plic.codec import fileformat, pack
from plic.codec import salient as salient_mod
from plic.errors import PlicInputError

#: Canny (low, high) thresholds rate control may raise to, in order. The ControlNet authors'
#: demos (gradio_canny.py of ControlNet 1.0 and 1.1) offer 1..255 with defaults 100/200; the
#: ladder keeps the paper's 1:2 ratio up to the top of that range (docs/ratecontrol.md).
THRESHOLD_LADDER = ((100, 200), (110, 220), (120, 240), (127, 255))
#: Palette WebP qualities tried, after the thresholds, best first.
PALETTE_QUALITIES = (60, 40, 20)
#: Fragments at least this share of the working image's longer side long are structure lines:
#: kept until every other knob is spent (128 px at 1024).
STRUCTURE_SHARE = 1 / 8
#: The search stops once a fitting file is within this share of the target: closer would keep
#: a few more edge pixels for several more trials.
CLOSE_ENOUGH = 0.97
#: The target users are pointed to when a file comes out larger than WebP at quality 0.
SUGGESTED_BPP = 0.05


def target_bytes(size: tuple[int, int], bpp: float | None = None, n_bytes: int | None = None) -> int | None:
    """The byte target for a working image of ``size`` = (width, height): ``bpp`` bits per
    pixel and/or ``n_bytes`` (the smaller when both are given); None when neither is."""
    targets = []
    if bpp is not None:
        if not bpp > 0:
            raise PlicInputError(f"the target must be above 0 bpp, got {bpp}")
        targets.append(int(bpp * size[0] * size[1] / 8))
    if n_bytes is not None:
        if n_bytes < 1:
            raise PlicInputError(f"the target must be at least 1 byte, got {n_bytes}")
        targets.append(int(n_bytes))
    return min(targets) if targets else None


@dataclass(frozen=True)
class _Step:
    """One setting of the knobs :func:`fit` turns, and the longest fragments it may drop
    (None: any)."""

    canny: tuple[int, int]
    palette: pack.PalettePart
    salient: pack.SalientPart | None
    salient_codec: str | None
    max_drop: int | None


@dataclass
class Result:
    """What :func:`fit` made: the file (``plic``, ``data``) and what it changed to get there."""

    plic: fileformat.PlicFile
    data: bytes
    target: int
    start_bytes: int  # the file at the starting settings
    before: np.ndarray  # (H, W) uint8 edge map at the starting settings
    after: np.ndarray  # (H, W) uint8 edge map stored
    start: tuple[tuple[int, int], int, str | None]  # Canny, palette quality, salient codec
    canny: tuple[int, int]
    palette_quality: int
    salient_codec: str | None
    min_length: int = 0  # fragments shorter than this were dropped
    structure_length: int = 0
    reason: str | None = None  # why the target was not met
    searched: bool = False  # False: the starting settings fit, nothing was changed

    @property
    def met(self) -> bool:
        return len(self.data) <= self.target

    @property
    def kept_share(self) -> float:
        """Share of the starting edge pixels still stored."""
        total = int(self.before.sum())
        return 1.0 if total == 0 else int(self.after.sum()) / total

    @property
    def removed(self) -> np.ndarray:
        """(H, W) bool: edge pixels of the starting map that are not stored."""
        return _removed(self.before, self.after)

    @property
    def longest_removed(self) -> int:
        """Length in pixels of the longest 8-connected piece of removed edges (0: none)."""
        return int(edges_mod.fragments(self.removed)[1].max(initial=0))

    def changes(self) -> list[str]:
        """What was changed, one phrase each, in the order the search turns the knobs."""
        (low, high), quality, salient_codec = self.start
        out = []
        if self.min_length:
            beyond = (f", structure lines of {self.structure_length} px or more included"
                      if self.min_length > self.structure_length else "")
            out.append(f"dropped edge fragments shorter than {self.min_length} px{beyond}")
        if self.canny != (low, high):
            out.append(f"Canny {low}/{high} -> {self.canny[0]}/{self.canny[1]}")
        if self.palette_quality != quality:
            out.append(f"palette WebP q{quality} -> q{self.palette_quality}")
        if self.salient_codec != salient_codec:
            out.append(f"salient pixels {salient_codec} -> {self.salient_codec}")
        return out

    def summary(self) -> str:
        """Two or three lines for the command line or a node's text."""
        size = self.plic.working_size
        head = (f"rate control: {self.start_bytes} -> {len(self.data)} bytes for a target of "
                f"{self.target} ({pack.bits_per_pixel(self.target, size):.4f} bpp)")
        if not self.searched:
            return head + "; the starting settings already fit"
        lines = [head + ("" if self.met else " (NOT met)"),
                 "  " + ("; ".join(self.changes()) or "nothing changed"),
                 f"  kept {self.kept_share:.1%} of the edge pixels; longest fragment removed "
                 f"{self.longest_removed} px"]
        if self.reason:
            lines.append(f"  cannot reach the target: {self.reason}")
        return "\n".join(lines)


class _Pricer:
    """Bytes of the file for an edge map, with everything else of a step fixed. The edges
    section's framing is constant, so a step's other bytes are measured once."""

    def __init__(self, work, original_size, prompt, decode_settings):
        self.size = (work.shape[1], work.shape[0])
        self.original_size = original_size
        self.prompt = prompt
        self.decode_settings = decode_settings
        self._maps: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._overhead: dict[tuple, int] = {}
        self._streams: dict[tuple[tuple[int, int], int], bytes] = {}
        self.work = work

    def fragments(self, canny: tuple[int, int]):
        """(map, labels, lengths) of the Canny map at ``canny``."""
        if canny not in self._maps:
            bitmap = edges_mod.canny(self.work, *canny)
            self._maps[canny] = (bitmap, *edges_mod.fragments(bitmap))
        return self._maps[canny]

    def edge_map(self, canny, min_length: int) -> np.ndarray:
        bitmap, labels, lengths = self.fragments(canny)
        return bitmap if min_length <= 1 else edges_mod.keep_long(labels, lengths, min_length)

    def stream(self, canny, min_length: int) -> bytes:
        """The map coded quickly (JBIG2 effort "fast"): what a trial is priced with."""
        key = (canny, min_length)
        if key not in self._streams:
            self._streams[key] = edges_mod.pack(self.edge_map(canny, min_length), effort="fast")
        return self._streams[key]

    def assemble(self, step: _Step, min_length: int, stream: bytes | None = None):
        """The file of ``step`` with fragments shorter than ``min_length`` dropped, and its bytes;
        ``stream`` is the coded map when already made (the quick one otherwise)."""
        bitmap = self.edge_map(step.canny, min_length)
        stream = stream or self.stream(step.canny, min_length)
        edges = pack.EdgesPart(self.original_size, self.size, stream, bitmap, self.work, step.canny)
        plic = pack.pack_parts(prompt=self.prompt, edges=edges, palette=step.palette,
                                salient=step.salient, decode_settings=self.decode_settings)
        return plic, fileformat.dumps(plic)

    def price(self, step: _Step, min_length: int) -> int:
        key = (step.palette.quality, step.salient_codec)  # what a step's other sections depend on
        if key not in self._overhead:
            stream = self.stream(step.canny, min_length)
            self._overhead[key] = len(self.assemble(step, min_length)[1]) - len(stream)
        return self._overhead[key] + len(self.stream(step.canny, min_length))


def fit(work: np.ndarray, original_size: tuple[int, int], target: int, *, prompt: str = "",
        settings: pack.EncodeSettings = pack.EncodeSettings(),
        salient: pack.SalientPart | None = None, decode_settings: dict | None = None,
        palette: pack.PalettePart | None = None) -> Result:
    """Encode the working image ``work`` (with its packed ``salient`` part) at most ``target``
    bytes long, as the module's docstring says. ``palette`` is the palette at the starting
    settings when already made. When nothing fits, the result is the smallest file that keeps
    the structure lines and ``reason`` says what took the room."""
    if target < 1:
        raise PlicInputError(f"the target must be at least 1 byte, got {target}")
    if salient is not None:
        pack.check_salient_fits(salient, (work.shape[1], work.shape[0]))
    pricer = _Pricer(work, original_size, prompt, decode_settings)
    start_canny = (settings.canny_low, settings.canny_high)
    palette = palette or pack.palette_part(work, settings.palette_size, settings.palette_quality)
    structure = max(2, round(max(pricer.size) * STRUCTURE_SHARE))
    first = _Step(start_canny, palette, salient, _salient_codec(salient), structure)
    start_plic, start_data = pricer.assemble(first, 0, edges_mod.pack(pricer.edge_map(start_canny, 0)))
    result = Result(start_plic, start_data, target, len(start_data), pricer.edge_map(start_canny, 0),
                    pricer.edge_map(start_canny, 0), (start_canny, palette.quality, first.salient_codec),
                    start_canny, palette.quality, first.salient_codec, structure_length=structure)
    if len(start_data) <= target:
        return result
    step, last = _first_fitting(first, pricer, settings, target)
    if step is None:
        done = _finish(result, pricer, replace(last, max_drop=structure), structure)
        done.reason = _why(done, last)
        return done
    cutoffs = _cutoffs(pricer, step)
    kept = _kept_pixels(pricer.fragments(step.canny)[2], cutoffs)
    return _finish(result, pricer, step, _fewest_dropped(lambda c: pricer.price(step, c), cutoffs, kept, target))


def _cutoffs(pricer: _Pricer, step: _Step) -> np.ndarray:
    """The min_length values worth trying for ``step``, fewest dropped first: 0 keeps every
    fragment, u + 1 drops those of length u and less; the last drops all ``step`` may drop."""
    lengths = np.unique(pricer.fragments(step.canny)[2][1:])
    limit = int(lengths.max(initial=0)) + 1 if step.max_drop is None else step.max_drop
    return np.array([0] + [int(u) + 1 for u in lengths if u + 1 < limit] + [limit])


def _first_fitting(first: _Step, pricer: _Pricer, settings: pack.EncodeSettings, target: int):
    """(the first step of the search that fits once it drops all it may, the last step tried);
    the step is None when none fits. Each step of a stage removes more than the one before, so
    a stage whose last step does not fit is passed over after that one trial."""
    def fits(step: _Step) -> bool:
        return pricer.price(step, int(_cutoffs(pricer, step)[-1])) <= target

    if fits(first):
        return first, first
    base = first
    for options, make in _stages(first, pricer, settings):
        if not options:
            continue
        last = make(base, options[-1])
        if fits(last):
            return next((step for step in map(lambda o: make(base, o), options[:-1]) if fits(step)), last), last
        base = last
    return None, base


def _kept_pixels(lengths: np.ndarray, cutoffs: np.ndarray) -> np.ndarray:
    """Edge pixels kept at each cutoff (fragments shorter than it dropped)."""
    ordered = np.sort(lengths[1:])
    from_each = np.concatenate([np.cumsum(ordered[::-1])[::-1], [0]])  # pixels of ordered[i:]
    return from_each[np.searchsorted(ordered, cutoffs, side="left")]


def _fewest_dropped(price, cutoffs: np.ndarray, kept: np.ndarray, target: int) -> int:
    """The smallest of ``cutoffs`` (increasing; the last fits) whose ``price`` fits ``target``,
    or one fitting within CLOSE_ENOUGH of it. Trials interpolate the price on the kept pixels
    (bytes grow about linearly with them), every other one halves the interval instead."""
    low, high = 0, len(cutoffs) - 1
    price_low, price_high = price(int(cutoffs[low])), price(int(cutoffs[high]))
    if price_low <= target:
        return int(cutoffs[low])
    interpolate = True
    while high - low > 1 and price_high < CLOSE_ENOUGH * target:
        middle = (low + high) // 2
        if interpolate and price_low > price_high:
            share = (price_low - target) / (price_low - price_high)
            wanted = kept[low] - share * (kept[low] - kept[high])
            guess = low + int(np.searchsorted(-kept[low:high + 1], -wanted, side="left"))
            middle = min(max(guess, low + 1), high - 1)
        interpolate = not interpolate
        trial = price(int(cutoffs[middle]))
        if trial <= target:
            high, price_high = middle, trial
        else:
            low, price_low = middle, trial
    return int(cutoffs[high])


def _finish(result: Result, pricer: _Pricer, step: _Step, min_length: int) -> Result:
    """The result of ``step`` at ``min_length``: the map coded as the encoder always does, or
    the quick stream priced during the search where that is shorter."""
    quick = pricer.stream(step.canny, min_length)
    full = edges_mod.pack(pricer.edge_map(step.canny, min_length))
    plic, data = pricer.assemble(step, min_length, min(full, quick, key=len))
    return replace(result, plic=plic, data=data, after=pricer.edge_map(step.canny, min_length),
                   canny=step.canny, palette_quality=step.palette.quality,
                   salient_codec=step.salient_codec, min_length=min_length, searched=True)


def _why(done: Result, step: _Step) -> str:
    """Why even an empty edge map would not bring the file to the target."""
    sizes = done.plic.section_sizes()
    salient = sizes.get("salient_mask", 0) + sizes.get("salient_pixels", 0)
    edges = sizes.get("edges", 0)
    rest = len(done.data) - edges
    if salient >= done.target:
        return (f"the salient regions alone take {salient} bytes at their cheapest "
                f"({step.salient_codec}); lower --salient-budget or keep fewer regions")
    return (f"the file without edges would still take {rest} bytes (prompt "
            f"{sizes.get('prompt', 0)}, palette {sizes.get('palette', 0)}, salient {salient}, "
            f"framing); the structure lines kept take {edges} bytes")


def _salient_codec(part: pack.SalientPart | None) -> str | None:
    if part is None or part.mask_stream is None or not part.regions:
        return None
    kinds = sorted({r.codec for r in part.regions})
    return "+".join(kinds)


def _stages(first: _Step, pricer: _Pricer, settings: pack.EncodeSettings):
    """The stages of the search after ``first`` (module docstring): (options, make) pairs, where
    make(base, option) is the step of that option on top of ``base``, the previous stage's last
    step. Options are worked out only when the search reaches their stage."""
    yield ([t for t in THRESHOLD_LADDER if t[1] > first.canny[1] and t[0] >= first.canny[0]],
           lambda base, canny: replace(base, canny=canny))
    yield ([q for q in PALETTE_QUALITIES if q < first.palette.quality],
           lambda base, quality: replace(base, palette=pack.palette_part(pricer.work, settings.palette_size,
                                                                          quality)))
    yield _cheaper_salient(first.salient)
    yield [None], lambda base, _: replace(base, max_drop=None)


def _cheaper_salient(part: pack.SalientPart | None):
    """(options, make) of the salient stage: the cheaper steps of the salient quality ladder
    and the step that stores the pixels of ``part`` at one of them, every region kept."""
    if part is None or part.mask_stream is None:
        return [], None
    mask, pixels = salient_mod.unpack(part.mask_stream, list(part.regions), part.working_size)
    lossless = all(r.codec in salient_mod.LOSSLESS_CODECS for r in part.regions)

    def make(base: _Step, option: tuple[str, int]) -> _Step:
        kind, quality = option
        stream, regions = salient_mod.pack(pixels, mask, codec=kind, quality=quality)
        label = kind if kind in salient_mod.LOSSLESS_CODECS else f"{kind} q{quality}"
        return replace(base, salient=pack.SalientPart(stream, tuple(regions), part.working_size),
                       salient_codec=label)

    return salient_mod.quality_ladder("png" if lossless else "webp", 90)[1:], make


# -- telling users, and comparing with the usual codecs ------------------------------------------

#: Pillow's save options for WebP at its lowest quality, the size a .plic is compared with.
WEBP_Q0 = {"format": "WEBP", "quality": 0, "method": 6}


def reference_sizes(rgb: np.ndarray, avif: bool = True) -> dict[str, int | None]:
    """Bytes of ``rgb`` as JPEG at quality 1, WebP at quality 0 and (when ``avif``) AVIF at
    quality 0: the smallest files those codecs make. ``avif_q0`` is None when this Pillow was
    built without AVIF (see :func:`avif_available`)."""
    options = {"jpeg_q1": {"format": "JPEG", "quality": 1},
               "webp_q0": WEBP_Q0}
    if avif:
        options["avif_q0"] = {"format": "AVIF", "quality": 0} if avif_available() else None
    sizes = {}
    for name, save in options.items():
        sizes[name] = None if save is None else _encoded_size(rgb, save)
    return sizes


def avif_available() -> bool:
    """Whether this Pillow can write AVIF (Pillow 11.3+ built with libavif)."""
    return bool(features.check("avif"))


def _encoded_size(rgb: np.ndarray, save: dict) -> int:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, **save)
    return len(buffer.getvalue())


@dataclass(frozen=True)
class Encoded:
    """One file as :func:`encode_to` made it: the ``plic`` and its ``data``, a ``note`` for the
    user (rate control's summary, or the WebP note; None when there is nothing to say) and the
    edge map ``stored`` (what a preview of removed edges compares with)."""

    plic: fileformat.PlicFile
    data: bytes
    note: str | None
    stored: np.ndarray


def encode_to(work: np.ndarray, original_size: tuple[int, int], target: int | None, *,
              prompt: str, settings: pack.EncodeSettings, how: str,
              parts: tuple[pack.EdgesPart, pack.PalettePart | None] | None = None,
              salient: pack.SalientPart | None = None, decode_settings: dict | None = None) -> Encoded:
    """The file of the working image ``work`` at the paper's settings (``target`` None; then
    with a note when it is larger than the image as WebP at quality 0, ``how`` naming the
    option that sets a target), or brought to at most ``target`` bytes by :func:`fit`.
    ``parts`` are the edges and palette already coded from ``work`` at ``settings`` (coded
    here when needed otherwise). What ``plic encode`` and PLIC Pack both do."""
    if target is not None:
        fitted = fit(work, original_size, target, prompt=prompt, settings=settings, salient=salient,
                     decode_settings=decode_settings, palette=parts[1] if parts else None)
        return Encoded(fitted.plic, fitted.data, fitted.summary(), fitted.after)
    edges, palette = parts or pack.image_parts(work, original_size, settings)
    plic = pack.pack_parts(prompt=prompt, edges=edges, palette=palette, salient=salient,
                            decode_settings=decode_settings)
    data = fileformat.dumps(plic)
    return Encoded(plic, data, webp_warning(len(data), work, how), edges.bitmap)


def webp_warning(n_bytes: int, work: np.ndarray, how: str) -> str | None:
    """A note when a file of ``n_bytes`` is larger than the working image ``work`` at WebP
    quality 0, suggesting a target (``how`` names the option: "--target-bpp 0.05"...)."""
    webp = _encoded_size(work, WEBP_Q0)
    if n_bytes <= webp:
        return None
    return (f"note: this file is larger than the image as WebP at quality 0 ({webp} bytes); "
            f"{how} searches for smaller settings (fewer texture edges)")


def _removed(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """(H, W) bool: edge pixels of the map ``before`` that are not in ``after``."""
    return before.astype(bool) & ~after.astype(bool)


def removed_preview(before: np.ndarray, after: np.ndarray) -> np.ndarray:
    """RGB picture of what rate control removed: kept edges black, removed edges red, on white."""
    picture = np.full(before.shape + (3,), 255, dtype=np.uint8)
    picture[_removed(before, after)] = (230, 0, 0)
    picture[after.astype(bool)] = 0
    return picture
