"""The local back end through its real loading code: tiny random-weight BLIP models saved into a
models folder the way a user's download sits there, loaded offline by transformers."""

from __future__ import annotations

import numpy as np
import pytest

from plic import caption as cap
from plic.errors import CaptionError

WORDS = "a an the cat dog cup red blue green on in with of wooden table floor light soft photo".split()
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
PAD, SEP, DEC = 0, 3, 5


def save_tiny_blip(folder, eos_bias: float) -> None:
    """A BLIP captioner with a 26-word vocabulary and random weights. ``eos_bias`` is added to the
    end-of-text logit: very negative makes it talk until max_new_tokens, very positive makes it
    stop at once (an empty caption)."""
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    folder.mkdir(parents=True)
    vocab = folder / "vocab.txt"
    vocab.write_text("\n".join(SPECIAL + WORDS) + "\n")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=BertTokenizer(str(vocab), bos_token="[DEC]"))
    small = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    config = BlipConfig(
        vision_config=dict(small, image_size=32, patch_size=8),
        text_config=dict(small, vocab_size=len(SPECIAL) + len(WORDS), max_position_embeddings=96,
                         bos_token_id=DEC, eos_token_id=SEP, sep_token_id=SEP, pad_token_id=PAD),
        projection_dim=16)
    torch.manual_seed(0)
    model = BlipForConditionalGeneration(config)
    with torch.no_grad():
        model.text_decoder.get_output_embeddings().bias[SEP] += eos_bias
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    """A models tree with captioners/tiny-blip (talkative) and LLM/tiny-blip-silent."""
    root = tmp_path_factory.mktemp("models")
    save_tiny_blip(root / "captioners" / "tiny-blip", eos_bias=-1e4)
    save_tiny_blip(root / "LLM" / "tiny-blip-silent", eos_bias=1e4)
    (root / "captioners" / "not-a-model").mkdir()
    broken = root / "captioners" / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "blip"}')
    return root


@pytest.fixture
def models_env(models_root, monkeypatch):
    monkeypatch.setenv("PLIC_MODELS_DIR", str(models_root))
    return models_root


@pytest.fixture(scope="module")
def image():
    return np.random.default_rng(1).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_model_folders_are_listed_from_plic_models_dir(models_env):
    assert cap.list_local_models() == ["broken", "tiny-blip", "tiny-blip-silent"]
    assert cap.resolve_local_model("tiny-blip-silent") == models_env / "LLM" / "tiny-blip-silent"


def test_local_caption_is_text_cut_to_the_limit(models_env, image):
    captioner = cap.make_captioner("local:tiny-blip", device="cpu", max_new_tokens=80, limit=60)
    prompt = captioner.caption(image)
    assert isinstance(prompt, str) and 0 < len(prompt) <= 60
    assert set(prompt.split()) <= set(WORDS)
    assert len(cap.LocalCaptioner("tiny-blip", device="cpu", max_new_tokens=80,
                                  limit=240).caption(image).split()) > len(prompt.split())


def test_model_is_loaded_once_per_folder_and_device(models_env, image):
    folder = cap.resolve_local_model("tiny-blip")
    first = cap.load_local_model(folder, "cpu")
    cap.LocalCaptioner(str(folder), device="cpu", max_new_tokens=4).caption(image)
    assert cap.load_local_model(folder, "cpu") is first


def test_empty_generation_is_an_empty_reply_error(models_env, image):
    with pytest.raises(CaptionError, match=r"tiny-blip-silent gave an empty reply.*--caption local:PATH"):
        cap.LocalCaptioner("tiny-blip-silent", device="cpu").caption(image)


@pytest.mark.parametrize("name, match", [
    ("", r"no model folder is chosen.*'local_model' \(--caption local:PATH\)"),
    ("missing", r"'missing' not found \(looked in missing, .*captioners/missing"),
    ("not-a-model", "holds no config.json"),
    ("broken", "cannot load the image-to-text model in .*broken"),
])
def test_unusable_folders_name_the_setting(models_env, image, name, match):
    with pytest.raises(CaptionError, match=match) as info:
        cap.LocalCaptioner(name, device="cpu").caption(image)
    assert info.value.backend == "local"


def test_node_local_backend_outside_comfyui(models_env, image):
    import torch

    from nodes.caption import PlicCaption

    batch = torch.from_numpy(np.stack([image, image[:, ::-1]]).astype(np.float32) / 255.0)
    out = PlicCaption().caption(batch, "local", "", "", "OPENAI_API_KEY", "tiny-blip", "", 30, 5.0, 0)
    joined, prompts = out["result"]
    assert len(prompts) == 2 and all(0 < len(p) <= 30 for p in prompts)
    assert joined.split("\n") == prompts and out["ui"]["text"] == prompts
