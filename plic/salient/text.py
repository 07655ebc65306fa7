"""The ``text`` detector: Tesseract's word boxes (libtesseract through its C API, else the
``tesseract`` program fed through a pipe), read only where a cheap test (:func:`text_lines`) finds
rows of letter-like strokes, all such lines at once from one sheet."""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass

import numpy as np

from plic.codec import salient
from plic.codec.salient import Candidate, grow_box
from plic.errors import MissingDependencyError, PlicError

#: Score (Tesseract's word confidence / 100) a word needs to be kept.
DEFAULT_WORD_THRESHOLD = 0.7
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
        box = grow_box((x0, y0, x1 - x0, y1 - y0), pad, pad, width, height)
        found.append(Candidate("text", " ".join(t for t, *_ in inside), box,
                               float(np.mean(real or [c for _, c, _ in inside]))))
    return found


def _alnum(text: str) -> int:
    return sum(ch.isalnum() for ch in text)


def too_few_characters(candidate: Candidate) -> str | None:
    """Why a line of text is not kept whatever its score (None: no such reason): fewer than
    MIN_LINE_CHARACTERS letters or digits."""
    if _alnum(candidate.label) < MIN_LINE_CHARACTERS:
        return f"fewer than {MIN_LINE_CHARACTERS} letters or digits"
    return None



@dataclass(frozen=True)
class TextSettings:
    threshold: float = DEFAULT_WORD_THRESHOLD
