"""Detectors on the shared images, and Grounding DINO + SAM through its real loading code with
tiny random-weight models written into a models folder (nothing is downloaded)."""

from pathlib import Path

import numpy as np
import pytest

from conftest import load_shared, require_tool
from plic import detect
from plic.errors import ModelNotFoundError, PlicInputError



@pytest.fixture
def tesseract():
    return require_tool("tesseract", "tesseract-ocr")


def test_faces_found_on_astronaut():
    rgb = load_shared("astronaut.png")
    faces = detect.detect_faces(rgb)
    assert faces, "the OpenCV cascades found no face on astronaut.png"
    x, y, w, h = max(faces, key=lambda c: c.score).box
    # The face of the portrait lies in the upper middle of the image.
    assert 150 <= x + w / 2 <= 300 and 60 <= y + h / 2 <= 200 and 60 <= w <= 200
    assert all(0 < c.score <= 1 and c.source == "faces" for c in faces)


def test_no_face_on_a_plain_image():
    assert detect.detect_faces(np.full((200, 300, 3), 128, np.uint8)) == []


def test_text_found_on_page(tesseract):
    rgb = load_shared("page.png")
    words = detect.detect_text(rgb)
    assert len(words) >= 10
    labels = " ".join(c.label for c in words).lower()
    assert any(ch.isalpha() for ch in labels)
    assert all(c.source == "text" and 0.6 <= c.score <= 1 for c in words)
    result = detect.find_salient(rgb, ("text",))
    assert result.mask.any() and result.counts() == {"text": len(words)}


def test_sources_are_parsed_and_checked():
    assert detect.parse_sources("faces, text") == ("faces", "text")
    assert detect.parse_sources("none") == () and detect.parse_sources(None) == ()
    assert detect.parse_sources(["dino+sam", "faces", "faces"]) == ("dino+sam", "faces")
    with pytest.raises(PlicInputError, match="unknown salient source"):
        detect.parse_sources("faces,cats")


def test_user_mask_of_the_wrong_size_is_refused():
    rgb = load_shared("chelsea.png")
    with pytest.raises(PlicInputError, match="user mask is 10x10 but the working image is 451x300"):
        detect.find_salient(rgb, (), user_mask=np.ones((10, 10), bool))


def test_user_mask_components_become_candidates():
    rgb = load_shared("chelsea.png")
    mask = np.zeros(rgb.shape[:2], bool)
    mask[10:20, 10:30] = mask[100:150, 200:220] = True
    result = detect.find_salient(rgb, (), user_mask=mask)
    assert sorted(c.box for c in result.candidates) == [(10, 10, 20, 10), (200, 100, 20, 50)]
    np.testing.assert_array_equal(result.mask, mask)


def test_missing_models_name_the_file_and_folder(tmp_path):
    rgb = load_shared("chelsea.png")
    with pytest.raises(ModelNotFoundError, match="grounding-dino"):
        detect.find_salient(rgb, ("dino+sam",), models_dir=tmp_path)
    notes = detect.find_salient(rgb, ("dino+sam",), models_dir=tmp_path, strict=False).notes
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

    from plic.grounded_sam import _import_groundingdino

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

    from plic.grounded_sam import build_sam

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

    from plic.grounded_sam import load_sam, sam_architecture

    state = torch.load(tiny_models / "sams" / "tiny_sam.pth", weights_only=True)
    arch = sam_architecture(state)
    assert arch["embed_dim"] == 32 and arch["depth"] == 2 and arch["num_heads"] == 2
    assert arch["global_attn_indexes"] == [1] and arch["window_size"] == 4 and arch["img_size"] == 128
    model = load_sam(tiny_models / "sams" / "tiny_sam.pth")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())


def test_sam_architecture_of_the_official_vit_b():
    from segment_anything import build_sam_vit_b

    from plic.grounded_sam import sam_architecture

    arch = sam_architecture(build_sam_vit_b().state_dict())
    assert (arch["embed_dim"], arch["depth"], arch["num_heads"], arch["img_size"]) == (768, 12, 12, 1024)
    assert arch["global_attn_indexes"] == [2, 5, 8, 11] and arch["window_size"] == 14


def test_grounded_sam_finds_masks_through_the_user_loading_path(tiny_models):
    from plic.grounded_sam import GroundedSAM, ModelFolders

    rgb = load_shared("chelsea.png")
    result = detect.find_salient(rgb, ("dino+sam",), models_dir=tiny_models, dino_prompt="face . cat",
                                 box_threshold=0.0, text_threshold=0.0, dino_size=128)
    found = [c for c in result.candidates if c.source == "dino+sam"]
    assert found, "random weights above a 0 threshold must give boxes"
    for c in found:
        x, y, w, h = c.box
        assert c.mask.shape == (h, w) and 0 <= x and x + w <= rgb.shape[1] and y + h <= rgb.shape[0]
    assert result.mask.shape == rgb.shape[:2] and result.mask.any()
    folders = ModelFolders.under(tiny_models)
    assert GroundedSAM.load(folders) is GroundedSAM.load(folders)  # cached
    nothing = detect.find_salient(rgb, ("dino+sam",), models_dir=tiny_models, box_threshold=1.0,
                                   dino_size=128)
    assert nothing.candidates == [] and not nothing.mask.any()


def test_text_encoder_missing_says_where_it_goes(tiny_models, tmp_path):
    (tmp_path / "grounding-dino").symlink_to(tiny_models / "grounding-dino")
    (tmp_path / "sams").symlink_to(tiny_models / "sams")
    with pytest.raises(ModelNotFoundError, match="bert-base-uncased.*config.json"):
        detect.find_salient(load_shared("chelsea.png"), ("dino+sam",), models_dir=tmp_path)
