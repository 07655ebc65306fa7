"""Storing salient regions: exact pixels, box merging, the byte budget on every shared image,
and bad inputs (wrong-size mask, empty mask, everything salient)."""

import argparse

import numpy as np
import pytest

from conftest import EVERY_IMAGE
from plic.cli import encode as cli_encode
from plic.codec import fileformat, salient
from plic.codec.salient import Candidate
from plic.errors import PlicInputError
from tests.support.images import image_path, load_shared


def box_candidate(box, score=0.9, source="faces"):
    return Candidate(source, source, box, score)


def stored_cost(stored) -> int:
    """The salient bytes as the .plic file really holds them."""
    plic = fileformat.PlicFile(original_size=stored.report.size, working_size=stored.report.size,
                               salient_mask=stored.mask_stream, salient_regions=stored.regions)
    return sum(plic.section_sizes().values()) + 12 * len(plic.section_sizes())


def test_pixels_under_the_kept_mask_round_trip_exactly():
    rgb = load_shared("astronaut.png")
    stored = salient.store(rgb, [box_candidate((200, 100, 40, 30)), box_candidate((20, 400, 10, 10))],
                           budget=salient.UNLIMITED)
    mask, pixels = salient.unpack(stored.mask_stream, stored.regions, (512, 512))
    np.testing.assert_array_equal(mask, stored.mask)
    np.testing.assert_array_equal(pixels[mask], rgb[mask])
    assert stored.report.codec == "png" and len(stored.report.kept) == 2 and not stored.report.dropped
    assert stored.report.salient_bytes == stored_cost(stored)


def test_nearby_parts_share_one_box():
    mask = np.zeros((100, 100), bool)
    for x in range(10, 60, 8):  # a row of "letters" 4 px apart
        mask[20:30, x:x + 4] = True
    mask[80:90, 80:90] = True
    assert len(salient.region_boxes(mask, pad=1, merge_gap=0)) == 8
    boxes = salient.region_boxes(mask, pad=1, merge_gap=8)
    assert sorted(boxes) == [(9, 19, 54, 12), (79, 79, 12, 12)]


def test_quality_ladder():
    assert salient.quality_ladder("png", 90)[:3] == [("png", 90), ("webp-lossless", 90), ("webp", 90)]
    assert salient.quality_ladder("webp", 75, 50) == [("webp", 75), ("webp", 65), ("webp", 55)]
    with pytest.raises(PlicInputError, match="unknown salient codec"):
        salient.quality_ladder("jpeg", 90)


