"""JBIG2 (ITU-T T.88) generic-region codec: lossless bi-level images.

Everything bit-level about JBIG2 lives in this module:

* Annex E   -- the MQ arithmetic coder (encoder E.2, decoder E.3).
* 6.2       -- generic region decoding procedure, arithmetic (MMR = 0) only:
               GBTEMPLATE 0..3 (6.2.5.3), adaptive template pixels
               (6.2.5.4) and typical prediction TPGDON (6.2.5.7).
* 7.2       -- segment headers; 7.4.1 region segment information field;
               7.4.6 generic region segment; 7.4.8 page information;
               7.4.9 - 7.4.11 end of page, stripe and file.
* 8.2       -- page image composition (first page only).
* Annex D   -- file organisations: D.3 embedded (as in PDF) and D.4 file
               header with sequential organisation (D.1).

Bitmaps are 2-D ``np.uint8`` arrays of 0/1 where 1 is black (an edge pixel).
The encoder is always lossless; by default it picks GBTEMPLATE and TPGDON
for the fewest bytes by coding the candidates (large dense maps are ranked on
sampled rows first), and can try AT pixels too (see :func:`choose_parameters`).

The pixel loops are compiled with numba, at their first use, when it is
importable; the very same
Python source runs unchanged (slowly) when it is not, or when the environment
variable ``PLIC_NO_NUMBA=1`` is set.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import struct
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

__all__ = [
    "JBIG2Error",
    "GenericRegion",
    "NOMINAL_AT",
    "EFFORTS",
    "choose_parameters",
    "encode_generic_region",
    "decode_generic_region",
    "encode_embedded",
    "encode_file",
    "embedded_to_file",
    "decode",
]


class JBIG2Error(ValueError):
    """Malformed, unsupported or oversized JBIG2 data (or an unencodable bitmap)."""


def _numba_wanted() -> bool:
    """Whether numba is installed and not turned off (without importing it)."""
    return os.environ.get("PLIC_NO_NUMBA") != "1" and importlib.util.find_spec("numba") is not None


NUMBA = _numba_wanted()
_COMPILED: list = []  # (name, function, per-pixel helper?) of every function to compile
_COMPILE_LOCK = threading.Lock()


def _lazy_jit(pixel: bool):
    """Decorator: the function is compiled with numba (when :data:`NUMBA`) at the first call of
    any decorated function, so importing this module does not import numba (~0.3 s). Compiling
    rebinds every decorated module global at once: compiled functions call each other by name."""

    def decorate(func):
        _COMPILED.append((func.__name__, func, pixel))

        @functools.wraps(func)
        def first_call(*args):
            _compile_all()
            return globals()[func.__name__](*args)

        return first_call

    return decorate


def _compile_all() -> None:
    global NUMBA
    with _COMPILE_LOCK:
        if not _COMPILED:
            return
        entry = pixel_helper = lambda func: func
        if NUMBA:
            try:
                import numba
            except ImportError:  # installed but unusable (e.g. built for another numpy): plain Python
                NUMBA = False
        if NUMBA:
            # Per-pixel helpers are compiled without the numba runtime (_nrt=False): they
            # allocate nothing, and with it every call would reference-count its array
            # arguments, which costs more than the arithmetic coding itself.
            entry = numba.njit(cache=True, nogil=True)
            pixel_helper = numba.njit(cache=True, nogil=True, _nrt=False)
        for name, func, pixel in _COMPILED:
            globals()[name] = (pixel_helper if pixel else entry)(func)
        _COMPILED.clear()


_jit, _jit_pixel = _lazy_jit(pixel=False), _lazy_jit(pixel=True)


# ---------------------------------------------------------------------------
# Annex E -- MQ arithmetic coder
# ---------------------------------------------------------------------------
# Table E.1: Qe value, next index after MPS / LPS, and whether an LPS switches
# the sense of MPS.  Rows are (Qe, NMPS, NLPS, SWITCH).
_QE_TABLE = np.array([
    (0x5601, 1, 1, 1), (0x3401, 2, 6, 0), (0x1801, 3, 9, 0),
    (0x0AC1, 4, 12, 0), (0x0521, 5, 29, 0), (0x0221, 38, 33, 0),
    (0x5601, 7, 6, 1), (0x5401, 8, 14, 0), (0x4801, 9, 14, 0),
    (0x3801, 10, 14, 0), (0x3001, 11, 17, 0), (0x2401, 12, 18, 0),
    (0x1C01, 13, 20, 0), (0x1601, 29, 21, 0), (0x5601, 15, 14, 1),
    (0x5401, 16, 14, 0), (0x5101, 17, 15, 0), (0x4801, 18, 16, 0),
    (0x3801, 19, 17, 0), (0x3401, 20, 18, 0), (0x3001, 21, 19, 0),
    (0x2801, 22, 19, 0), (0x2401, 23, 20, 0), (0x2201, 24, 21, 0),
    (0x1C01, 25, 22, 0), (0x1801, 26, 23, 0), (0x1601, 27, 24, 0),
    (0x1401, 28, 25, 0), (0x1201, 29, 26, 0), (0x1101, 30, 27, 0),
    (0x0AC1, 31, 28, 0), (0x09C1, 32, 29, 0), (0x08A1, 33, 30, 0),
    (0x0521, 34, 31, 0), (0x0441, 35, 32, 0), (0x02A1, 36, 33, 0),
    (0x0221, 37, 34, 0), (0x0141, 38, 35, 0), (0x0111, 39, 36, 0),
    (0x0085, 40, 37, 0), (0x0049, 41, 38, 0), (0x0025, 42, 39, 0),
    (0x0015, 43, 40, 0), (0x0009, 44, 41, 0), (0x0005, 45, 42, 0),
    (0x0001, 45, 43, 0), (0x5601, 46, 46, 0),
], dtype=np.int64)
_QE = np.ascontiguousarray(_QE_TABLE[:, 0])
_NMPS = np.ascontiguousarray(_QE_TABLE[:, 1])
_NLPS = np.ascontiguousarray(_QE_TABLE[:, 2])
_SWITCH = np.ascontiguousarray(_QE_TABLE[:, 3])

# Adaptive state per context CX (E.1.2): I(CX) and MPS(CX) packed into one byte,
# index in bits 0-5 and MPS in bit 7.  All contexts start at I = 0, MPS = 0.


@_jit_pixel
def _byteout(out, c, bp):
    """E.2.8 BYTEOUT with 0xFF bit stuffing and carry propagation.

    ``out[bp]`` is the byte B; writes past the end of ``out`` are dropped and
    detected by the caller (bp >= len(out)).  Returns (C, CT, BP).
    """
    n = out.shape[0]
    b = np.int64(out[bp]) if bp < n else 0
    if b != 0xFF and c >= 0x8000000:      # carry into B
        b += 1
        if bp < n:
            out[bp] = b
        if b == 0xFF:
            c &= 0x7FFFFFF
    bp += 1
    if b == 0xFF:                          # stuff: only 7 bits follow 0xFF
        if bp < n:
            out[bp] = c >> 20
        return c & 0xFFFFF, 7, bp
    if bp < n:
        out[bp] = c >> 19
    return c & 0x7FFFF, 8, bp


@_jit_pixel
def _mq_interval(state, cx, d, a):
    """E.2.2 ENCODE of bit d up to renormalisation: CODEMPS (E.2.4) or
    CODELPS (E.2.3), including the update of I(CX) and MPS(CX).

    Returns (A, what to add to C); A < 0x8000 means RENORME must follow.
    """
    s = np.int64(state[cx])
    i = s & 0x3F
    mps = s >> 7
    qe = _QE[i]
    a -= qe
    if d == mps:
        if a & 0x8000:
            return a, qe
        add = 0
        if a < qe:                         # conditional exchange
            a = qe
        else:
            add = qe
        state[cx] = _NMPS[i] | (mps << 7)
        return a, add
    add = 0
    if a < qe:                             # conditional exchange
        add = qe
    else:
        a = qe
    state[cx] = _NLPS[i] | ((mps ^ _SWITCH[i]) << 7)
    return a, add


@_jit_pixel
def _mq_encode(out, state, cx, d, a, c, ct, bp):
    """E.2.2 ENCODE of bit d, with RENORME (E.2.6).  Returns (A, C, CT, BP)."""
    a, add = _mq_interval(state, cx, d, a)
    c += add
    while not a & 0x8000:                  # RENORME
        a <<= 1
        c <<= 1
        ct -= 1
        if ct == 0:
            c, ct, bp = _byteout(out, c, bp)
    return a, c, ct, bp


@_jit_pixel
def _mq_count(state, cx, d, a, bits):
    """ENCODE of bit d without producing output: every RENORME shift moves one
    bit out of C, so counting the shifts measures the code length exactly
    (up to FLUSH and bit stuffing).  Returns (A, bits)."""
    a, _ = _mq_interval(state, cx, d, a)
    while not a & 0x8000:
        a <<= 1
        bits += 1
    return a, bits


@_jit
def _mq_flush(out, a, c, ct, bp):
    """E.2.9 FLUSH: SETBITS, two BYTEOUTs, then the 0xFF 0xAC marker.

    Returns the index one past the last byte written.
    """
    n = out.shape[0]
    tempc = c + a
    c |= 0xFFFF
    if c >= tempc:
        c -= 0x8000
    c <<= ct
    c, ct, bp = _byteout(out, c, bp)
    c <<= ct
    c, ct, bp = _byteout(out, c, bp)
    if bp >= n:
        return bp + 3
    if out[bp] != 0xFF:
        bp += 1
        if bp < n:
            out[bp] = 0xFF
    bp += 1
    if bp < n:
        out[bp] = 0xAC
    return bp + 1


@_jit_pixel
def _byte_at(data, i):
    """E.3.4: beyond the end of the coded data the decoder reads 0xFF."""
    return np.int64(data[i]) if i < data.shape[0] else 0xFF


@_jit_pixel
def _bytein(data, c, bp):
    """E.3.4 BYTEIN (data[bp] is B).  Returns (C, CT, BP)."""
    if _byte_at(data, bp) == 0xFF:
        b1 = _byte_at(data, bp + 1)
        if b1 > 0x8F:                      # marker: feed 1-bits, do not advance
            return c + 0xFF00, 8, bp
        return c + (b1 << 9), 7, bp + 1
    return c + (_byte_at(data, bp + 1) << 8), 8, bp + 1


@_jit
def _mq_initdec(data):
    """E.3.5 INITDEC.  Returns (A, C, CT, BP)."""
    c = _byte_at(data, 0) << 16
    c, ct, bp = _bytein(data, c, 0)
    return 0x8000, (c << 7) & 0xFFFFFFFF, ct - 7, bp


@_jit_pixel
def _mq_decode(data, state, cx, a, c, ct, bp):
    """E.3.2 DECODE with MPS_EXCHANGE / LPS_EXCHANGE (E.3.3) and RENORMD.

    Returns (D, A, C, CT, BP).
    """
    s = np.int64(state[cx])
    i = s & 0x3F
    mps = s >> 7
    qe = _QE[i]
    a -= qe
    if (c >> 16) >= qe:                    # CHIGH >= Qe: upper sub-interval
        c -= qe << 16
        if a & 0x8000:
            return mps, a, c, ct, bp
        lps = a < qe                       # MPS_EXCHANGE
    else:
        lps = a >= qe                      # LPS_EXCHANGE
        a = qe
    if lps:
        d = mps ^ 1
        state[cx] = _NLPS[i] | ((mps ^ _SWITCH[i]) << 7)
    else:
        d = mps
        state[cx] = _NMPS[i] | (mps << 7)
    while True:                            # RENORMD
        if ct == 0:
            c, ct, bp = _bytein(data, c, bp)
        a <<= 1
        c = (c << 1) & 0xFFFFFFFF
        ct -= 1
        if a & 0x8000:
            return d, a, c, ct, bp


# ---------------------------------------------------------------------------
# 6.2.5.3 fixed templates, 6.2.5.4 adaptive template pixels
# ---------------------------------------------------------------------------
# Every template, with its AT pixels at their nominal positions, is three
# contiguous runs of pixels: in row y (dx = lo..-1), row y-1 and row y-2.
# The pixel at dx in a run sits at context bit  base + (hi - dx),  so each run
# is a shift register that moves one bit left per pixel.  Rows are given as
# (lo, hi, base); an empty run has lo > hi.
_WINDOWS = np.array([
    [(-4, -1, 0), (-3, 3, 4), (-2, 2, 11)],   # GBTEMPLATE 0: 16 pixels
    [(-3, -1, 0), (-2, 3, 3), (-1, 2, 9)],    # GBTEMPLATE 1: 13 pixels
    [(-2, -1, 0), (-2, 2, 2), (-1, 1, 7)],    # GBTEMPLATE 2: 10 pixels
    [(-4, -1, 0), (-3, 2, 4), (0, -1, 10)],   # GBTEMPLATE 3: 10 pixels
], dtype=np.int64)

# Nominal AT positions (6.2.5.3, Figures 3-6) and their context bits.
NOMINAL_AT = (
    ((3, -1), (-3, -1), (2, -2), (-2, -2)),
    ((3, -1),),
    ((2, -1),),
    ((2, -1),),
)
_AT_BITS = ((4, 10, 11, 15), (3,), (2,), (4,))
_CONTEXT_BITS = (16, 13, 10, 10)

# 6.2.5.7: context used to code SLTP, per template.
_SLTP_CONTEXT = (0x9B25, 0x0795, 0x00E5, 0x0195)


@dataclass(frozen=True)
class _Layout:
    """How a template with given AT pixels reads the padded bitmap.

    The bitmap is stored with ``top`` zero rows above and ``left`` / ``right``
    zero columns beside it, so every template pixel is a plain array read
    (pixels outside the region are 0, 6.2.5.2).  AT pixels moved off their
    nominal place are masked out of the runs (``keep``) and read directly.
    """
    windows: np.ndarray    # (3, 3) int64: lo, hi, base for rows y, y-1, y-2
    keep: int              # context bits taken from the runs
    at_dx: np.ndarray      # moved AT pixels: offsets and context bits
    at_dy: np.ndarray
    at_bit: np.ndarray
    top: int
    left: int
    right: int


def _check_template(template, at):
    """Validate GBTEMPLATE and AT pixels (6.2.5.4); return AT as a tuple."""
    if template not in (0, 1, 2, 3):
        raise JBIG2Error(f"GBTEMPLATE must be 0..3, got {template!r}")
    nominal = NOMINAL_AT[template]
    if at is None:
        return nominal
    try:
        at = tuple((int(x), int(y)) for x, y in at)
    except (TypeError, ValueError) as exc:
        raise JBIG2Error(f"AT pixels must be (x, y) pairs: {at!r}") from exc
    if len(at) != len(nominal):
        raise JBIG2Error(f"GBTEMPLATE {template} takes {len(nominal)} AT pixels, got {len(at)}")
    for x, y in at:
        if not (-128 <= x <= 127 and -128 <= y <= 0) or (y == 0 and x >= 0):
            raise JBIG2Error(f"illegal AT pixel ({x}, {y}): must lie before the current pixel")
    return at


def _layout(template, at):
    windows = _WINDOWS[template]
    keep = (1 << _CONTEXT_BITS[template]) - 1
    moved = [(p, bit) for p, q, bit in zip(at, NOMINAL_AT[template], _AT_BITS[template]) if p != q]
    for _, bit in moved:
        keep &= ~(1 << bit)
    xs = [p[0] for p, _ in moved]
    ys = [p[1] for p, _ in moved]
    return _Layout(
        windows=windows,
        keep=keep,
        at_dx=np.array(xs, dtype=np.int64),
        at_dy=np.array(ys, dtype=np.int64),
        at_bit=np.array([b for _, b in moved], dtype=np.int64),
        top=max([2] + [-y for y in ys]),
        left=max([4] + [-x for x in xs]),
        right=max([4] + [x + 1 for x in xs]),
    )


@_jit_pixel
def _run_start(img, row, px, lo, hi):
    """Shift register of one run for the first pixel of a row."""
    w = 0
    for dx in range(lo, hi + 1):
        w = (w << 1) | np.int64(img[row, px + dx])
    return w


@_jit_pixel
def _context(img, py, px, w0, w1, w2, base1, base2, keep, at_dx, at_dy, at_bit):
    """6.2.5.3 / 6.2.5.4: context CX of pixel (px, py) of the padded bitmap.

    Run 0 (row y) always starts at bit 0.
    """
    cx = (w0 | (w1 << base1) | (w2 << base2)) & keep
    for k in range(at_dx.shape[0]):
        cx |= np.int64(img[py + at_dy[k], px + at_dx[k]]) << at_bit[k]
    return cx


# What _code_region does with the region.
_ENCODE, _DECODE, _COUNT = 0, 1, 2


@_jit
def _code_region(img, data, out, mode, win, keep, at_dx, at_dy, at_bit,
                 top, left, width, height, tpgdon, sltp_cx, ltp_rows):
    """6.2.5.7 generic region decoding procedure, run as decoder or encoder.

    ``img`` is the padded bitmap: read when encoding, written when decoding.
    _ENCODE writes MQ bytes to ``out`` (ltp_rows[i] = row i equals row i-1)
    and returns the coded length; _DECODE reads ``data`` and returns 0;
    _COUNT codes like _ENCODE without output and stores in ``out[i]`` (an
    int64 array) the code length in bits of rows 0..i (E.2.6 shifts).
    """
    state = np.zeros(1 << 16, dtype=np.uint8)
    decoding = mode == _DECODE
    counting = mode == _COUNT
    bits = 0
    if decoding:
        a, c, ct, bp = _mq_initdec(data)
    else:
        a, c, ct, bp = 0x8000, 0, 12, 0   # E.2.5 INITENC; out[0] is a dummy B
    m0 = (1 << (win[0, 1] - win[0, 0] + 1)) - 1
    m1 = (1 << (win[1, 1] - win[1, 0] + 1)) - 1
    m2 = (1 << (win[2, 1] - win[2, 0] + 1)) - 1
    r1 = left + win[1, 1] + 1              # column read into run 1 / 2 at x
    r2 = left + win[2, 1] + 1
    base1 = win[1, 2]
    base2 = win[2, 2]
    ltp = 0
    for y in range(height):
        py = top + y
        if tpgdon:
            if decoding:
                sltp, a, c, ct, bp = _mq_decode(data, state, sltp_cx, a, c, ct, bp)
                ltp ^= sltp
            else:
                sltp = ltp ^ ltp_rows[y]
                ltp = ltp_rows[y]
                if counting:
                    a, bits = _mq_count(state, sltp_cx, sltp, a, bits)
                else:
                    a, c, ct, bp = _mq_encode(out, state, sltp_cx, sltp, a, c, ct, bp)
            if ltp:
                if decoding:
                    img[py, :] = img[py - 1, :]
                elif counting:
                    out[y] = bits
                continue
        w0 = 0
        w1 = _run_start(img, py - 1, left, win[1, 0], win[1, 1]) if m1 else 0
        w2 = _run_start(img, py - 2, left, win[2, 0], win[2, 1]) if m2 else 0
        for x in range(width):
            px = left + x
            cx = _context(img, py, px, w0, w1, w2, base1, base2, keep, at_dx, at_dy, at_bit)
            if decoding:
                d, a, c, ct, bp = _mq_decode(data, state, cx, a, c, ct, bp)
                img[py, px] = d
            else:
                d = np.int64(img[py, px])
                if counting:
                    a, bits = _mq_count(state, cx, d, a, bits)
                else:
                    a, c, ct, bp = _mq_encode(out, state, cx, d, a, c, ct, bp)
            w0 = ((w0 << 1) | d) & m0
            w1 = ((w1 << 1) | np.int64(img[py - 1, r1 + x])) & m1
            w2 = ((w2 << 1) | np.int64(img[py - 2, r2 + x])) & m2
        if counting:
            out[y] = bits
    if decoding or counting:
        return 0
    return _mq_flush(out, a, c, ct, bp)


# ---------------------------------------------------------------------------
# 6.2 generic region: Python-level encode / decode
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GenericRegion:
    """A coded generic region (7.4.6): its parameters and the MQ bytes."""
    width: int
    height: int
    template: int
    at: tuple
    tpgdon: bool
    data: bytes


_NO_BYTES = np.zeros(1, dtype=np.uint8)


def _as_bitmap(bitmap) -> np.ndarray:
    """Any 2-D array -> contiguous uint8 0/1 (nonzero = black)."""
    arr = np.asarray(bitmap)
    if arr.ndim != 2:
        raise JBIG2Error(f"bitmap must be 2-D, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise JBIG2Error(f"bitmap must not be empty, got shape {arr.shape}")
    if max(arr.shape) > 0xFFFFFFFE:
        raise JBIG2Error(f"bitmap too large for JBIG2: {arr.shape}")
    return np.ascontiguousarray(arr != 0, dtype=np.uint8)


def _padded(height, width, lay: _Layout) -> np.ndarray:
    """A zero bitmap with the layout's margins: pixels outside the region read 0 (6.2.5.2)."""
    return np.zeros((lay.top + height, lay.left + width + lay.right), dtype=np.uint8)


