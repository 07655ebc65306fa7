"""The metrics: BRISQUE and CPBD against the values of the packages the paper used, DINOv2 and
LPIPS with tiny random-weight models loaded from a models folder, PSNR and SSIM by hand."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
from PIL import Image, ImageFilter

from conftest import needs_shared
from plic import model_files
from plic.errors import ModelNotFoundError
from plic.eval import metrics, no_reference
from plic.image import load_rgb, to_working
from tests.support.images import DATA, SHARED_IMAGES
from tests.support.metric_models import metric_models_dir  # noqa: F401  (fixture)

SHARED_REFERENCE = SHARED_IMAGES / "metric_reference.json"
#: Flat graphics, text and JPEG quality 5-15 photos, made by scripts/make_metric_reference.py.
CORE_REFERENCE = DATA / "metric_reference" / "reference.json"
EXAMPLE = load_rgb(Path(__file__).resolve().parents[1] / "plic" / "data" / "example.png")


def _reference_images():
    """(file, expected values) of the core reference set, then of the shared one."""
    core = json.loads(CORE_REFERENCE.read_text())["images"]
    items = [pytest.param(CORE_REFERENCE.parent / name, values, id=name) for name, values in core.items()]
    if not SHARED_REFERENCE.is_file():
        return items + [pytest.param(None, None, marks=needs_shared, id="shared")]
    shared = sorted(json.loads(SHARED_REFERENCE.read_text())["images"].items())
    return items + [pytest.param(SHARED_IMAGES / name, values, id=name) for name, values in shared]


@pytest.mark.parametrize(("path", "expected"), _reference_images())
def test_brisque_and_cpbd_reproduce_the_authors_packages(path, expected):
    """brisque 0.2.0 and cpbd 1.0.7 (numpy 1.26) on the image scaled to 1024 px with Lanczos;
    we must be within 0.1 BRISQUE and 0.01 CPBD on every image, flat graphics and JPEG blocks
    (whose BRISQUE hangs on round-off, see plic.eval.no_reference.mscn) included."""
    rgb = to_working(load_rgb(path), 1024)
    assert (rgb.shape[1], rgb.shape[0]) == (expected["width"], expected["height"])
    assert no_reference.brisque(rgb) == pytest.approx(expected["brisque"], abs=0.1)
    assert no_reference.cpbd(rgb) == pytest.approx(expected["cpbd"], abs=0.01)


def test_brisques_window_and_convolution_are_the_gaussian_and_convolve2d():
    """The window's last bits and the summation order are the package's (plic.eval.no_reference.mscn);
    the values are a 7x7 Gaussian of sigma 7/6 and scipy's zero-padded "same" convolution."""
    y, x = np.indices((7, 7)) - 3
    gaussian = np.exp(-(x ** 2 + y ** 2) / (2 * (7 / 6) ** 2))
    window = no_reference.brisque_window()
    assert np.abs(window - gaussian / gaussian.sum()).max() < 1e-16
    gray = no_reference.gray_float(EXAMPLE)
    expected = scipy.signal.convolve2d(gray, window, "same")
    assert np.abs(no_reference.convolve_same(gray, window) - expected).max() < 1e-14


def test_brisque_of_a_single_colour_is_nan_as_the_packages():
    """No texture at all leaves one side of the fits empty: the package scores NaN."""
    for value in (0, 128, 255):
        assert math.isnan(no_reference.brisque(np.full((32, 48, 3), value, dtype=np.uint8)))


def test_brisque_and_cpbd_of_the_bundled_example_are_pinned():
    """plic/data/example.png is astronaut.png of the shared set, whose reference values are
    brisque 10.7995 and cpbd 0.3837; pinned here so the check runs without ../shared."""
    assert no_reference.brisque(EXAMPLE) == pytest.approx(10.7995, abs=0.05)
    assert no_reference.cpbd(EXAMPLE) == pytest.approx(0.3837, abs=0.001)


def test_blur_lowers_cpbd_and_noise_raises_brisque():
    image = Image.fromarray(EXAMPLE)
    blurred = np.asarray(image.filter(ImageFilter.GaussianBlur(2)))
    assert no_reference.cpbd(blurred) < no_reference.cpbd(EXAMPLE) - 0.1
    noise = np.random.default_rng(0).normal(0, 25, EXAMPLE.shape)
    noisy = np.clip(EXAMPLE + noise, 0, 255).astype(np.uint8)
    assert no_reference.brisque(noisy) > no_reference.brisque(EXAMPLE) + 10


def test_the_svr_model_is_read_as_libsvm_writes_it():
    text = ("svm_type epsilon_svr\nkernel_type rbf\ngamma 0.5\nnr_class 2\ntotal_sv 2\nrho 1.5\n"
            "SV\n2 1:1 3:-1 \n-0.5 2:2 \n")
    header, vectors, coefficients = no_reference.parse_libsvm_model(text)
    assert header["gamma"] == "0.5" and header["rho"] == "1.5"
    assert vectors.tolist() == [[1, 0, -1], [0, 2, 0]] and coefficients.tolist() == [2, -0.5]
    model = no_reference.BrisqueModel(vectors, coefficients, 0.5, 1.5, np.full(3, -1.0), np.full(3, 1.0))
    x = np.array([1.0, 0.0, 0.0])  # scaling maps [-1, 1] onto itself
    by_hand = 2 * math.exp(-0.5 * 1) - 0.5 * math.exp(-0.5 * 5) - 1.5
    assert model.predict(x) == pytest.approx(by_hand)


