"""Finding salient regions: faces, text, prompt matches (Grounding DINO + SAM) and user masks.

Each detector returns :class:`Candidate` regions of the working image; :func:`find_salient`
runs the chosen ones and :mod:`plic.salient` stores them within a byte budget, dropping the
least important candidates first (lowest ``score``, then largest area).

Sources:

* ``faces`` - OpenCV's Haar cascades (frontal + profile both ways); no download.
* ``text`` - Tesseract word boxes (Debian ``tesseract-ocr`` + ``pytesseract``).
* ``dino+sam`` - Grounding DINO + Segment Anything from local model folders (the paper's way).
* a user mask (ComfyUI MASK, or a PNG on the command line): always kept first.
"""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import salient
from .deps import require
from .errors import MissingDependencyError, PlicInputError
from .grounded_sam import GroundedSAM, ModelFolders
from .image import check_rgb, load_rgb, resize
from .models import models_dir_from_env
from .salient import Candidate, check_mask, count_sources, union_mask, user_candidates

SOURCES = ("faces", "text", "dino+sam")
#: What a fresh install can run with no downloads (text only where Tesseract is installed).
DEFAULT_SOURCES = ("faces", "text")
DEFAULT_DINO_PROMPT = "face . text . logo"
DEFAULT_BOX_THRESHOLD = 0.35
DEFAULT_TEXT_THRESHOLD = 0.25
#: Tesseract word confidence (0-100) a word needs to count as text.
DEFAULT_TEXT_CONFIDENCE = 60
#: Smallest face searched for, as a fraction of the image's shorter side.
DEFAULT_FACE_MIN_FRACTION = 0.05
#: Faces are grown by this fraction of their box on each side (hair, chin, ears).
FACE_MARGIN = 0.1


@dataclass
class SalientResult:
    """What :func:`find_salient` found: the union mask, every candidate and notes (skipped
    detectors and why)."""

    mask: np.ndarray  # (H, W) bool
    candidates: list[Candidate]
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        """Candidates per source."""
        return count_sources(self.candidates)


def parse_sources(value: str | list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """'faces,text' / ['faces', 'dino+sam'] / 'none' to a tuple of known source names."""
    if value is None:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    names = tuple(dict.fromkeys(s.strip().lower() for s in items if s.strip()))
    if names in ((), ("none",)):
        return ()
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise PlicInputError(f"unknown salient source(s) {unknown}; use any of {list(SOURCES)} or 'none'")
    return names


# --- faces -------------------------------------------------------------------------------------

_CASCADES: dict[str, object] = {}


def _cascade(name: str):
    cv2 = require("cv2", package="opencv-contrib-python-headless<5", purpose="Face detection")
    if name not in _CASCADES:
        folder = getattr(getattr(cv2, "data", None), "haarcascades", "") or ""
        path = os.path.join(folder, name)
        classifier = cv2.CascadeClassifier(path) if os.path.isfile(path) else None
        if classifier is None or classifier.empty():
            raise MissingDependencyError(
                f"face detection needs OpenCV's {name}, which this OpenCV does not ship (OpenCV 5 "
                f"wheels have no cascades): pip install 'opencv-contrib-python-headless<5'")
        _CASCADES[name] = classifier
    return _CASCADES[name]


def _cascade_score(weight: float) -> float:
    """A cascade's level weight (about 0..10 for found faces) mapped to 0..1."""
    return 1.0 - math.exp(-max(float(weight), 0.0) / 3.0)


def detect_faces(rgb: np.ndarray, *, min_fraction: float = DEFAULT_FACE_MIN_FRACTION,
                 margin: float = FACE_MARGIN) -> list[Candidate]:
    """Frontal and profile (both directions) faces, boxes grown by ``margin``."""
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    height, width = gray.shape
    side = max(20, int(min(height, width) * min_fraction))
    found = []
    for label, name, flipped in (("face", "haarcascade_frontalface_default.xml", False),
                                 ("profile face", "haarcascade_profileface.xml", False),
                                 ("profile face", "haarcascade_profileface.xml", True)):
        image = gray[:, ::-1].copy() if flipped else gray
        rects, _levels, weights = _cascade(name).detectMultiScale3(
            image, scaleFactor=1.1, minNeighbors=5, minSize=(side, side), outputRejectLevels=True)
        for rect, weight in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).ravel()):
            x, y, w, h = (int(v) for v in rect)
            x = width - x - w if flipped else x
            box = _grown((x, y, w, h), round(w * margin), round(h * margin), width, height)
            found.append(Candidate("faces", label, box, _cascade_score(weight)))
    return found


