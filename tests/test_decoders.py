"""Decoder families as data, LoRAs and the few-step samplers, with the tiny random-weight models
and a tiny random LoRA saved in both layouts, loaded through the user's paths: PLIC Diffusers
Loader (names under models/loras) and ``plic decode --lora``."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import needs_shared
from nodes.reconstruct import PlicDiffusersLoader, PlicReconstruct
from plic import model_files
from plic.codec import fileformat, pack
from plic.decode import families, lora
from plic.decode import reconstruct as core
from plic.errors import ModelNotFoundError, PlicInputError
from tests.support.images import REPO, load_shared
from tests.support.tiny_models import (  # noqa: F401
    COLOR_CANNY,
    INPAINT,
    LORAS,
    PIPELINE,
    astronaut_plic,
    load_node,
    save_a1111_checkpoint,
    tiny_models_dir,
)


@pytest.fixture(scope="module")
def plic_file() -> fileformat.PlicFile:
    """A small real image with a rectangle of salient pixels, no decode settings."""
    return astronaut_plic(64, np.s_[8:30, 20:44])


@pytest.fixture(scope="module")
def unpacked(plic_file) -> pack.Unpacked:
    return pack.unpack(plic_file)


@pytest.fixture
def models_env(tiny_models_dir, monkeypatch):
    monkeypatch.setenv(model_files.MODELS_ENV, str(tiny_models_dir))
    return tiny_models_dir


def _max_diff(first: np.ndarray, second: np.ndarray) -> int:
    return int(np.abs(first.astype(np.int16) - second.astype(np.int16)).max())


LCM = core.DecodeSettings(scheduler="lcm")


# -- settings: the user's, the file's, the few-step sampler's, the family's ----------------------

def test_few_step_samplers_default_to_their_authors_steps_and_guidance():
    plain = core.DecodeSettings().resolve({})
    assert (plain.scheduler, plain.steps, plain.guidance_scale) == ("unipc", 60, 7.5)  # the reference
    lcm = LCM.resolve({})
    assert (lcm.steps, lcm.guidance_scale) == (4, 1.0)
    assert core.DecodeSettings(scheduler="tcd", steps=8, guidance_scale=1.5).resolve({}).steps == 8
    hinted = core.DecodeSettings().resolve({"scheduler": "lcm", "steps": 6})  # what the file says
    assert (hinted.scheduler, hinted.steps, hinted.guidance_scale) == ("lcm", 6, 1.0)
    assert core.DecodeSettings(steps=5).resolve({"scheduler": "tcd", "steps": 6}).steps == 5
    with pytest.raises(PlicInputError, match="the lcm sampler takes at most 50 steps"):
        core.DecodeSettings(steps=60, scheduler="lcm").resolve({})


def test_a_familys_record_gives_the_defaults_a_file_does_not_override():
    fast = dataclasses.replace(families.SD15, name="fast",
                               defaults={**families.SD15.defaults, "steps": 8, "scheduler": "dpmpp_2m"},
                               guidance=3.0)
    chosen = core.DecodeSettings().resolve({}, fast)
    assert (chosen.steps, chosen.scheduler, chosen.guidance_scale) == (8, "dpmpp_2m", 3.0)
    assert core.DecodeSettings().resolve({"steps": 12}, fast).steps == 12
    assert core.DecodeSettings().resolve({"steps": 60}, fast).steps == 8  # the format's default: no setting


def test_hints_name_the_family_and_sampler_and_plic_info_shows_them(unpacked, tmp_path):
    plic = pack.encode_image(load_shared("astronaut.png", max_side=32), prompt="x",
                              settings=pack.EncodeSettings(max_side=32),
                              decode_settings={"family": "sd15", "scheduler": "tcd", "steps": 6})
    again = fileformat.loads(fileformat.dumps(plic))
    assert again.decode_settings == {"family": "sd15", "scheduler": "tcd", "steps": 6}
    with pytest.raises(ValueError, match="decode setting 'family' is 3; it must be a string"):
        fileformat.dumps(dataclasses.replace(plic, decode_settings={"family": 3}))
    path = fileformat.save(plic, tmp_path / "hinted.plic")
    result = subprocess.run([sys.executable, "-m", "plic", "info", path], cwd=REPO, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "decode settings: family sd15, scheduler tcd, steps 6" in result.stdout


def test_a_hint_naming_an_unknown_family_falls_back_with_a_warning(models_env, unpacked, caplog):
    decoder = load_node()
    other = dataclasses.replace(unpacked, decode_settings={**unpacked.decode_settings, "family": "sdxl"})
    with caplog.at_level(logging.WARNING, logger="plic.decode.families"):
        image = decoder.reconstruct(other, core.DecodeSettings(steps=1))
    assert "tuned for the decoder family 'sdxl' (a family this decoder does not know); decoding it with 'sd15'" \
        in caplog.text
    np.testing.assert_array_equal(image, decoder.reconstruct(unpacked, core.DecodeSettings(steps=1)))


# -- a family is a record ------------------------------------------------------------------------

def test_a_new_family_is_a_record(models_env, unpacked, monkeypatch):
    """A family with only the colour+canny ControlNet and its own default steps, added as a
    record: the loader offers it, loads one ControlNet and decodes with its defaults."""
    colour_only = dataclasses.replace(families.SD15, name="colour_only", controls=families.SD15.controls[1:],
                                      defaults={**families.SD15.defaults, "steps": 2})
    monkeypatch.setitem(families.FAMILIES, "colour_only", colour_only)
    assert "colour_only" in PlicDiffusersLoader.INPUT_TYPES()["optional"]["family"][0]
    decoder = load_node(family="colour_only", inpaint_controlnet=None)
    assert len(decoder.pipeline.controlnet.nets) == 1
    seen = []
    image = decoder.reconstruct(unpacked, on_step=lambda done, total: seen.append(total))
    assert seen == [2, 2] and image.shape == (unpacked.height, unpacked.width, 3)
    keep = unpacked.salient_mask
    np.testing.assert_array_equal(image[keep], unpacked.salient_pixels[keep])


@needs_shared
def test_a_fine_tune_as_one_file_decodes_through_the_same_record(tiny_models_dir, unpacked, tmp_path,
                                                                 monkeypatch):
    """An SD1.5 fine-tune as released (one .safetensors in the A1111 layout, in
    models/checkpoints; here the tiny models written so by ComfyUI's own key maps) is read with
    a diffusers folder's configs and tokenizer: the same weights, so the same image."""
    from scripts.comfy_server import COMFYUI

    root = tmp_path / "models"  # the tiny models' folders, and a checkpoints folder of its own
    root.mkdir()
    for kind in ("diffusers", "controlnet"):
        (root / kind).symlink_to(tiny_models_dir / kind, target_is_directory=True)
    monkeypatch.setenv(model_files.MODELS_ENV, str(root))
    name = "tiny_finetune.safetensors"
    save_a1111_checkpoint(tiny_models_dir / "diffusers" / PIPELINE, root / "checkpoints" / name, COMFYUI)
    assert name in PlicDiffusersLoader.INPUT_TYPES()["required"]["model"][0]
    with pytest.raises(ModelNotFoundError, match="is a single file: also name a diffusers folder"):
        load_node(model=name)
    single = load_node(model=name, base_model=PIPELINE)
    assert single.paths.pipeline.is_file() and type(single.pipeline).__name__ == families.SD15.pipeline_class
    settings = core.DecodeSettings(steps=2)
    image = single.reconstruct(unpacked, settings)
    np.testing.assert_array_equal(image, load_node().reconstruct(unpacked, settings))


# -- LoRAs ---------------------------------------------------------------------------------------

def test_a_lora_is_merged_as_its_weights_say_in_either_layout(models_env, tiny_models_dir):
    plain = load_node()
    layer = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    before = dict(plain.pipeline.unet.named_modules())[layer].weight.detach().clone()
    merged = {}
    for layout, name in LORAS.items():
        decoder = load_node(lora_1=name, lora_1_strength=0.5)
        merged[layout] = dict(decoder.pipeline.unet.named_modules())[layer].weight.detach().clone()
    from safetensors.torch import load_file

    state = load_file(str(tiny_models_dir / "loras" / LORAS["kohya"]))
    key = "lora_unet_" + layer.replace(".", "_")
    down, up, alpha = (state[f"{key}.lora_down.weight"], state[f"{key}.lora_up.weight"],
                       float(state[f"{key}.alpha"]))
    expected = before + 0.5 * alpha / down.shape[0] * up @ down
    torch.testing.assert_close(merged["kohya"], expected)
    torch.testing.assert_close(merged["diffusers"], expected)  # the same LoRA in the other layout


def test_a_few_step_lora_decodes_through_the_loader_and_reconstruct(models_env, plic_file, unpacked):
    plain = load_node()
    reference = plain.reconstruct(unpacked, core.DecodeSettings(steps=2))
    decoder = load_node(lora_1=LORAS["kohya"], lora_1_strength=1.0)
    assert decoder.pipeline is not plain.pipeline  # other weights: another cached pipeline
    seen = []
    (image,) = PlicReconstruct().run(decoder, [plic_file], 0, -1, 1.0, True, "lcm")
    rgb = np.rint(image[0].numpy() * 255).astype(np.uint8)
    assert type(decoder.pipeline.scheduler).__name__ == "LCMScheduler"
    assert _max_diff(rgb, reference) > 0
    keep = unpacked.salient_mask
    np.testing.assert_array_equal(rgb[keep], unpacked.salient_pixels[keep])
    zero = load_node(lora_1=LORAS["diffusers"], lora_1_strength=0.0)  # weight 0: the plain models
    np.testing.assert_array_equal(zero.reconstruct(unpacked, core.DecodeSettings(steps=2)), reference)
    tcd = decoder.reconstruct(unpacked, core.DecodeSettings(scheduler="tcd"), lambda d, t: seen.append(t))
    assert seen == [4] * 4 and type(decoder.pipeline.scheduler).__name__ == "TCDScheduler"
    assert tcd.shape == rgb.shape


def test_lora_names_are_listed_and_resolved_as_comfyui_keeps_them(models_env, tmp_path):
    listed = PlicDiffusersLoader.INPUT_TYPES()["optional"]["lora_1"][0]
    assert listed == ["none", *sorted(LORAS.values())]
    assert lora.parse("x.safetensors:0.7") == ("x.safetensors", 0.7)
    assert lora.parse("C:\\loras\\x.safetensors") == ("C:\\loras\\x.safetensors", 1.0)
    with pytest.raises(PlicInputError, match="must be a finite number"):
        lora.parse("x.safetensors:nan")
    with pytest.raises(ModelNotFoundError, match="The LoRA 'lcm.safetensors' was not found; looked in: .*loras"):
        model_files.find_lora("lcm.safetensors", model_files.search_dirs("loras"))
    (tmp_path / "x.ckpt").write_bytes(b"0")
    with pytest.raises(ModelNotFoundError, match="is not a .safetensors file"):
        model_files.find_lora(str(tmp_path / "x.ckpt"), [])


def test_a_lora_of_another_family_is_refused_naming_the_file(models_env, tmp_path):
    from safetensors.torch import save_file

    sdxl = tmp_path / "sdxl_lora.safetensors"
    save_file({"lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(4, 640),
               "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(640, 4)},
              str(sdxl))
    with pytest.raises(PlicInputError, match=f"The LoRA {sdxl} changes 'input_blocks_4_1_.*another model family"):
        load_node(lora_1=str(sdxl))
    other = tmp_path / "other.safetensors"
    save_file({"model.diffusion_model.x": torch.zeros(2)}, str(other))
    with pytest.raises(PlicInputError, match="neither the kohya"):
        load_node(lora_2=str(other))


# -- plic decode ---------------------------------------------------------------------------------

def test_plic_decode_takes_loras_and_a_few_step_sampler(models_env, tiny_models_dir, plic_file, unpacked,
                                                        tmp_path):
    from plic.image import load_rgb

    source = fileformat.save(plic_file, tmp_path / "in.plic")
    out = tmp_path / "out.png"
    result = subprocess.run(
        [sys.executable, "-m", "plic", "decode", source, "-o", out, "--models-dir", tiny_models_dir,
         "--model", PIPELINE, "--inpaint-controlnet", INPAINT, "--color-canny-controlnet", COLOR_CANNY,
         "--lora", f"{LORAS['kohya']}:0.8", "--lora", LORAS["diffusers"] + ":0.2", "--scheduler", "lcm"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "lcm 4 steps, cfg 1, seed 786" in result.stderr
    loras = tiny_models_dir / "loras"
    decoder = core.Reconstructor(core.ModelPaths(
        tiny_models_dir / "diffusers" / PIPELINE,
        (tiny_models_dir / "controlnet" / INPAINT, tiny_models_dir / "controlnet" / COLOR_CANNY),
        loras=(lora.LoraSpec(loras / LORAS["kohya"], 0.8), lora.LoraSpec(loras / LORAS["diffusers"], 0.2))))
    assert _max_diff(load_rgb(out), decoder.reconstruct(unpacked, LCM)) <= 1  # another process


def test_plic_decode_names_the_controlnet_a_family_needs(tiny_models_dir, plic_file, tmp_path):
    source = fileformat.save(plic_file, tmp_path / "x.plic")
    result = subprocess.run(
        [sys.executable, "-m", "plic", "decode", source, "-o", tmp_path / "x.png",
         "--models-dir", tiny_models_dir, "--model", PIPELINE, "--inpaint-controlnet", INPAINT],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "--color-canny-controlnet is needed by the sd15 decoder family" in result.stderr