def test_the_brisque_model_is_the_packages_bundled_one():
    svm, scale = no_reference.brisque_model_files()
    assert svm.parent.name == "models" and svm.parent.parent.name == "brisque"
    model = no_reference.load_brisque_model()
    assert model.support_vectors.shape == (770, 36) and model.feature_min.shape == (36,)


def test_psnr_and_ssim_by_hand():
    assert metrics.psnr(EXAMPLE, EXAMPLE) == math.inf
    assert metrics.ssim(EXAMPLE, EXAMPLE) == pytest.approx(1.0)
    darker = (EXAMPLE.astype(int) - 10).clip(0, 255).astype(np.uint8)
    mse = np.mean((EXAMPLE.astype(float) - darker) ** 2)
    assert metrics.psnr(EXAMPLE, darker) == pytest.approx(10 * math.log10(255 ** 2 / mse))
    noisy = np.clip(EXAMPLE + np.random.default_rng(1).normal(0, 20, EXAMPLE.shape), 0, 255).astype(np.uint8)
    assert 0 < metrics.ssim(EXAMPLE, noisy) < 0.8


def test_a_smaller_reconstruction_is_compared_with_the_original_scaled_down():
    half = np.asarray(Image.fromarray(EXAMPLE).resize((256, 256), Image.LANCZOS))
    assert metrics.psnr(EXAMPLE, half) == math.inf


@pytest.fixture(scope="module")
def evaluator(metric_models_dir):  # noqa: F811
    return metrics.Evaluator.load(models_dir=metric_models_dir, device="cpu")


def test_dinov2_similarity_is_one_for_identical_images_and_lower_for_a_flipped_one(evaluator):
    flipped = EXAMPLE[:, ::-1].copy()
    assert evaluator.dino(EXAMPLE, EXAMPLE) == pytest.approx(1.0, abs=1e-5)
    assert evaluator.dino(EXAMPLE, flipped) < evaluator.dino(EXAMPLE, EXAMPLE) - 1e-3


def test_dinov2_is_the_mean_of_last_hidden_state_cosine(evaluator):
    import torch

    other = EXAMPLE[::-1].copy()
    model, processor = evaluator.dino.model, evaluator.dino.processor
    with torch.inference_mode():
        a, b = (model(**processor(images=x, return_tensors="pt")).last_hidden_state.mean(1)[0]
                for x in (EXAMPLE, other))
    expected = float(a @ b / (a.norm() * b.norm()))
    assert evaluator.dino(EXAMPLE, other) == pytest.approx(expected, abs=1e-5)


def test_lpips_is_zero_for_identical_images_and_positive_for_a_flipped_one(evaluator):
    assert evaluator.lpips(EXAMPLE, EXAMPLE) == 0.0
    assert evaluator.lpips(EXAMPLE, EXAMPLE[:, ::-1].copy()) > 1e-4


def test_lpips_uses_the_packages_linear_layers_and_the_users_trunk(evaluator, metric_models_dir):  # noqa: F811
    import importlib.metadata

    import torch

    linear = torch.load(importlib.metadata.distribution("lpips").locate_file("lpips/weights/v0.1/alex.pth"),
                        map_location="cpu", weights_only=True)
    model = evaluator.lpips.model
    assert torch.equal(model.lin0.model[1].weight, linear["lin0.model.1.weight"])
    trunk = torch.load(metric_models_dir / "lpips" / metrics.LPIPS_DEFAULT, weights_only=True)
    assert torch.equal(getattr(model.net.slice2, "3").weight, trunk["features.3.weight"])


def test_missing_models_name_the_file_and_the_folders_searched(tmp_path, metric_models_dir):  # noqa: F811
    with pytest.raises(ModelNotFoundError, match=r"dinov2-large.*looked in: .*dinov2"):
        metrics.find_dino("dinov2-large", model_files.search_dirs(metrics.DINO_FOLDER, metric_models_dir))
    with pytest.raises(ModelNotFoundError, match=r"alexnet.pth.*looked in: .*lpips"):
        metrics.find_lpips("alexnet.pth", model_files.search_dirs(metrics.LPIPS_FOLDER, metric_models_dir))
    incomplete = tmp_path / "dinov2" / "half"
    incomplete.mkdir(parents=True)
    (incomplete / "config.json").write_text("{}")
    with pytest.raises(ModelNotFoundError, match="missing model.safetensors, preprocessor_config.json"):
        metrics.find_dino("half", [tmp_path / "dinov2"])


def test_a_checkpoint_that_is_not_alexnet_is_refused(tmp_path):
    import torch

    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(ModelNotFoundError, match="not a torchvision AlexNet checkpoint"):
        metrics.Lpips(path, device="cpu")