@pytest.mark.parametrize("name", EVERY_IMAGE)
def test_budget_is_honoured_on_every_image(name):
    """Half the image salient in many pieces, then a tight budget: the bytes must fit, the file
    never grows past its original, and the most important candidates are the ones kept."""
    rgb = load_shared(name)
    height, width = rgb.shape[:2]
    step = max(16, min(width, height) // 6)
    rng = np.random.default_rng(0)
    candidates = [box_candidate((x, y, step // 2, step // 2), float(rng.uniform(0.1, 1)))
                  for y in range(0, height - step, step) for x in range(0, width - step, step)]
    original = (image_path(name)).stat().st_size
    for budget in (salient.Budget(max_bpp=0.1),
                   salient.Budget(max_bpp=None, max_bytes=original, max_fraction=0.05)):
        stored = salient.store(rgb, candidates, budget=budget)
        report = stored.report
        assert report.salient_bytes == stored_cost(stored) <= report.limit_bytes
        assert report.limit_bytes <= budget.limit_bytes((width, height)) <= original or budget.max_bytes is None
        assert budget.max_fraction is None or report.fraction <= budget.max_fraction
        assert len(report.kept) + len(report.dropped) == len(candidates)
        if report.dropped and report.kept:
            assert min(c.score for c in report.kept) >= max(c.score for c in report.dropped)


def test_quality_is_lowered_before_regions_are_dropped():
    rgb = load_shared("astronaut.png")
    face = box_candidate((157, 46, 134, 135))
    lossless = salient.store(rgb, [face], budget=salient.UNLIMITED).report
    tight = salient.store(rgb, [face], budget=salient.Budget(max_bytes=lossless.salient_bytes // 3)).report
    assert tight.kept == [face] and tight.codec == "webp" and tight.salient_bytes <= tight.limit_bytes
    assert "instead of png" in tight.summary()


def test_empty_selection_stores_nothing():
    rgb = load_shared("chelsea.png")
    stored = salient.store(rgb, [])
    assert stored.mask_stream is None and stored.regions == [] and stored.report.salient_bytes == 0
    assert "kept nothing" in stored.report.summary()
    assert salient.pack(rgb, np.zeros(rgb.shape[:2], bool)) == (None, [])


def test_everything_salient_is_dropped_by_the_default_budget_and_kept_without_one():
    rgb = load_shared("chelsea.png")
    everything = np.ones(rgb.shape[:2], bool)
    report = salient.store(rgb, salient.user_candidates(everything)).report
    assert report.dropped and "dropped 1 user" in report.summary()
    stream, regions = salient.pack(rgb, everything, budget=salient.UNLIMITED)
    mask, pixels = salient.unpack(stream, regions, (rgb.shape[1], rgb.shape[0]))
    np.testing.assert_array_equal(pixels, rgb)


def test_mask_of_the_wrong_size_is_refused():
    rgb = load_shared("chelsea.png")
    with pytest.raises(PlicInputError, match="salient mask is 20x10 but the working image is 451x300"):
        salient.pack(rgb, np.ones((10, 20), bool))


def test_bad_budgets_are_refused():
    rgb = load_shared("chelsea.png")
    for budget in (salient.Budget(max_bpp=-1), salient.Budget(max_fraction=1.5), salient.Budget(max_bytes=-3)):
        with pytest.raises(PlicInputError, match="salient budget"):
            salient.store(rgb, [], budget=budget)


def parse(argv):
    parser = argparse.ArgumentParser()
    cli_encode.add_salient_arguments(parser)
    return parser.parse_args(argv)


def test_command_line_helpers_with_a_mask_file(tmp_path):
    from PIL import Image

    from plic.image import load_rgb, to_working

    path = image_path("astronaut.png")
    rgb = to_working(load_rgb(path), 256)
    mask = np.zeros((512, 512), np.uint8)
    mask[0:64, 0:64] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = parse(["--salient", "faces", "--salient-mask", str(tmp_path / "mask.png"),
                  "--salient-budget", "4", "--salient-codec", "webp-lossless"])
    stored = cli_encode.salient_from_args(args, rgb, path)
    stream, regions, report = stored.mask_stream, stored.regions, stored.report
    assert report.counts() == {"user": 1, "faces": 1} and report.codec == "webp-lossless"
    kept, _ = salient.unpack(stream, regions, (256, 256))
    assert kept[:32, :32].all() and kept.sum() > 32 * 32
    assert report.salient_bytes <= min(path.stat().st_size, 4 * 256 * 256 // 8)
    with pytest.raises(PlicInputError, match="not the image's shape"):
        Image.fromarray(mask[:, :100]).save(tmp_path / "thin.png")
        cli_encode.salient_from_args(parse(["--salient-mask", str(tmp_path / "thin.png")]), rgb, path)


def test_auto_sources_skip_what_is_missing_and_say_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PLIC_TESSERACT", str(tmp_path / "no-tesseract-here"))
    rgb = load_shared("page.png")
    report = cli_encode.salient_from_args(parse([]), rgb, None).report
    assert any("text skipped" in note and "tesseract-ocr" in note for note in report.notes)
    assert "ran faces" in report.summary()
    with pytest.raises(Exception, match="tesseract-ocr"):
        cli_encode.salient_from_args(parse(["--salient", "text"]), rgb, None)


def test_command_line_thresholds_reach_the_detectors():
    rgb = load_shared("astronaut.png")
    strict = cli_encode.salient_from_args(parse(["--salient", "faces", "--face-threshold", "0.99"]),
                                          rgb, None).report
    assert strict.kept == [] and [c.source for c, _ in strict.rejected] == ["faces"]
    default = cli_encode.salient_from_args(parse(["--salient", "faces"]), rgb, None).report
    assert default.counts() == {"faces": 1} and default.rejected == []


def run_node(image, mask=None, **overrides):
    from nodes.salient import PlicSalientRegions

    settings = dict(max_side=256, faces=True, text=False, dino_sam=False, budget_bpp=4.0, max_fraction=1.0,
                    codec="png", quality=90, dino_prompt="face", box_threshold=0.35, text_threshold=0.25,
                    face_threshold=0.8, min_face=40, word_threshold=0.7)
    settings.update(overrides)
    return PlicSalientRegions().run(image, mask=mask, **settings)


def test_node_keeps_the_face_and_a_painted_mask_and_packs_with_the_edges():
    import torch

    from nodes.edges import PlicCannyEdges
    from nodes.pack import PlicPack
    from nodes.palette import PlicPalette

    rgb = load_shared("astronaut.png")  # 512x512; the node works at 256
    image = torch.from_numpy(rgb[None]).float() / 255.0
    painted = torch.zeros(1, 512, 512)
    painted[0, 400:480, 20:100] = 1.0
    out = run_node(image, painted)
    (part,), mask, preview = out["result"]
    assert mask.shape == (1, 256, 256) and preview.shape == (1, 256, 256, 3)
    assert mask[0, 200:240, 10:50].all() and mask[0, 40:90, 90:140].any()  # painted + face
    assert "kept 1 user, 1 face " in out["ui"]["text"][0] and "kept faces 'face'" in out["ui"]["text"][0]
    edges, _ = PlicCannyEdges().run(image, 256, 100, 200)
    palette, _ = PlicPalette().run(image, 256, 32, 80)
    (payload,) = PlicPack().run("an astronaut", edges, palette, [part])["result"][0]
    kept = mask[0].numpy() > 0.5
    work = load_shared("astronaut.png", 256)
    np.testing.assert_array_equal(codec_unpack(payload).salient_pixels[kept], work[kept])


def codec_unpack(payload):
    from plic.codec import pack

    return pack.unpack(fileformat.loads(fileformat.dumps(payload)))


def test_node_refuses_a_mask_of_another_shape_and_reports_missing_models(tmp_path, monkeypatch):
    import torch

    from plic.errors import ModelNotFoundError

    image = torch.from_numpy(load_shared("chelsea.png")[None]).float() / 255.0
    with pytest.raises(PlicInputError, match="not the image's shape"):
        run_node(image, torch.ones(1, 50, 50))
    monkeypatch.setenv("PLIC_MODELS_DIR", str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="sams|grounding-dino"):
        run_node(image, dino_sam=True)


def test_a_new_detector_is_a_record_and_its_options(monkeypatch):
    """Another detector is a settings class, a DETECTORS record and its OPTIONS: ``--salient``
    accepts it, ``plic encode`` and PLIC Salient Regions take its tuning value, and its threshold
    rejects what it finds, with no other code changed."""
    from dataclasses import dataclass

    from nodes.salient import PlicSalientRegions
    from plic.salient import detect

    @dataclass(frozen=True)
    class CornerSettings:
        threshold: float = 0.5

    corner = detect.Detector("corner", CornerSettings, lambda rgb, s, folders: [box_candidate((0, 0, 8, 8), 0.6, "corner")],
                             lambda: "the top-left corner")
    option = detect.Option("corner_threshold", "corner", "threshold", "Score a corner needs.")
    monkeypatch.setitem(detect.DETECTORS, "corner", corner)
    monkeypatch.setattr(detect, "OPTIONS", detect.OPTIONS + (option,))
    rgb = load_shared("astronaut.png")

    kept = cli_encode.salient_from_args(parse(["--salient", "corner"]), rgb).report
    assert [c.source for c in kept.kept] == ["corner"] and "ran corner (the top-left corner: found 1" in kept.summary()
    strict = cli_encode.salient_from_args(parse(["--salient", "corner", "--corner-threshold", "0.7"]), rgb).report
    assert strict.kept == [] and strict.rejected[0][1] == "score 0.60 < 0.70"
    inputs = list(PlicSalientRegions.INPUT_TYPES()["required"])
    assert inputs[-1] == "corner_threshold"  # after every input a saved workflow holds
    assert PlicSalientRegions.INPUT_TYPES()["required"]["corner_threshold"] == (
        "FLOAT", {"default": 0.5, "tooltip": "Score a corner needs.", "min": 0.0, "max": 1.0, "step": 0.01})
