"""No-reference image quality, as the paper measures it: BRISQUE and CPBD.

The paper's authors used the ``brisque`` (0.2.0) and ``cpbd`` (1.0.7) packages, which no longer
run on numpy 2 / current SciPy. This module computes the same numbers with numpy, SciPy, OpenCV
and numba. The packages' values on the test images are in ../shared/images/metric_reference.json
and, for flat graphics, text and JPEG quality 5-15 photos, tests/data/metric_reference (made by
scripts/make_metric_reference.py); tests/test_metrics.py checks BRISQUE within 0.1 and CPBD
within 0.01 of every one. BRISQUE on flat regions hangs on round-off (see :func:`mscn`), so its
MSCN reproduces the package's arithmetic to the last bit.

BRISQUE's trained part, the LIVE-trained epsilon-SVR and its feature scaling, is the data the
``brisque`` package ships (``brisque/models/svm.txt`` and ``normalize.pickle``); it is read from
the installed package's files without importing its code (which fails on numpy 2), so install
it without its dependencies: ``pip install --no-deps brisque==0.2.0``. CPBD has no trained part.

Both follow the published methods: BRISQUE (Mittal, Moorthy, Bovik, IEEE TIP 2012) as the
``brisque`` package computes it (Gaussian 7x7, sigma 7/6, zero-padded local statistics,
asymmetric generalised Gaussian fits of the MSCN coefficients and their four pairwise products,
at full and half scale); CPBD (Narvekar, Karam, IEEE TIP 2011) as ``cpbd`` computes it (Canny to
pick 64x64 edge blocks, Sobel + thinning for vertical edges, Marziliano edge widths, just
noticeable widths 5/3 by block contrast, beta 3.6).
"""

from __future__ import annotations

import functools
import math
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from plic.deps import require
from plic.errors import MissingDependencyError, ModelNotFoundError, PlicInputError

BRISQUE_PACKAGE = "brisque"
BRISQUE_INSTALL = "--no-deps brisque==0.2.0"


def _scipy(purpose: str):
    return require("scipy", package="scipy", purpose=purpose)


def gray_float(rgb: np.ndarray) -> np.ndarray:
    """Luminance in 0..1 with ITU-R 709 weights, to the last bit as scikit-image's rgb2gray (which
    BRISQUE uses) computes it: img_as_float multiplies by 1/255, then a matrix product."""
    rgb = np.asarray(rgb)
    unit = np.multiply(rgb if rgb.ndim == 2 else rgb[..., :3], 1 / 255, dtype=np.float64)
    return unit if rgb.ndim == 2 else unit @ np.array([0.2125, 0.7154, 0.0721])


def gray_uint8(rgb: np.ndarray) -> np.ndarray:
    """PIL's "L" conversion (ITU-R 601 weights), the grayscale CPBD is computed on."""
    rgb = np.asarray(rgb)
    if rgb.ndim == 2:
        return rgb.astype(np.uint8)
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb[..., :3])).convert("L"))


def _check_image(rgb: np.ndarray, what: str, min_side: int) -> None:
    if np.asarray(rgb).ndim not in (2, 3) or min(np.asarray(rgb).shape[:2]) < min_side:
        raise PlicInputError(f"{what} needs an image of at least {min_side}x{min_side} pixels, "
                             f"got shape {np.asarray(rgb).shape}")


# -- BRISQUE --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BrisqueModel:
    """The epsilon-SVR (RBF kernel) and the feature range it was trained on."""

    support_vectors: np.ndarray  # (n, 36)
    coefficients: np.ndarray  # (n,)
    gamma: float
    rho: float
    feature_min: np.ndarray
    feature_max: np.ndarray

    def predict(self, features: np.ndarray) -> float:
        scaled = -1.0 + 2.0 * (features - self.feature_min) / (self.feature_max - self.feature_min)
        distances = np.sum((self.support_vectors - scaled) ** 2, axis=1)
        return float(self.coefficients @ np.exp(-self.gamma * distances) - self.rho)