def _grown(box, dx: int, dy: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` (x, y, w, h) grown by ``dx`` / ``dy`` on each side, clipped to the image."""
    x, y, w, h = box
    x0, y0 = max(0, x - dx), max(0, y - dy)
    return x0, y0, min(width, x + w + dx) - x0, min(height, y + h + dy) - y0


# --- text --------------------------------------------------------------------------------------

def tesseract_available() -> bool:
    """Whether the ``tesseract`` program and the ``pytesseract`` package are both present."""
    try:
        import pytesseract
    except ImportError:
        return False
    command = getattr(pytesseract.pytesseract, "tesseract_cmd", "tesseract")
    return shutil.which(command) is not None or os.path.isfile(command)


def detect_text(rgb: np.ndarray, *, min_confidence: float = DEFAULT_TEXT_CONFIDENCE,
                pad: int = 2) -> list[Candidate]:
    """Tesseract's word boxes with at least ``min_confidence`` (0-100)."""
    pytesseract = require("pytesseract", package="pytesseract", purpose="Text detection")
    if not tesseract_available():
        raise MissingDependencyError(
            "text detection needs the Tesseract program: install it (Debian/Ubuntu: apt-get install "
            "tesseract-ocr; Windows/macOS: https://tesseract-ocr.github.io/tessdoc/Installation.html)")
    data = pytesseract.image_to_data(rgb, output_type=pytesseract.Output.DICT)
    height, width = rgb.shape[:2]
    found = []
    for text, conf, x, y, w, h in zip(data["text"], data["conf"], data["left"], data["top"],
                                      data["width"], data["height"]):
        confidence = float(conf)
        if not str(text).strip() or confidence < min_confidence or w <= 0 or h <= 0:
            continue
        box = _grown((x, y, w, h), pad, pad, width, height)
        found.append(Candidate("text", str(text).strip(), box, confidence / 100.0))
    return found


# --- Grounding DINO + SAM ----------------------------------------------------------------------

def detect_prompt(rgb: np.ndarray, folders, *, prompt: str = DEFAULT_DINO_PROMPT,
                  box_threshold: float = DEFAULT_BOX_THRESHOLD,
                  text_threshold: float = DEFAULT_TEXT_THRESHOLD, dino_model: str | None = None,
                  sam_model: str | None = None, dino_size: int = 800) -> list[Candidate]:
    """Grounding DINO boxes for ``prompt``, masked by Segment Anything (see plic.grounded_sam)."""
    model = GroundedSAM.load(folders, dino_model, sam_model)
    found = []
    for det in model.detect(rgb, prompt, box_threshold=box_threshold, text_threshold=text_threshold,
                            short_side=dino_size):
        x, y, w, h = det.box
        inside = det.mask[y:y + h, x:x + w]
        if inside.any():
            found.append(Candidate("dino+sam", det.phrase or prompt, det.box, det.score, inside.copy()))
    return found


def model_folders(models_dir: str | os.PathLike | None = None):
    """The Grounding DINO / SAM folders under ``models_dir`` or $PLIC_MODELS_DIR."""
    root = models_dir or models_dir_from_env()
    if not root:
        raise PlicInputError(
            "dino+sam needs a models folder: pass models_dir (command line: --models-dir) or set "
            "PLIC_MODELS_DIR to a folder holding grounding-dino/, sams/ and bert-base-uncased/")
    return ModelFolders.under(Path(root))


# --- user masks and the whole step -------------------------------------------------------------

def find_salient(rgb: np.ndarray, sources=DEFAULT_SOURCES, user_mask: np.ndarray | None = None, *,
                 folders=None, models_dir: str | os.PathLike | None = None, strict=True,
                 dino_prompt: str = DEFAULT_DINO_PROMPT, box_threshold: float = DEFAULT_BOX_THRESHOLD,
                 text_threshold: float = DEFAULT_TEXT_THRESHOLD, dino_model: str | None = None,
                 sam_model: str | None = None, text_confidence: float = DEFAULT_TEXT_CONFIDENCE,
                 face_min_fraction: float = DEFAULT_FACE_MIN_FRACTION, dino_size: int = 800) -> SalientResult:
    """Run the detectors in ``sources`` on the working image ``rgb`` and add ``user_mask``.

    A detector that cannot run (Tesseract not installed, model missing) raises if ``strict`` is
    True or names it (a collection of sources); otherwise it is skipped and the reason is
    recorded in ``notes``. ``folders`` (a
    plic.grounded_sam.ModelFolders) wins over ``models_dir`` for dino+sam; ``dino_size`` is the
    short side Grounding DINO sees (800 as trained; smaller is faster and coarser)."""
    rgb = check_rgb(rgb)
    size = (rgb.shape[1], rgb.shape[0])
    candidates: list[Candidate] = []
    notes: list[str] = []
    if user_mask is not None:
        candidates += user_candidates(check_mask(user_mask, size, "user mask"))
    runners = {
        "faces": lambda: detect_faces(rgb, min_fraction=face_min_fraction),
        "text": lambda: detect_text(rgb, min_confidence=text_confidence),
        "dino+sam": lambda: detect_prompt(
            rgb, folders or model_folders(models_dir), prompt=dino_prompt, box_threshold=box_threshold,
            text_threshold=text_threshold, dino_model=dino_model, sam_model=sam_model,
            dino_size=dino_size),
    }
    sources = parse_sources(sources)
    must_run = set(sources) if strict is True else set(strict or ())
    for source in sources:
        try:
            candidates += runners[source]()
        except (MissingDependencyError, FileNotFoundError, PlicInputError) as exc:
            if source in must_run:
                raise
            notes.append(f"{source} skipped: {exc}")
    return SalientResult(union_mask(candidates, size), candidates, notes)


def run_salient(rgb: np.ndarray, sources=DEFAULT_SOURCES, user_mask: np.ndarray | None = None, *,
                budget=None, codec: str = "png", quality: int = 90, strict=True, **params):
    """The whole step on a working image: detect (:func:`find_salient`, ``params``) then store
    within ``budget`` (:func:`plic.salient.store`). Returns the plic.salient.Stored; its report
    lists what each detector found, what was kept and the detectors skipped."""
    found = find_salient(rgb, sources, user_mask, strict=strict, **params)
    stored = salient.store(rgb, found.candidates, codec=codec, quality=quality,
                           budget=salient.Budget() if budget is None else budget)
    stored.report.notes[:0] = found.notes
    return stored


# --- command line ------------------------------------------------------------------------------

AUTO = "auto"


def add_salient_arguments(parser) -> None:
    """The salient options of `plic encode` (see :func:`salient_from_args`)."""
    group = parser.add_argument_group("salient regions (pixels kept verbatim)")
    group.add_argument("--salient", default=AUTO, metavar="SOURCES",
                       help="comma-separated detectors: faces, text, dino+sam; 'auto' = faces and text "
                            "where Tesseract is installed (default); 'none' = only --salient-mask")
    group.add_argument("--salient-mask", type=Path, metavar="MASK.png",
                       help="also keep the pixels under this mask (white = keep), of the image's size")
    group.add_argument("--salient-budget", type=float, default=None, metavar="BPP",
                       help="most bits per working-image pixel the salient regions may take "
                            f"(default {salient.DEFAULT_MAX_BPP}, never more than the original file; "
                            "a --salient-mask given with --salient none is capped only at the raw "
                            "image size unless this is given)")
    group.add_argument("--salient-max-fraction", type=float, metavar="F",
                       help="most share of the image (0..1) that may be kept")
    group.add_argument("--salient-codec", default="png", choices=salient.LOSSLESS_CODECS + ("webp",),
                       help="how region pixels are stored (default %(default)s, lossless)")
    group.add_argument("--salient-quality", type=int, default=90, metavar="Q",
                       help="WebP quality for --salient-codec webp (default %(default)s)")
    group.add_argument("--dino-prompt", default=DEFAULT_DINO_PROMPT,
                       help="what Grounding DINO looks for (default %(default)r)")
    group.add_argument("--box-threshold", type=float, default=DEFAULT_BOX_THRESHOLD,
                       help="Grounding DINO box score threshold (default %(default)s)")
    group.add_argument("--text-threshold", type=float, default=DEFAULT_TEXT_THRESHOLD,
                       help="Grounding DINO phrase threshold (default %(default)s)")
    group.add_argument("--models-dir", type=Path, metavar="DIR",
                       help="folder with grounding-dino/, sams/ and bert-base-uncased/ "
                            "(default $PLIC_MODELS_DIR)")


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


def salient_from_args(args, rgb_working: np.ndarray, image_path: str | os.PathLike | None = None):
    """Run the step for one image as the options of :func:`add_salient_arguments` say.

    Returns (mask_stream, regions, report). The budget also caps the salient bytes at the size
    of ``image_path`` (the original file) when given; a user's mask with no detector is capped
    only at the raw image size (and ``--salient-max-fraction``) unless ``--salient-budget`` is
    given: the user asked for those pixels."""
    size = (rgb_working.shape[1], rgb_working.shape[0])
    auto = str(args.salient).strip().lower() == AUTO
    sources = DEFAULT_SOURCES if auto else parse_sources(args.salient)
    user_mask = load_mask_file(args.salient_mask, size) if args.salient_mask else None
    mask_alone = user_mask is not None and not sources and args.salient_budget is None
    max_bpp = salient.DEFAULT_MAX_BPP if args.salient_budget is None else args.salient_budget
    budget = salient.Budget(max_bpp=None if mask_alone else max_bpp, max_fraction=args.salient_max_fraction,
                            max_bytes=Path(image_path).stat().st_size if image_path and not mask_alone
                            else None)
    stored = run_salient(rgb_working, sources, user_mask, budget=budget, codec=args.salient_codec,
                         quality=args.salient_quality, strict=not auto, models_dir=args.models_dir,
                         dino_prompt=args.dino_prompt, box_threshold=args.box_threshold,
                         text_threshold=args.text_threshold)
    return stored.mask_stream, stored.regions, stored.report