def _typical_rows(bitmap) -> np.ndarray:
    """6.2.5.7: row i is 'typical' when it equals row i-1 (row -1 is white)."""
    same = np.empty(bitmap.shape[0], dtype=np.int64)
    same[0] = not bitmap[0].any()
    same[1:] = (bitmap[1:] == bitmap[:-1]).all(axis=1)
    return same


def _run_coder(img, data, out, mode, lay, template, width, height, tpgdon, ltp_rows):
    """Run :func:`_code_region` with ``lay``'s template and the SLTP context of 6.2.5.7."""
    return _code_region(img, data, out, mode, lay.windows, lay.keep,
                        lay.at_dx, lay.at_dy, lay.at_bit, lay.top, lay.left,
                        width, height, bool(tpgdon), _SLTP_CONTEXT[template], ltp_rows)


def _coder_input(bitmap, template, at):
    """(layout, padded bitmap, typical rows) for coding ``bitmap``."""
    height, width = bitmap.shape
    lay = _layout(template, at)
    img = _padded(height, width, lay)
    img[lay.top:, lay.left:lay.left + width] = bitmap
    return lay, img, _typical_rows(bitmap)


def _encode_bytes(bitmap, template, at, tpgdon) -> bytes:
    """MQ-code a 0/1 bitmap with fixed parameters (already validated): INITENC (E.2.5), ENCODE
    (E.2.2) of every decision of 6.2.5.7, FLUSH (E.2.9)."""
    height, width = bitmap.shape
    lay, img, ltp_rows = _coder_input(bitmap, template, at)
    pixels = height * width + height
    # A decision can emit at most 15 bits, so the second size always fits.
    for capacity in (pixels // 4 + 64, 2 * pixels + 64):
        out = np.zeros(capacity, dtype=np.uint8)
        end = _run_coder(img, _NO_BYTES, out, _ENCODE, lay, template, width, height,
                         tpgdon, ltp_rows)
        if end <= capacity:
            return out[1:end].tobytes()
    raise AssertionError("MQ output exceeded its worst-case bound")


def _row_bits(bitmap, template, at, tpgdon) -> np.ndarray:
    """Code length in bits of rows 0..i, for every row i (no bytes made)."""
    height, width = bitmap.shape
    lay, img, ltp_rows = _coder_input(bitmap, template, at)
    bits = np.zeros(height, dtype=np.int64)
    _run_coder(img, _NO_BYTES, bits, _COUNT, lay, template, width, height, tpgdon, ltp_rows)
    return bits


def encode_generic_region(bitmap, template=None, at=None, tpgdon=None,
                          effort="default") -> GenericRegion:
    """Losslessly code ``bitmap`` as a generic region (6.2, MMR = 0; the inverse of 6.2.5.7).

    Parameters left as None are chosen by :func:`choose_parameters` with the
    given ``effort``; ``at`` needs an explicit ``template`` (with a template
    but no ``at`` the nominal AT pixels are used).
    """
    bitmap = _as_bitmap(bitmap)
    template, at, tpgdon, data = _choose(bitmap, template, at, tpgdon, effort)
    if data is None:
        data = _encode_bytes(bitmap, template, at, tpgdon)
    return GenericRegion(bitmap.shape[1], bitmap.shape[0], template, at, bool(tpgdon), data)


def _decode_rows(data, width, height, template, at, tpgdon, rows, max_pixels):
    """Decode the first ``rows`` rows of a generic region (6.2.5.7).

    Decoding is causal, so rows below a page's bottom edge can be skipped.
    """
    at = _check_template(template, at)
    lay = _layout(template, at)
    padded = (lay.top + rows) * (lay.left + width + lay.right)
    if width * rows > max_pixels or padded > 2 * max_pixels + (1 << 20):
        raise JBIG2Error(f"generic region {width}x{height} exceeds max_pixels={max_pixels}")
    img = _padded(rows, width, lay)
    buf = np.frombuffer(bytes(data), dtype=np.uint8).copy()
    no_rows = np.zeros(1, dtype=np.int64)
    _run_coder(img, buf, _NO_BYTES, _DECODE, lay, template, width, rows, tpgdon, no_rows)
    return img[lay.top:, lay.left:lay.left + width].copy()


def decode_generic_region(data: bytes, width, height, template, at, tpgdon,
                          *, max_pixels: int = 1 << 28) -> np.ndarray:
    """Decode MQ-coded generic region data (6.2.5.7) to an HxW 0/1 array."""
    width, height = int(width), int(height)
    if width <= 0 or height <= 0:
        raise JBIG2Error(f"generic region must not be empty: {width}x{height}")
    return _decode_rows(data, width, height, template, at, tpgdon, height, max_pixels)


# ---------------------------------------------------------------------------
# Encoder parameter search
# ---------------------------------------------------------------------------
# How hard the encoder looks for the parameters giving the fewest bytes.
# A candidate is scored exactly by coding it (the smallest coding is kept, so
# the result is never larger than any candidate scored); a large, dense map
# is first ranked by the exact MQ code length (_COUNT mode of _code_region)
# of a sample of its rows.
EFFORTS = ("fast", "default", "max")
_FAST_TEMPLATE = 2          # the best template on 13 of 14 Canny edge maps
_FAST_TPGDON_ROWS = 0.25    # "fast": TPGDON when this share of rows repeats
# "default" tries templates 0-2 only: template 3 (no row y-2) came last on
# every edge map.  Maps of at most _EXACT_PIXELS pixels are scored exactly,
# and so are those whose sample (every _SAMPLE_EVERY-th band of _SAMPLE_BAND
# rows, 1/8 of the rows) holds fewer than _MIN_SAMPLE_BLACK black pixels or
# _MIN_SAMPLE_BANDS bands: a nearly white sample mis-ranks the templates
# (3 of 17 real photos came out larger than jbig2enc's coder).  Other maps
# are ranked by the sample; the best ranked candidate and jbig2enc's own
# configurations (_JBIG2ENC) are then scored exactly.
_DEFAULT_TEMPLATES = (0, 1, 2)
_EXACT_PIXELS = 1 << 18
_SAMPLE_BAND = 8
_SAMPLE_EVERY = 8
_MIN_SAMPLE_BANDS = 2
_MIN_SAMPLE_BLACK = 4096
# jbig2enc's generic coder: template 0, nominal AT pixels, TPGDON off
# (`jbig2`) or on (`jbig2 -d`).
_JBIG2ENC = ((0, NOMINAL_AT[0], False), (0, NOMINAL_AT[0], True))

# AT pixels that "max" tries besides the nominal ones.  Measured on Canny
# edge maps (1 MP): the nominal positions are nearly always best; the gains
# come from *smaller* contexts (an AT pixel placed on a fixed template pixel,
# e.g. (-3, 0) for templates 0 and 1, adds no information and halves the
# number of contexts, so they adapt faster).
_AT_ALTERNATIVES = (
    (((3, -1), (-3, 0), (2, -2), (-2, -2)), ((-3, 0), (-3, -1), (2, -2), (-2, -2))),
    (((2, -2),), ((-3, 0),)),
    (((3, -1),),),
    (((3, -1),), ((0, -2),)),
)


@_jit
def _sltp_bits(ltp_rows):
    """Code length in bits of the SLTP decisions (6.2.5.7) for ``ltp_rows``."""
    state = np.zeros(1, dtype=np.uint8)
    a, bits, ltp = 0x8000, 0, 0
    for y in range(ltp_rows.shape[0]):
        a, bits = _mq_count(state, 0, ltp ^ ltp_rows[y], a, bits)
        ltp = ltp_rows[y]
    return bits


def _sample_rows(height: int) -> np.ndarray | None:
    """Row numbers of every _SAMPLE_EVERY-th band of _SAMPLE_BAND rows; None
    when that would be fewer than _MIN_SAMPLE_BANDS bands."""
    starts = range(0, height - _SAMPLE_BAND + 1, _SAMPLE_BAND * _SAMPLE_EVERY)
    if len(starts) < _MIN_SAMPLE_BANDS:
        return None
    return (np.asarray(starts)[:, None] + np.arange(_SAMPLE_BAND)).ravel()


def _extrapolate(row_bits: np.ndarray, height: int) -> float:
    """Whole-bitmap bits from the bits of sampled rows.

    The contexts learn during the first rows, after which the bits grow
    linearly, so the sampled total is extended at the rate of its second
    half (a plain scale-up would charge the learning again per sample and
    favour small templates).
    """
    rows = row_bits.shape[0]
    total = row_bits.sum()
    half = rows // 2
    rate = (total - row_bits[:half].sum()) / (rows - half)
    return float(total + rate * (height - rows))


def _sample(bitmap, effort) -> np.ndarray | None:
    """The rows "default" ranks ``bitmap`` by, or None where it scores
    every candidate exactly (small or sparse maps, and "max")."""
    if effort != "default" or bitmap.size <= _EXACT_PIXELS:
        return None
    rows = _sample_rows(bitmap.shape[0])
    if rows is None or int(bitmap[rows].sum()) < _MIN_SAMPLE_BLACK:
        return None
    return rows


def _sampled_bits(bitmap, rows, template, at, tpgdons) -> dict:
    """{tpgdon: estimated bits} from the sampled ``rows`` counted without
    TPGDON; TPGDON's effect is derived: the typical rows cost nothing but
    each row pays an SLTP decision."""
    ltp_rows = _typical_rows(bitmap)
    sample = np.ascontiguousarray(bitmap[rows])
    row_bits = np.diff(_row_bits(sample, template, at, False), prepend=0)
    estimates = {False: _extrapolate(row_bits, bitmap.shape[0])}
    if True in tpgdons:
        atypical = row_bits * (ltp_rows[rows] == 0)
        estimates[True] = _extrapolate(atypical, bitmap.shape[0]) + _sltp_bits(ltp_rows)
    return {tp: estimates[tp] for tp in tpgdons}


def _check_effort(effort):
    """Raise JBIG2Error unless ``effort`` is one of EFFORTS (an encoder setting, not in T.88)."""
    if effort not in EFFORTS:
        raise JBIG2Error(f"effort must be one of {EFFORTS}, got {effort!r}")


def choose_parameters(bitmap, template=None, at=None, tpgdon=None, effort="default"):
    """Pick (template, at, tpgdon) giving the fewest bytes for ``bitmap``.

    Arguments given are kept, those left None are chosen, as hard as
    ``effort`` says:

    * ``"fast"``: no search; template 2 (nominal AT), TPGDON when at least
      a quarter of the rows repeat the row above.
    * ``"default"``: templates 0-2 (nominal AT) with TPGDON on and off. Each
      is coded and the smallest kept where the map has at most 256 Ki
      pixels or is sparse; a larger map is ranked by the code length of a sample of row
      bands (1/8 of the rows), then the best ranked and jbig2enc's own
      configuration (template 0, nominal AT, TPGDON off and on) are coded
      and the smallest kept.
    * ``"max"``: every template, its nominal and _AT_ALTERNATIVES AT pixels
      and TPGDON on and off, each coded, the smallest kept.

    Whatever the effort, the result is never larger than any candidate
    that was coded. Candidates are coded (and sampled) side by side, one
    thread each up to the number of CPUs.
    """
    return _choose(_as_bitmap(bitmap), template, at, tpgdon, effort)[:3]


def _choose(bitmap, template, at, tpgdon, effort):
    """(template, at, tpgdon, data): ``data`` is ``bitmap`` coded with them
    when the search coded it, else None."""
    _check_effort(effort)
    if template is None and at is not None:
        raise JBIG2Error("AT pixels need an explicit template")
    if effort == "fast" and template is None:
        template = _FAST_TEMPLATE
    if template is not None:
        fixed_at = _check_template(template, at)
        at = None if at is None else fixed_at
        if tpgdon is not None:
            return template, fixed_at, bool(tpgdon), None
        if effort == "fast":
            return (template, fixed_at, bool(_typical_rows(bitmap).mean() >= _FAST_TPGDON_ROWS),
                    None)
    tpgdons = (False, True) if tpgdon is None else (bool(tpgdon),)
    if template is not None:
        templates = (template,)
    else:
        templates = _DEFAULT_TEMPLATES if effort == "default" else range(4)
    candidates = [(t, t_at, tp) for t in templates for t_at in _candidate_at(t, at, effort)
                  for tp in tpgdons]
    rows = _sample(bitmap, effort)
    if rows is not None:
        bits = {}
        layouts = list(dict.fromkeys((t, t_at) for t, t_at, _ in candidates))
        for (t, t_at), estimates in zip(layouts, _side_by_side(
                lambda layout: _sampled_bits(bitmap, rows, *layout, tpgdons), layouts)):
            for tp, n in estimates.items():
                bits[(t, t_at, tp)] = n
        best = min(candidates, key=bits.get)
        candidates = [best] + [c for c in _JBIG2ENC if c in bits and c != best]
    return _smallest(bitmap, candidates)


def _smallest(bitmap, candidates):
    """(template, at, tpgdon, data) of the candidate whose coding is the
    shortest (the first of equals); the candidates are coded side by side."""
    coded = _side_by_side(lambda candidate: _encode_bytes(bitmap, *candidate), candidates)
    best = min(range(len(candidates)), key=lambda i: len(coded[i]))
    return (*candidates[best], coded[best])


@functools.cache
def _coders(pid: int) -> ThreadPoolExecutor:
    """Threads that code candidates side by side in process ``pid``: the compiled coder releases
    the GIL (nogil). One pool per process: a forked child has none of its parent's threads."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="jbig2")


def _side_by_side(work, items) -> list:
    """[work(item) for item in items], the items in the :func:`_coders` threads when there are
    several (every thread runs one candidate's pixel loop of :func:`_code_region`)."""
    if len(items) < 2:
        return [work(item) for item in items]
    return list(_coders(os.getpid()).map(work, items))


def _candidate_at(template, at, effort):
    """AT pixel sets (6.2.5.4) to try for ``template``: ``at`` if given, else the nominal
    ones (Figures 3-6), plus _AT_ALTERNATIVES for effort "max"."""
    if at is not None:
        return (at,)
    if effort == "max":
        return (NOMINAL_AT[template],) + _AT_ALTERNATIVES[template]
    return (NOMINAL_AT[template],)


# ---------------------------------------------------------------------------
# 7.2 segment headers, 7.4 segment data, Annex D file organisation
# ---------------------------------------------------------------------------
FILE_ID = b"\x97JB2\r\n\x1a\n"          # D.4.1 ID string

_IMMEDIATE_GENERIC = 38                 # 7.3 segment types
_IMMEDIATE_LOSSLESS_GENERIC = 39
_PAGE_INFORMATION = 48
_END_OF_PAGE = 49
_END_OF_STRIPE = 50
_END_OF_FILE = 51
_PROFILES = 52

_PAGE_EVENTUALLY_LOSSLESS = 0x01        # 7.4.8.5 page segment flags
_PAGE_DEFAULT_PIXEL = 0x04
_UNKNOWN_LENGTH = 0xFFFFFFFF            # 7.2.7 / 7.4.8.2


def _segment(number: int, seg_type: int, page: int, data: bytes = b"") -> bytes:
    """7.2 segment header (no referred-to segments) followed by its data."""
    large_page = page > 0xFF                        # 7.2.3 page association size
    header = struct.pack(">IBB", number, seg_type | (0x40 if large_page else 0), 0)
    header += struct.pack(">I" if large_page else ">B", page)
    return header + struct.pack(">I", len(data)) + data


def _page_information(width: int, height: int) -> bytes:
    """7.4.8: size, resolution unknown (0), lossless, default pixel 0, not striped."""
    return struct.pack(">IIIIBH", width, height, 0, 0, _PAGE_EVENTUALLY_LOSSLESS, 0)


def _generic_region_data(region: GenericRegion) -> bytes:
    """7.4.6: region segment information (7.4.1, at 0,0, OR), flags (7.4.6.2), AT pixels
    (7.4.6.3), then the MQ-coded data."""
    info = struct.pack(">IIIIB", region.width, region.height, 0, 0, 0)
    flags = (region.template << 1) | (0x08 if region.tpgdon else 0)   # MMR = 0
    at = b"".join(struct.pack(">bb", x, y) for x, y in region.at)
    return info + bytes([flags]) + at + region.data


def encode_embedded(bitmap, *, template=None, at=None, tpgdon=None, effort="default") -> bytes:
    """D.3 embedded stream: page information, immediate lossless generic
    region and end of page segments, no file header (the layout PDF uses).

    Parameters left None are chosen for the fewest bytes as hard as
    ``effort`` ("fast", "default", "max") says; see :func:`choose_parameters`.
    """
    region = encode_generic_region(bitmap, template, at, tpgdon, effort)
    return (_segment(0, _PAGE_INFORMATION, 1, _page_information(region.width, region.height))
            + _segment(1, _IMMEDIATE_LOSSLESS_GENERIC, 1, _generic_region_data(region))
            + _segment(2, _END_OF_PAGE, 1))


def _file_header() -> bytes:
    """D.4: ID string, flags (sequential organisation, page count known), 1 page."""
    return FILE_ID + struct.pack(">BI", 0x01, 1)


def embedded_to_file(stream: bytes) -> bytes:
    """Wrap an embedded stream as a standalone sequential file (D.1, D.4)."""
    stream = bytes(stream)
    if stream.startswith(FILE_ID):
        raise JBIG2Error("stream already has a JBIG2 file header")
    segments = _parse_segments(stream, 0, sequential=True)
    if not segments:
        raise JBIG2Error("embedded stream holds no segments")
    if any(s.type == _END_OF_FILE for s in segments):
        return _file_header() + stream
    number = max(s.number for s in segments) + 1
    return _file_header() + stream + _segment(number, _END_OF_FILE, 0)


def encode_file(bitmap, *, template=None, at=None, tpgdon=None, effort="default") -> bytes:
    """Standalone .jb2 file: D.4 header and a sequential embedded stream."""
    return embedded_to_file(encode_embedded(bitmap, template=template, at=at, tpgdon=tpgdon,
                                            effort=effort))


# --- decoding ---------------------------------------------------------------
@dataclass(frozen=True)
class _Segment:
    """A segment (7.2): header fields we use and its data."""
    number: int
    type: int
    page: int
    data: bytes


class _Reader:
    """Bounds-checked big-endian reads (JBIG2's byte order); running short is a JBIG2Error."""

    def __init__(self, data: bytes, pos: int = 0):
        self.data, self.pos = data, pos

    def take(self, n: int, what: str) -> bytes:
        if n > len(self.data) - self.pos:
            raise JBIG2Error(f"truncated data: {what} needs {n} bytes at offset "
                             f"{self.pos}, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str):
        return struct.unpack(">" + fmt, self.take(struct.calcsize(">" + fmt), what))

    def at_end(self) -> bool:
        return self.pos >= len(self.data)


def _segment_header(r: _Reader):
    """7.2: returns (number, type, page, data length)."""
    number, flags, count_byte = r.unpack("IBB", "segment header")
    count = count_byte >> 5                          # 7.2.4 referred-to segments
    if count == 7:
        r.pos -= 1
        count = r.unpack("I", "referred-to segment count")[0] & 0x1FFFFFFF
        r.take((count + 8) // 8, "retention flags")
    elif count > 4:
        raise JBIG2Error(f"segment {number}: invalid referred-to segment count {count}")
    ref_size = 1 if number <= 256 else 2 if number <= 65536 else 4   # 7.2.5
    r.take(count * ref_size, "referred-to segment numbers")
    page = r.unpack("I" if flags & 0x40 else "B", "page association")[0]   # 7.2.6
    length = r.unpack("I", "segment data length")[0]                     # 7.2.7
    if length == _UNKNOWN_LENGTH:
        raise JBIG2Error(f"segment {number}: unknown data length is not supported")
    return number, flags & 0x3F, page, length


def _parse_segments(data: bytes, pos: int, sequential: bool) -> list:
    """Split a segment stream: sequential (D.1) or random-access (D.2)."""
    r = _Reader(data, pos)
    headers = []
    segments = []
    while not r.at_end():
        number, seg_type, page, length = _segment_header(r)
        if sequential:
            segments.append(_Segment(number, seg_type, page, r.take(length, f"segment {number} data")))
        else:
            headers.append((number, seg_type, page, length))
        if seg_type == _END_OF_FILE:
            break
    for number, seg_type, page, length in headers:
        segments.append(_Segment(number, seg_type, page, r.take(length, f"segment {number} data")))
    return segments


def _split_file(data: bytes):
    """D.4 file header -> (offset of the first segment, sequential?): flags (D.4.2) bit 0 =
    sequential, bit 1 = number of pages unknown, else the page count (D.4.3) follows.
    Without the ID string (D.4.1) the data is an embedded stream (D.3), read sequentially."""
    if not data.startswith(FILE_ID):
        return 0, True
    r = _Reader(data, len(FILE_ID))
    flags = r.unpack("B", "file header flags")[0]
    if not flags & 0x02:                            # number of pages known
        r.unpack("I", "number of pages")
    return r.pos, bool(flags & 0x01)


def _new_page(seg: _Segment, max_pixels: int) -> np.ndarray:
    """7.4.8 page information -> blank page bitmap."""
    width, height, _, _, flags = _Reader(seg.data).unpack("IIIIB", "page information")
    if height == _UNKNOWN_LENGTH:
        raise JBIG2Error("pages of unknown height (striped) are not supported")
    if width == 0 or height == 0:
        raise JBIG2Error(f"empty page {width}x{height}")
    if width * height > max_pixels:
        raise JBIG2Error(f"page {width}x{height} exceeds max_pixels={max_pixels}")
    return np.full((height, width), 1 if flags & _PAGE_DEFAULT_PIXEL else 0, dtype=np.uint8)


def _compose(page: np.ndarray, region: np.ndarray, x: int, y: int, op: int) -> None:
    """Combine a region into the page (8.2 step 5) with the external combination operator of
    7.4.1.5: 0 OR, 1 AND, 2 XOR, 3 XNOR, 4 REPLACE; parts outside the page are clipped."""
    h = min(region.shape[0], page.shape[0] - y)
    w = min(region.shape[1], page.shape[1] - x)
    if h <= 0 or w <= 0:
        return
    dst = page[y:y + h, x:x + w]
    src = region[:h, :w]
    if op == 0:
        dst |= src
    elif op == 1:
        dst &= src
    elif op == 2:
        dst ^= src
    elif op == 3:
        dst[...] = 1 - (dst ^ src)
    else:
        dst[...] = src


def _generic_region(seg: _Segment, page: np.ndarray, max_pixels: int) -> int:
    """7.4.6 immediate (lossless) generic region segment -> decode (6.2.5.7) of at most
    ``max_pixels`` pixels and compose (8.2); returns the pixels decoded."""
    r = _Reader(seg.data)
    width, height, x, y, info_flags = r.unpack("IIIIB", "region segment information")
    flags = r.unpack("B", "generic region flags")[0]
    if flags & 0x01:
        raise JBIG2Error("MMR generic regions are not supported")
    if flags & 0x10:
        raise JBIG2Error("extended generic templates are not supported")
    op = info_flags & 0x07
    if op > 4:
        raise JBIG2Error(f"invalid combination operator {op}")
    template = (flags >> 1) & 0x03
    n_at = len(NOMINAL_AT[template])
    at_bytes = r.take(2 * n_at, "AT pixels")
    at = [struct.unpack(">bb", at_bytes[2 * k:2 * k + 2]) for k in range(n_at)]
    if width == 0 or height == 0:
        return 0
    rows = min(height, max(page.shape[0] - y, 0))
    if rows == 0 or x >= page.shape[1]:
        return 0
    region = _decode_rows(r.data[r.pos:], width, height, template, at,
                          bool(flags & 0x08), rows, max_pixels)
    _compose(page, region, x, y, op)
    return width * rows


def decode(data: bytes, *, max_pixels: int = 1 << 28) -> np.ndarray:
    """Decode the first page of a standalone file or an embedded stream.

    Returns an HxW uint8 array of 0/1 (1 = black).  Only generic regions
    coded with the MQ coder are supported; anything else, and any malformed
    or oversized input, raises :class:`JBIG2Error`.

    ``max_pixels`` bounds the page and the pixels of all its regions together:
    a stream may hold any number of region segments, each decoded in full, so
    bounding each alone would let a few bytes per segment buy a page's worth
    of decoding time apiece.  A page of ``max_pixels`` is decoded at most once.
    """
    try:
        data = bytes(data)
        pos, sequential = _split_file(data)
        return _decode_page(_parse_segments(data, pos, sequential), max_pixels)
    except JBIG2Error:
        raise
    except (IndexError, struct.error, ValueError, OverflowError, TypeError, MemoryError) as exc:
        raise JBIG2Error(f"malformed JBIG2 data: {exc}") from exc


def _decode_page(segments: list, max_pixels: int) -> np.ndarray:
    """8.2 page image composition of the first page: its page information (7.4.8), then its
    generic regions (7.4.6) up to the end of page (7.4.9) or end of file (7.4.11); end of
    stripe (7.4.10) and profiles segments (7.3) are skipped."""
    page = None
    budget = max_pixels                     # region pixels still allowed (see decode)
    for seg in segments:
        if seg.type == _PAGE_INFORMATION:
            if page is not None:
                break                       # a second page: return the first
            page = _new_page(seg, max_pixels)
        elif seg.type in (_IMMEDIATE_GENERIC, _IMMEDIATE_LOSSLESS_GENERIC):
            if page is None:
                raise JBIG2Error("generic region segment before page information")
            if budget <= 0:
                raise JBIG2Error(f"the regions decode more than max_pixels={max_pixels} "
                                 f"pixels together (segment {seg.number})")
            budget -= _generic_region(seg, page, budget)
        elif seg.type in (_END_OF_PAGE, _END_OF_FILE):
            if page is not None:
                break
        elif seg.type not in (_END_OF_STRIPE, _PROFILES):
            raise JBIG2Error(f"unsupported segment type {seg.type}")
    if page is None:
        raise JBIG2Error("no page information segment")
    return page