def brisque_model_files() -> tuple[Path, Path]:
    """``svm.txt`` and ``normalize.pickle`` of the installed ``brisque`` package."""
    import importlib.metadata as metadata

    try:
        dist = metadata.distribution(BRISQUE_PACKAGE)
    except metadata.PackageNotFoundError:
        raise MissingDependencyError(
            "BRISQUE needs the trained model the Python package 'brisque' ships, which is not "
            "installed. Install it (without its dependencies, whose code PLIC does not use) into "
            f"the Python that runs PLIC: pip install {BRISQUE_INSTALL}") from None
    files = tuple(Path(dist.locate_file(f"brisque/models/{name}"))
                  for name in ("svm.txt", "normalize.pickle"))
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise ModelNotFoundError(f"BRISQUE's model file(s) {', '.join(missing)} are missing from "
                                 f"the installed brisque package; reinstall it: pip install "
                                 f"--force-reinstall {BRISQUE_INSTALL}")
    return files


def parse_libsvm_model(text: str) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    """Header fields, support vectors and their coefficients of a LIBSVM model file."""
    header_text, _, body = text.partition("\nSV\n")
    header = dict(line.split(" ", 1) for line in header_text.splitlines() if " " in line)
    rows = [line.split() for line in body.splitlines() if line.strip()]
    width = max((int(item.split(":")[0]) for row in rows for item in row[1:]), default=0)
    vectors = np.zeros((len(rows), width))
    for i, row in enumerate(rows):
        for item in row[1:]:
            index, value = item.split(":")
            vectors[i, int(index) - 1] = float(value)
    return header, vectors, np.array([float(row[0]) for row in rows])


@functools.lru_cache(maxsize=1)
def load_brisque_model() -> BrisqueModel:
    svm_path, scale_path = brisque_model_files()
    header, vectors, coefficients = parse_libsvm_model(svm_path.read_text())
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise ModelNotFoundError(f"{svm_path}: expected an epsilon-SVR with an RBF kernel, got "
                                 f"{header.get('svm_type')} / {header.get('kernel_type')}")
    with open(scale_path, "rb") as handle:  # the package's own file, two lists of floats
        scale = pickle.load(handle)
    return BrisqueModel(vectors, coefficients, float(header["gamma"]), float(header["rho"]),
                        np.asarray(scale["min_"], dtype=np.float64),
                        np.asarray(scale["max_"], dtype=np.float64))


#: BRISQUE's 7x7 Gaussian window (sigma 7/6, normalised to sum 1) by squared distance from the
#: centre, to the last bit as the ``brisque`` package computed the reference values: numpy 1.26 on
#: an AVX-512 CPU, whose exp differs from the C library's in the last bit for some entries (numpy
#: 1.26 without AVX-512 makes the C library's window, and the package then scores the flat logo of
#: tests/data/metric_reference 10.6 higher); see :func:`mscn`.
BRISQUE_WINDOW_BITS = {
    0: "0x1.e0db00311d7f1p-4", 1: "0x1.4d06977d8ad64p-4", 2: "0x1.cd496e1480e88p-5",
    4: "0x1.ba83b9de5989ep-6", 5: "0x1.3278d5665da8fp-6", 8: "0x1.973b1202ace5bp-8",
    9: "0x1.1a0917e5476abp-8", 10: "0x1.86a8865c4c6d1p-9", 13: "0x1.038c273f9a49bp-10",
    18: "0x1.4ad805ce81344p-13",
}


@functools.cache
def brisque_window() -> np.ndarray:
    y, x = np.indices((7, 7)) - 3
    return np.vectorize(lambda d: float.fromhex(BRISQUE_WINDOW_BITS[d]))(x ** 2 + y ** 2)


