"""Same-size codecs, `plic compare`, `plic eval` and its HTML report (opened in headless
Chromium), and the PLIC Evaluate / Same-Size Codecs nodes. There are no diffusion weights here,
so the "reconstructions" are JPEGs of the originals at quality 8."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image
from test_cli import plic  # the `plic` command as a subprocess

from plic.codec import fileformat
from plic.eval import compare, summary
from plic.image import load_rgb
from tests.support.images import REPO
from tests.support.metric_models import metric_models_dir  # noqa: F401  (fixture)

EXAMPLE = REPO / "plic" / "data" / "example.png"
METHODS = ["original", "plic", "jpeg", "webp", "avif"]


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(float) - b) ** 2))


@pytest.mark.parametrize("budget", [6000, 20000])
def test_the_same_size_search_meets_its_byte_count(budget):
    rgb = load_rgb(EXAMPLE)
    for found in compare.same_size(rgb, budget):
        assert found.fits, found.describe()
        assert 0.6 * budget <= len(found.data) <= budget, found.describe()
        lowest = found.codec.encode(rgb, found.codec.lowest)
        assert mse(rgb, found.decoded()) <= mse(rgb, np.asarray(Image.open(io.BytesIO(lowest)).convert("RGB")))
        with Image.open(io.BytesIO(found.data)) as im:
            assert im.format == found.codec.pil_format and im.size == (512, 512)


def test_below_the_lowest_quality_each_codec_says_it_cannot_go_this_small():
    for found in compare.same_size(load_rgb(EXAMPLE), 200):
        assert not found.fits and found.lowest_size > 200
        assert "cannot go this small" in found.describe()


@pytest.fixture(scope="module")
def eval_set(tmp_path_factory, metric_models_dir):  # noqa: F811
    """Two originals, their .plic files (the real encoder) and quality-8 JPEG reconstructions,
    evaluated with `plic eval` and every metric (tiny DINOv2 and AlexNet)."""
    root = tmp_path_factory.mktemp("eval")
    originals, recons = root / "originals", root / "reconstructions"
    originals.mkdir()
    recons.mkdir()
    shutil.copy(EXAMPLE, originals / "astronaut.png")
    Image.open(EXAMPLE).transpose(Image.FLIP_LEFT_RIGHT).crop((64, 128, 448, 384)).save(originals / "crop.png")
    plic("encode", originals, "-o", root / "plic", "--prompt", "an astronaut", "--salient", "none")
    for path in originals.iterdir():
        Image.open(path).convert("RGB").save(recons / f"{path.stem}.jpg", quality=8)
    result = plic("eval", originals, "-r", recons, "--plic", root / "plic", "-o", root / "out",
                  "--models-dir", metric_models_dir, "--device", "cpu")
    return root, result


def test_plic_compare_writes_each_codec_within_the_plic_files_size(eval_set, tmp_path):
    root, _ = eval_set
    source = root / "plic" / "astronaut.plic"
    result = plic("compare", EXAMPLE, "--plic", source, "-o", tmp_path)
    written = sorted(tmp_path.iterdir())
    assert [p.name.split(".")[1].split("-")[0] for p in written] == ["avif", "jpeg", "webp"], result.stdout
    assert all(p.stat().st_size <= source.stat().st_size for p in written)
    result = plic("compare", EXAMPLE, "--bytes", 100, "-o", tmp_path / "small")
    assert result.stdout.count("cannot go this small") == 3 and not (tmp_path / "small").exists()


def test_plic_eval_writes_the_per_image_table_and_the_papers_summary_rows(eval_set):
    root, _ = eval_set
    out = root / "out"
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["image"], r["method"]) for r in rows] == [(i, m) for i in ("astronaut.png", "crop.png")
                                                         for m in METHODS]
    assert list(rows[0]) == ["image", "method", "bytes", "bpp", "quality", "dinov2", "lpips", "psnr",
                             "ssim", "brisque", "cpbd", "note"]
    for r in rows:
        if r["method"] == "plic":
            size = (root / "plic" / r["image"].replace(".png", ".plic")).stat().st_size
            width, height = fileformat.load(root / "plic" / r["image"].replace(".png", ".plic")).working_size
            assert int(r["bytes"]) == size and float(r["bpp"]) == pytest.approx(size * 8 / (width * height))
        if r["method"] in ("jpeg", "webp", "avif"):
            plic_row = next(p for p in rows if p["image"] == r["image"] and p["method"] == "plic")
            assert int(r["bytes"]) <= int(plic_row["bytes"]) and r["quality"]
        if r["method"] != "original":
            assert 0 < float(r["dinov2"]) < 1 and float(r["lpips"]) > 0 and 0 < float(r["ssim"]) < 1
    document = json.loads((out / "results.json").read_text())
    summary = {(s["method"], s["statistic"]): s for s in document["summary"]}
    assert set(summary) == {(m, s) for m in METHODS for s in ("mean", "median")}
    psnrs = [float(r["psnr"]) for r in rows if r["method"] == "plic"]
    assert summary["plic", "mean"]["psnr"] == pytest.approx(np.mean(psnrs))
    assert summary["plic", "median"]["psnr"] == pytest.approx(np.median(psnrs))
    for metric in ("dinov2", "lpips", "psnr", "ssim", "brisque", "cpbd"):
        with Image.open(out / "plots" / f"{metric}.png") as im:
            assert im.format == "PNG" and im.size == (480, 340)


def test_plic_eval_refuses_a_missing_reconstruction_before_writing(eval_set, tmp_path):
    root, _ = eval_set
    (tmp_path / "recons").mkdir()
    result = plic("eval", root / "originals", "-r", tmp_path / "recons", "-o", tmp_path / "out",
                  "--metrics", "psnr", check=False)
    assert result.returncode == 1
    assert "astronaut.png: no reconstruction" in result.stderr and "crop.png" in result.stderr
    assert not (tmp_path / "out").exists()


def _find(screenshot: np.ndarray, picture: np.ndarray) -> tuple[float, tuple[int, int]]:
    """Best normalised correlation of ``picture`` in ``screenshot`` and where (x, y)."""
    import cv2

    scores = cv2.matchTemplate(screenshot, picture, cv2.TM_CCOEFF_NORMED)
    _, best, _, where = cv2.minMaxLoc(scores)
    return best, where


def test_the_html_report_shows_the_thumbnails_and_plots_in_headless_chromium(eval_set, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (scripts/setup.sh installs it)")
    root, _ = eval_set
    shot = tmp_path / "report.png"
    # its own profile: a Chromium already running on the default one would take the page over
    # and this one would exit with no screenshot
    subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--force-device-scale-factor=1", "--window-size=1500,3000",
                    f"--screenshot={shot}", (root / "out" / "report.html").as_uri()],
                   check=True, capture_output=True, timeout=120)
    screenshot = np.asarray(Image.open(shot).convert("RGB"))
    plot_tops = []
    for png in sorted((root / "out" / "plots").glob("*.png")):
        score, (_, y) = _find(screenshot, np.asarray(Image.open(png).convert("RGB")))
        assert score > 0.95, f"{png.name} is not on the page ({score:.3f})"
        plot_tops.append(y)
    thumb_tops = []
    for picture in (load_rgb(root / "originals" / "crop.png"), load_rgb(root / "reconstructions" / "crop.jpg")):
        h, w = picture.shape[:2]
        thumb = np.asarray(Image.fromarray(picture).resize((round(w * summary.THUMB_HEIGHT / h),
                                                            summary.THUMB_HEIGHT), Image.LANCZOS))
        score, (_, y) = _find(screenshot, thumb)
        assert score > 0.95, f"a thumbnail is not on the page ({score:.3f})"
        thumb_tops.append(y)
    assert thumb_tops[0] == thumb_tops[1], "original and reconstruction side by side"
    assert max(plot_tops) < min(thumb_tops), "the plots come before the images"


def test_the_evaluate_node_scores_and_shows_the_comparison(eval_set, metric_models_dir, monkeypatch):  # noqa: F811
    from nodes.common import image_to_rgb_list, rgb_list_to_image
    from nodes.evaluate import PlicEvaluate

    root, _ = eval_set
    monkeypatch.setenv("PLIC_MODELS_DIR", str(metric_models_dir))
    inputs = PlicEvaluate.INPUT_TYPES()["required"]
    assert "dinov2-base" in inputs["dinov2"][0] and "alexnet-owt-7be5be79.pth" in inputs["lpips"][0]
    original = load_rgb(root / "originals" / "astronaut.png")
    recon = load_rgb(root / "reconstructions" / "astronaut.jpg")
    payload = [fileformat.load(root / "plic" / "astronaut.plic")]
    out = PlicEvaluate().run(rgb_list_to_image([original]), rgb_list_to_image([recon]), "dinov2-base",
                             "alexnet-owt-7be5be79.pth", True, payload)
    text, comparison = out["result"]
    assert out["ui"]["text"] == [text]
    for word in ("image 1 plic", "dinov2", "lpips", "psnr", "ssim", "brisque", "cpbd", "image 1 avif q"):
        assert word in text
    strip = image_to_rgb_list(comparison)[0]
    assert strip.shape == (256, 5 * 256, 3)  # original, PLIC, JPEG, WebP, AVIF
    assert mse(strip[40:, 256:512], np.asarray(Image.fromarray(recon).resize((256, 256), Image.LANCZOS))[40:]) < 1


def test_the_same_size_node_fits_the_payload(eval_set):
    from nodes.common import image_to_rgb_list, rgb_list_to_image
    from nodes.evaluate import PlicSameSizeCodecs

    root, _ = eval_set
    source = root / "plic" / "astronaut.plic"
    payload = [fileformat.load(source)]
    out = PlicSameSizeCodecs().run(rgb_list_to_image([load_rgb(EXAMPLE)]), 0, payload)
    comparison, text = out["result"]
    assert f"{len(fileformat.dumps(payload[0]))} bytes at 512x512" in text
    assert text.count("quality") == 3
    assert image_to_rgb_list(comparison)[0].shape == (256, 4 * 256, 3)
    tiny = PlicSameSizeCodecs().run(rgb_list_to_image([load_rgb(EXAMPLE)]), 100)["result"][1]
    assert tiny.count("cannot go this small") == 3
