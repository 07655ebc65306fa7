"""Reconstruction with real (tiny, random-weight) models loaded from a ComfyUI-style models tree:
the loader node, PLIC Reconstruct, the graph helper nodes, ``plic decode`` and the benchmark."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from plic import codec, fileformat, models
from plic import reconstruct as core
from plic.errors import ModelNotFoundError, PlicInputError

from conftest import REPO, load_shared
from nodes.decode_graph import PlicDecodeSettings, PlicInpaintHint, PlicRestoreSalient
from nodes.reconstruct import PlicDiffusersLoader, PlicReconstruct
from tiny_models import COLOR_CANNY, COLOR_CANNY_FILE, INPAINT, PIPELINE, tiny_models_dir  # noqa: F401

STEPS = 2


@pytest.fixture(scope="module")
def plic_file() -> fileformat.PlicFile:
    """A small real image (not a multiple of 8) with a rectangle of salient pixels."""
    rgb = load_shared("astronaut.png", max_side=90)
    mask = np.zeros(rgb.shape[:2], bool)
    mask[10:40, 30:60] = True
    return codec.encode_image(rgb, prompt="an astronaut in a white suit", salient_mask=mask,
                              settings=codec.EncodeSettings(max_side=90),
                              decode_hints={**codec.DEFAULT_DECODE_HINTS, "steps": STEPS, "seed": 5})


@pytest.fixture
def models_env(tiny_models_dir, monkeypatch):
    monkeypatch.setenv(models.MODELS_ENV, str(tiny_models_dir))
    return tiny_models_dir


@pytest.fixture
def loaded(models_env):
    """The decoder as PLIC Diffusers Loader gives it (real files, real loader)."""
    (reconstructor,) = PlicDiffusersLoader().load(PIPELINE, INPAINT, COLOR_CANNY, "auto", False)
    return reconstructor


def test_reconstruct_node_restores_salient_pixels_at_working_size(loaded, plic_file):
    (image,) = PlicReconstruct().run(loaded, [plic_file], 0, -1, 7.5)
    unpacked = codec.unpack(plic_file)
    width, height = plic_file.working_size
    assert tuple(image.shape) == (1, height, width, 3)
    rgb = np.rint(image[0].numpy() * 255).astype(np.uint8)
    keep = unpacked.salient_mask
    assert keep.any() and (~keep).any()
    np.testing.assert_array_equal(rgb[keep], unpacked.salient_pixels[keep])


def test_reconstruct_node_gives_memory_back_unless_kept_loaded(loaded, plic_file):
    (first,) = PlicReconstruct().run(loaded, [plic_file], 1, -1, 7.5, keep_loaded=True)
    assert core._CACHE
    PlicReconstruct().run(loaded, [plic_file], 1, -1, 7.5, keep_loaded=False)
    assert not core._CACHE
    (image,) = PlicReconstruct().run(loaded, [plic_file], 1, -1, 7.5)  # loads again
    assert core._CACHE
    torch.testing.assert_close(image, first, rtol=0, atol=0)  # the reloaded models, the same image


def test_same_seed_same_image_other_seed_other_image(loaded, plic_file):
    unpacked = codec.unpack(plic_file)
    first = loaded.reconstruct(unpacked, core.DecodeSettings(seed=11))
    again = loaded.reconstruct(unpacked, core.DecodeSettings(seed=11))
    other = loaded.reconstruct(unpacked, core.DecodeSettings(seed=12))
    np.testing.assert_array_equal(first, again)
    assert not np.array_equal(first, other)


def test_steps_and_seed_come_from_the_file_and_cancel_stops(loaded, plic_file):
    seen = []

    class Cancelled(Exception):
        pass

    def on_step(done, total):
        seen.append((done, total))
        raise Cancelled

    with pytest.raises(Cancelled):
        loaded.reconstruct(codec.unpack(plic_file), on_step=on_step)
    assert seen == [(1, STEPS)]
    assert core.DecodeSettings().resolve(plic_file.decode_hints).seed == 5


def test_pipeline_is_cached_and_uses_the_reference_setup(loaded, models_env):
    (again,) = PlicDiffusersLoader().load(PIPELINE, INPAINT, COLOR_CANNY, "auto", False)
    assert again.pipeline is loaded.pipeline
    pipe = loaded.pipeline
    assert type(pipe).__name__ == "StableDiffusionControlNetInpaintPipeline"
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert type(pipe.controlnet).__name__ == "MultiControlNetModel" and len(pipe.controlnet.nets) == 2


def test_single_file_controlnet_loads(loaded, models_env, plic_file):
    """The colour+canny ControlNet saved as one file holds the same weights as its folder: the
    decoder built from it makes the same image."""
    (reconstructor,) = PlicDiffusersLoader().load(PIPELINE, INPAINT, COLOR_CANNY_FILE, "fp32", False)
    assert reconstructor.pipeline is not loaded.pipeline
    settings = core.DecodeSettings(steps=1)
    image = reconstructor.reconstruct(codec.unpack(plic_file), settings)
    np.testing.assert_array_equal(image, loaded.reconstruct(codec.unpack(plic_file), settings))


def test_half_precision_is_never_used_on_cpu():
    assert core.resolve_dtype("fp16", "cpu") == torch.float32
    assert core.resolve_dtype("auto", "cpu") == torch.float32
    assert core.resolve_dtype("bf16", "cuda") == torch.bfloat16
    with pytest.raises(PlicInputError):
        core.resolve_dtype("fp8", "cpu")


def test_missing_model_file_names_file_and_folder(tiny_models_dir, tmp_path, monkeypatch):
    broken = tmp_path / "models"
    shutil.copytree(tiny_models_dir, broken)
    (broken / "diffusers" / PIPELINE / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    monkeypatch.setenv(models.MODELS_ENV, str(broken))
    with pytest.raises(ModelNotFoundError) as err:
        PlicDiffusersLoader().load(PIPELINE, INPAINT, COLOR_CANNY, "auto", False)
    message = str(err.value)
    assert "unet/diffusion_pytorch_model.safetensors" in message
    assert str(broken / "diffusers" / PIPELINE) in message


def test_missing_controlnet_lists_folders_searched(models_env):
    with pytest.raises(ModelNotFoundError) as err:
        PlicDiffusersLoader().load(PIPELINE, "control_v11p_sd15_inpaint", COLOR_CANNY, "auto", False)
    assert "control_v11p_sd15_inpaint" in str(err.value)
    assert str(models_env / "controlnet") in str(err.value)


def test_loader_dropdowns_list_the_models(models_env):
    required = PlicDiffusersLoader.INPUT_TYPES()["required"]
    assert required["model"][0] == [PIPELINE]
    assert set(required["inpaint_controlnet"][0]) == {INPAINT, COLOR_CANNY, COLOR_CANNY_FILE}


def test_restore_salient_node_is_exact_for_a_batch():
    generated = torch.rand(3, 6, 5, 3)
    stored = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (1, 6, 5, 3)) / 255.0).float()
    mask = torch.zeros(1, 6, 5)
    mask[0, 1:3, 2:4] = 1
    (out,) = PlicRestoreSalient().run(generated, stored, mask)
    keep = mask[0].bool()
    for item in range(3):
        assert torch.equal(out[item][keep], stored[0][keep])
        assert torch.equal(out[item][~keep], generated[item][~keep])


def test_restore_salient_node_rejects_other_sizes():
    with pytest.raises(PlicInputError, match="working size"):
        PlicRestoreSalient().run(torch.rand(1, 8, 8, 3), torch.rand(1, 6, 5, 3), torch.zeros(1, 6, 5))


def test_restore_salient_node_rejects_a_batch_that_fits_no_image():
    with pytest.raises(PlicInputError, match="PLIC Restore Salient: 2 salient_pixels for 3 images"):
        PlicRestoreSalient().run(torch.rand(3, 6, 5, 3), torch.rand(2, 6, 5, 3), torch.zeros(1, 6, 5))


def test_inpaint_hint_node_marks_pixels_to_regenerate(plic_file):
    unpacked = codec.unpack(plic_file)
    pixels = torch.from_numpy(unpacked.salient_pixels[None] / 255.0).float()
    mask = torch.from_numpy(unpacked.salient_mask[None].astype(np.float32))
    (hint,) = PlicInpaintHint().run(pixels, mask)
    np.testing.assert_allclose(hint[0].numpy(), unpacked.inpaint_hint(), atol=1e-6)
    assert (hint[0].numpy()[~unpacked.salient_mask] == -1).all()


def test_decode_settings_node_reads_the_file(plic_file):
    seed, steps, negative, strength, cfg = PlicDecodeSettings().run([plic_file])
    assert (seed, steps, strength, cfg) == (5, STEPS, 1.0, core.DEFAULT_GUIDANCE)
    assert negative == codec.DEFAULT_DECODE_HINTS["negative_prompt"]


def test_decode_settings_node_overrides_what_is_set(plic_file):
    seed, steps, negative, strength, cfg = PlicDecodeSettings().run(
        [plic_file], steps=3, seed=11, controlnet_strength=0.6, cfg=4.0)
    assert (seed, steps, strength, cfg) == (11, 3, 0.6, 4.0)
    assert negative == codec.DEFAULT_DECODE_HINTS["negative_prompt"]
    assert PlicDecodeSettings().run([plic_file], steps=3)[:2] == (5, 3)  # the rest stays the file's


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "plic", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def _model_args(tiny_models_dir):
    return ("--models-dir", tiny_models_dir, "--model", PIPELINE, "--inpaint-controlnet", INPAINT,
            "--color-canny-controlnet", tiny_models_dir / "controlnet" / COLOR_CANNY, "--steps", 1)


def test_plic_decode_command_writes_png(loaded, tiny_models_dir, plic_file, tmp_path):
    """The command's PNG is the image the same models make in-process (1 step, the file's seed),
    salient pixels exact."""
    from plic.image import load_rgb

    source = fileformat.save(plic_file, tmp_path / "in.plic")
    out = tmp_path / "out.png"
    result = _run_cli("decode", source, "-o", out, *_model_args(tiny_models_dir), "--size", "original")
    assert result.returncode == 0, result.stderr
    unpacked = codec.unpack(plic_file)
    expected = loaded.reconstruct(unpacked, core.DecodeSettings(steps=1))
    written = load_rgb(out)
    assert written.shape == expected.shape
    assert np.abs(written.astype(int) - expected).max() <= 1  # another process, the same computation
    np.testing.assert_array_equal(written[unpacked.salient_mask], unpacked.salient_pixels[unpacked.salient_mask])


def test_plic_decode_a_folder_reports_a_damaged_file_and_decodes_the_rest(tiny_models_dir, plic_file, tmp_path):
    folder = tmp_path / "in"
    good = fileformat.save(plic_file, folder / "good.plic")
    (folder / "bad.plic").write_bytes(good.read_bytes()[:-10])
    result = _run_cli("decode", folder, "-o", tmp_path / "out", *_model_args(tiny_models_dir))
    assert result.returncode == 1
    assert "bad.plic: not a valid .plic file: truncated" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.png"]


def test_bench_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "bench/decode_gpu.py", "--tiny", "--steps", "1", "--variants", "base",
               "--sizes", "64x64", "--json", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(out.read_text())["results"]
    assert {key: row[key] for key in ("device", "models", "size", "precision", "variant", "steps", "batch",
                                      "peak_gpu_memory_gb", "speedup_vs_base")} == {
        "device": "CPU", "models": "tiny", "size": "64x64", "precision": "fp32", "variant": "base",
        "steps": 1, "batch": 1, "peak_gpu_memory_gb": None, "speedup_vs_base": 1.0}
    # one step timed inside one call: the loop's rate is at least the call's
    assert row["iterations_per_s"] >= 0.99 / row["seconds_per_image"] > 0