def convolve_same(image: np.ndarray, window: np.ndarray) -> np.ndarray:
    """``scipy.signal.convolve2d(image, window, "same")`` with zero padding, summing the products
    in the order of SciPy 1.13's direct loop (window row by row, each product rounded, then
    added), so that the sums are the same to the last bit; later SciPy rounds differently."""
    n = window.shape[0]
    r = n // 2
    padded = np.pad(image, r)
    h, w = image.shape
    total = np.zeros_like(image)
    for j in range(n):
        for i in range(n):  # out[m, c] += window[j, i] * image[m + r - j, c + r - i]
            total += window[j, i] * padded[2 * r - j:2 * r - j + h, 2 * r - i:2 * r - i + w]
    return total


def mscn(gray: np.ndarray) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (zero padding outside the image), to the
    last bit as the ``brisque`` package computes them.

    Why the last bit: in a flat region (a plain background, a JPEG block left with its DC value
    only) ``gray - mean`` is round-off alone, one or two units in the last place or exactly 0,
    decided by the window's last bits and the order the convolution adds its products. Its size
    does not matter, its sign does: :func:`aggd_fit` divides each side's sum of squares by the
    number of values on that side (< 0 or >= 0), so a background that lands on the other side
    shifts the variances of the MSCN and product fits. The exact Gaussian window (10.6 off on a
    flat logo) or SciPy 1.17's convolve2d (16 off on flat shapes, up to 1 on photos saved at JPEG
    quality 5-15) is enough to lose the package's values; its window and its SciPy 1.13 summation
    order (with scikit-image's grey, :func:`gray_float`) give them to 1e-4.
    """
    window = brisque_window()
    mean = convolve_same(gray, window)
    deviation = np.sqrt(np.abs(mean ** 2 - convolve_same(gray ** 2, window)))
    return (gray - mean) / (deviation + 1 / 255)


def _aggd_shape(ratio: float) -> float:
    """The shape alpha solving Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)) = ratio, from 0.2 (as the
    package's ``scipy.optimize.root`` call does)."""
    optimize = _scipy("BRISQUE").optimize

    def phi(a):
        a = float(np.ravel(a)[0])
        return math.gamma(2 / a) ** 2 / (math.gamma(1 / a) * math.gamma(3 / a)) - ratio

    return float(optimize.root(phi, [0.2]).x[0])


def aggd_fit(x: np.ndarray) -> tuple[float, float, float, float]:
    """Asymmetric generalised Gaussian fit: shape, mean, left and right variances. A side without
    values has a NaN variance (an image of one colour has no BRISQUE score), as in the package."""
    x = x.ravel()
    with np.errstate(divide="ignore", invalid="ignore"):
        left_ms, right_ms = (np.sum(side ** 2) / np.float64(side.size) for side in (x[x < 0], x[x >= 0]))
        gamma = np.sqrt(left_ms) / np.sqrt(right_ms)
        r_hat = np.mean(np.abs(x)) ** 2 / np.mean(x ** 2)
        big_r = r_hat * (gamma ** 3 + 1) * (gamma + 1) / (gamma ** 2 + 1) ** 2
    alpha = _aggd_shape(big_r)
    sigma_l, sigma_r = math.sqrt(left_ms), math.sqrt(right_ms)
    mean = (sigma_r - sigma_l) * math.sqrt(math.gamma(1 / alpha) / math.gamma(3 / alpha)) \
        * math.gamma(2 / alpha) / math.gamma(1 / alpha)
    return alpha, mean, left_ms, right_ms


def brisque_features(gray: np.ndarray) -> np.ndarray:
    """The 18 features at one scale: MSCN shape and variance, then shape, mean and the two
    variances for the horizontal, vertical and two diagonal neighbour products."""
    m = mscn(gray)
    alpha, _, left, right = aggd_fit(m)
    features = [alpha, (left + right) / 2]
    for product in (m[:, :-1] * m[:, 1:], m[:-1, :] * m[1:, :],
                    m[:-1, :-1] * m[1:, 1:], m[1:, :-1] * m[:-1, 1:]):
        features.extend(aggd_fit(product))
    return np.array(features, dtype=np.float64)


def brisque(rgb: np.ndarray) -> float:
    """BRISQUE score of an RGB (or gray) uint8 image: lower is better, about 0-100 (flat graphics
    and text score above 100). NaN for an image of a single colour, as the package gives."""
    import cv2

    _check_image(rgb, "BRISQUE", 8)
    gray = gray_float(rgb)
    half = cv2.resize(gray, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_CUBIC)
    features = np.concatenate([brisque_features(gray), brisque_features(half)])
    return load_brisque_model().predict(features)


# -- CPBD -----------------------------------------------------------------------------------------

CPBD_BLOCK = 64
CPBD_EDGE_BLOCK_SHARE = 0.002
CPBD_BETA = 3.6
CPBD_MAX_WIDTH_STEPS = 101


def canny_edges(gray: np.ndarray, sigma: float = 1.0, low: float = 0.1, high: float = 0.2) -> np.ndarray:
    """Canny edges of a float image as scikit-image computes them with its defaults (Gaussian
    with zero padding normalised by the padded mask, Sobel, bilinear non-maximum suppression
    inside the eroded image, hysteresis with 8-connectivity); thresholds are absolute."""
    ndimage = _scipy("CPBD").ndimage
    ones = np.ones_like(gray)
    blur = functools.partial(ndimage.gaussian_filter, sigma=sigma, mode="constant", cval=0.0)
    smoothed = blur(gray) / (blur(ones) + np.finfo(np.float64).eps)
    gy = ndimage.sobel(smoothed, axis=0)
    gx = ndimage.sobel(smoothed, axis=1)
    magnitude = np.hypot(gx, gy)
    inner = np.zeros(gray.shape, dtype=bool)
    inner[1:-1, 1:-1] = True
    keep = _nonmax_bilinear(gx, gy, magnitude) & inner & (magnitude >= low)
    labels, count = ndimage.label(keep, structure=np.ones((3, 3), dtype=bool))
    strong = np.zeros(count + 1, dtype=bool)
    strong[np.unique(labels[keep & (magnitude >= high)])] = True
    strong[0] = False
    return strong[labels]


def _nonmax_bilinear(gx: np.ndarray, gy: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Pixels whose magnitude is at least the bilinear estimate on both sides along the gradient
    (scikit-image's four-sector rule). ``gx`` is the column (axis 1) derivative."""
    pad = np.pad(magnitude, 1)
    h, w = magnitude.shape

    def at(dy, dx):
        return pad[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]

    isobel, jsobel = gy, gx
    abs_i, abs_j = np.abs(isobel), np.abs(jsobel)
    same_sign = (isobel >= 0) == (jsobel >= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        w_ij = np.where(abs_i > 0, abs_j / abs_i, 0.0)
        w_ji = np.where(abs_j > 0, abs_i / abs_j, 0.0)
    result = np.zeros(magnitude.shape, dtype=bool)
    sectors = (
        # (which pixels, weight, neighbour a (+side), neighbour b (+side), and their opposites)
        (same_sign & (abs_i >= abs_j), w_ij, (1, 0), (1, 1)),
        (same_sign & (abs_i <= abs_j), w_ji, (0, 1), (1, 1)),
        (~same_sign & (abs_i <= abs_j), w_ji, (0, 1), (-1, 1)),
        (~same_sign & (abs_i >= abs_j), w_ij, (-1, 0), (-1, 1)),
    )
    for select, weight, (ay, ax), (by, bx) in sectors:
        plus = at(by, bx) * weight + at(ay, ax) * (1 - weight)
        minus = at(-by, -bx) * weight + at(-ay, -ax) * (1 - weight)
        result |= select & (magnitude >= plus) & (magnitude >= minus)
    return result & (magnitude > 0)


def vertical_sobel_edges(gray: np.ndarray) -> np.ndarray:
    """Octave's ``edge(..., "sobel", "vertical")``: squared normalised horizontal derivative above
    twice the root of its mean, thinned to horizontal or vertical local maxima."""
    ndimage = _scipy("CPBD").ndimage
    kernel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], dtype=np.float64) / 8.0
    strength = ndimage.convolve(gray, kernel) ** 2
    strength[strength <= 2 * np.sqrt(np.mean(strength))] = 0
    pad = np.pad(strength, 1)
    across = (strength > pad[1:-1, :-2]) & (strength > pad[1:-1, 2:])
    along = (strength > pad[:-2, 1:-1]) & (strength > pad[2:, 1:-1])
    return across | along


def _edge_directions(gray: np.ndarray) -> np.ndarray:
    """Gradient angle quantised to 45 degrees, with cpbd's convention that a zero horizontal
    derivative counts as 0 degrees."""
    gy, gx = np.gradient(gray)
    with np.errstate(divide="ignore", invalid="ignore"):
        angles = np.where(gx != 0, np.degrees(np.arctan2(gy, gx)), 0.0)
    return 45 * np.round(angles / 45)


@functools.cache
def _width_kernel():
    numba = require("numba", package="numba", purpose="CPBD")

    @numba.njit(cache=True)
    def widths(image, edges, angles, max_steps):
        h, w = image.shape
        out = np.zeros((h, w))
        for row in range(1, h - 1):
            for col in range(1, w - 1):
                if not edges[row, col]:
                    continue
                angle = angles[row, col]
                if angle == 0:
                    sign = 1.0  # dark to bright from left to right
                elif angle == 180 or angle == -180:
                    sign = -1.0
                else:
                    continue
                left = 0
                for left in range(max_steps):
                    outer = col - 2 - left
                    if outer < 0 or sign * (image[row, outer] - image[row, col - 1 - left]) >= 0:
                        break
                right = 0
                for right in range(max_steps):
                    outer = col + 2 + right
                    if outer >= w or sign * (image[row, outer] - image[row, col + 1 + right]) <= 0:
                        break
                out[row, col] = left + right + 2
        return out

    return widths


def edge_widths(gray: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Marziliano widths of the vertical edges along the image rows (0 where no edge)."""
    return _width_kernel()(gray, edges, _edge_directions(gray), CPBD_MAX_WIDTH_STEPS)


def cpbd(rgb: np.ndarray) -> float:
    """CPBD sharpness of an RGB (or gray) uint8 image: 0 (blurred) to 1 (sharp)."""
    _check_image(rgb, "CPBD", 3)
    gray = gray_uint8(rgb).astype(np.float64)
    canny = canny_edges(gray)
    widths = edge_widths(gray, vertical_sobel_edges(gray))
    histogram = np.zeros(101)
    rows, cols = gray.shape[0] // CPBD_BLOCK, gray.shape[1] // CPBD_BLOCK
    for i in range(rows):
        for j in range(cols):
            block = np.s_[i * CPBD_BLOCK:(i + 1) * CPBD_BLOCK, j * CPBD_BLOCK:(j + 1) * CPBD_BLOCK]
            if np.count_nonzero(canny[block]) <= CPBD_BLOCK * CPBD_BLOCK * CPBD_EDGE_BLOCK_SHARE:
                continue
            found = widths[block][widths[block] != 0]
            contrast = int(gray[block].max() - gray[block].min())
            just_noticeable = 5.0 if contrast <= 50 else 3.0
            probability = 1 - np.exp(-np.abs(found / just_noticeable) ** CPBD_BETA)
            np.add.at(histogram, np.round(probability * 100).astype(int), 1)
    total = histogram.sum()
    return float(histogram[:64].sum() / total) if total else 0.0
