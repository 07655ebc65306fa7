"""Reconstruction with real (tiny, random-weight) models loaded from a ComfyUI-style models tree:
the loader node, PLIC Reconstruct, the graph helper nodes, ``plic decode`` and the benchmark."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import needs_shared
from nodes.decode_graph import PlicDecodeSettings, PlicInpaintHint, PlicRestoreSalient
from nodes.reconstruct import PlicDiffusersLoader, PlicReconstruct
from plic import model_files
from plic.codec import fileformat, pack
from plic.decode import reconstruct as core
from plic.errors import ModelNotFoundError, PlicInputError
from tests.support.images import REPO, load_shared
from tests.support.tiny_models import (  # noqa: F401
    COLOR_CANNY,
    COLOR_CANNY_FILE,
    INPAINT,
    PIPELINE,
    astronaut_plic,
    load_node,
    tiny_models_dir,
)

STEPS = 2


@pytest.fixture(scope="module")
def plic_file() -> fileformat.PlicFile:
    """A small real image (not a multiple of 8) with a rectangle of salient pixels."""
    return astronaut_plic(90, np.s_[10:40, 30:60], "an astronaut in a white suit",
                          {**pack.DEFAULT_DECODE_SETTINGS, "steps": STEPS, "seed": 5})


@pytest.fixture
def models_env(tiny_models_dir, monkeypatch):
    monkeypatch.setenv(model_files.MODELS_ENV, str(tiny_models_dir))
    return tiny_models_dir


@pytest.fixture
def loaded(models_env):
    """The decoder as PLIC Diffusers Loader gives it (real files, real loader)."""
    return load_node()


def test_reconstruct_node_restores_salient_pixels_at_working_size(loaded, plic_file):
    (image,) = PlicReconstruct().run(loaded, [plic_file], 0, -1, 7.5)
    unpacked = pack.unpack(plic_file)
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
    unpacked = pack.unpack(plic_file)
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
        loaded.reconstruct(pack.unpack(plic_file), on_step=on_step)
    assert seen == [(1, STEPS)]
    assert core.DecodeSettings().resolve(plic_file.decode_settings).seed == 5


def test_pipeline_is_cached_and_uses_the_reference_setup(loaded, models_env):
    again = load_node()
    assert again.pipeline is loaded.pipeline
    pipe = loaded.pipeline
    assert type(pipe).__name__ == "StableDiffusionControlNetInpaintPipeline"
    assert type(pipe.scheduler).__name__ == "UniPCMultistepScheduler"
    assert type(pipe.controlnet).__name__ == "MultiControlNetModel" and len(pipe.controlnet.nets) == 2


def test_single_file_controlnet_loads(loaded, models_env, plic_file):
    """The colour+canny ControlNet saved as one file holds the same weights as its folder: the
    decoder built from it makes the same image."""
    reconstructor = load_node(color_canny_controlnet=COLOR_CANNY_FILE, precision="fp32")
    assert reconstructor.pipeline is not loaded.pipeline
    settings = core.DecodeSettings(steps=1)
    image = reconstructor.reconstruct(pack.unpack(plic_file), settings)
    np.testing.assert_array_equal(image, loaded.reconstruct(pack.unpack(plic_file), settings))


def test_half_precision_is_never_used_on_cpu():
    assert core.resolve_dtype("fp16", "cpu") == torch.float32
    assert core.resolve_dtype("auto", "cpu") == torch.float32
    assert core.resolve_dtype("bf16", "cuda") == torch.bfloat16
    with pytest.raises(PlicInputError):
        core.resolve_dtype("fp8", "cpu")


def _max_diff(first: np.ndarray, second: np.ndarray) -> int:
    return int(np.abs(first.astype(np.int16) - second.astype(np.int16)).max())


@pytest.fixture(scope="module")
def small_file() -> pack.Unpacked:
    """A file no larger than the tiny VAE's 64-pixel tile."""
    return pack.unpack(pack.encode_image(load_shared("astronaut.png", max_side=56), prompt="a suit",
                                           settings=pack.EncodeSettings(max_side=56)))


def test_scheduler_option_switches_sampler_and_back(loaded, plic_file):
    unpacked = pack.unpack(plic_file)
    unipc = loaded.reconstruct(unpacked, core.DecodeSettings(steps=3))
    dpm = loaded.reconstruct(unpacked, core.DecodeSettings(steps=3, scheduler="dpmpp_2m"))
    scheduler = loaded.pipeline.scheduler
    assert type(scheduler).__name__ == "DPMSolverMultistepScheduler"
    assert scheduler.config.algorithm_type == "dpmsolver++" and scheduler.config.solver_order == 2
    assert _max_diff(unipc, dpm) > 0  # another sampler: another image
    again = loaded.reconstruct(unpacked, core.DecodeSettings(steps=3))  # the file's: unipc
    assert type(loaded.pipeline.scheduler).__name__ == "UniPCMultistepScheduler"
    np.testing.assert_array_equal(again, unipc)
    with pytest.raises(PlicInputError, match="decode setting 'scheduler' is \"euler\"; it must be one of"):
        core.DecodeSettings(scheduler="euler").resolve({})
    for bad in ({"guidance_scale": float("nan")}, {"guidance_scale": float("inf")}, {"seed": 2**64},
                {"seed": -1}, {"controlnet_scale": float("nan")}):  # issue 23 item 2, 24 item 7
        with pytest.raises(PlicInputError, match=f"{next(iter(bad)).split('_')[0]}.* must be"):
            core.DecodeSettings(**bad).resolve({})


def test_a_batch_matches_each_file_decoded_alone(loaded, plic_file):
    first = pack.unpack(plic_file)
    second = dataclasses.replace(first, decode_settings={**first.decode_settings, "seed": 6})
    batch = loaded.reconstruct_batch([first, second])
    alone = [loaded.reconstruct(first), loaded.reconstruct(second)]
    # each file keeps its seed; batched kernels round differently (measured: at most 1 level)
    assert max(_max_diff(b, a) for b, a in zip(batch, alone)) <= 1
    assert _max_diff(batch[0], batch[1]) > 10
    keep = first.salient_mask
    np.testing.assert_array_equal(batch[1][keep], first.salient_pixels[keep])


def test_batches_hold_neighbours_that_can_share_a_call(plic_file, small_file):
    big = pack.unpack(plic_file)
    other_steps = dataclasses.replace(big, decode_settings={**big.decode_settings, "steps": 9})
    parts = [big, big, big, small_file, big, other_steps]
    groups = core.batches(parts, core.DecodeSettings(), 2)
    assert [[parts.index(p) if p is not big else "big" for p in g] for g in groups] == [
        ["big", "big"], ["big"], [3], ["big"], [5]]
    assert len(core.batches(parts[:3], core.DecodeSettings(steps=4), 8)) == 1
    with pytest.raises(PlicInputError, match="share the working size"):
        core.generate(None, [big, small_file])
    with pytest.raises(PlicInputError, match="batch size must be at least 1"):
        core.batches(parts, core.DecodeSettings(), 0)


def test_vae_tiling_changes_only_images_larger_than_the_tile(loaded, plic_file, small_file):
    unpacked = pack.unpack(plic_file)
    assert max(unpacked.width, unpacked.height) > loaded.pipeline.vae.tile_sample_min_size == 64
    plain = loaded.reconstruct(unpacked)
    tiled = loaded.reconstruct(unpacked, core.DecodeSettings(vae_tiling=True))
    assert _max_diff(plain, tiled) > 0
    np.testing.assert_array_equal(loaded.reconstruct(unpacked), plain)  # untiled again
    small = loaded.reconstruct(small_file, core.DecodeSettings(steps=1))
    np.testing.assert_array_equal(small, loaded.reconstruct(small_file, core.DecodeSettings(
        steps=1, vae_tiling=True)))


def test_channels_last_loads_through_the_node_and_changes_rounding_only(loaded, models_env, plic_file):
    fast = load_node(channels_last=True)
    pipe = fast.pipeline
    for conv in (pipe.unet.conv_in, pipe.vae.encoder.conv_in, *(n.conv_in for n in pipe.controlnet.nets)):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    unpacked = pack.unpack(plic_file)
    assert _max_diff(fast.reconstruct(unpacked), loaded.reconstruct(unpacked)) <= 2  # measured: 1


def test_compile_options_are_checked():
    with pytest.raises(PlicInputError, match="compile must be one of off, default"):
        core.LoadOptions(compile="fastest")
    with pytest.raises(PlicInputError, match="cannot be combined"):
        core.LoadOptions(compile="default", cpu_offload=True)


@pytest.mark.slow
def test_compile_option_compiles_unet_and_controlnets_and_changes_rounding_only(loaded, small_file):
    """torch.compile on the CPU (inductor writes and builds C++): 5-9 minutes on the loaded 2-core
    development machine, under 2 with inductor's on-disk cache warm. reduce-overhead is the mode
    with the most code here (outputs copied out); on the CPU there are no CUDA graphs."""
    from torch._dynamo.utils import counters

    reference = loaded.reconstruct(small_file, core.DecodeSettings(steps=1))
    counters.clear()
    compiled = core.Reconstructor(loaded.paths, core.LoadOptions(compile="reduce-overhead"))
    image = compiled.reconstruct(small_file, core.DecodeSettings(steps=1))
    assert counters["stats"]["unique_graphs"] >= 2  # UNet and ControlNet, whole graphs
    assert _max_diff(image, reference) <= 2
    with torch._dynamo.config.patch(error_on_recompile=True):  # the same shapes: no recompile
        again = compiled.reconstruct(small_file, core.DecodeSettings(steps=1))
    np.testing.assert_array_equal(again, image)


def test_missing_model_file_names_file_and_folder(tiny_models_dir, tmp_path, monkeypatch):
    broken = tmp_path / "models"
    shutil.copytree(tiny_models_dir, broken)
    (broken / "diffusers" / PIPELINE / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    monkeypatch.setenv(model_files.MODELS_ENV, str(broken))
    with pytest.raises(ModelNotFoundError) as err:
        load_node()
    message = str(err.value)
    assert "unet/diffusion_pytorch_model.safetensors" in message
    assert str(broken / "diffusers" / PIPELINE) in message


def test_missing_controlnet_lists_folders_searched(models_env):
    with pytest.raises(ModelNotFoundError) as err:
        load_node(inpaint_controlnet="control_v11p_sd15_inpaint")
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
    unpacked = pack.unpack(plic_file)
    pixels = torch.from_numpy(unpacked.salient_pixels[None] / 255.0).float()
    mask = torch.from_numpy(unpacked.salient_mask[None].astype(np.float32))
    (hint,) = PlicInpaintHint().run(pixels, mask)
    np.testing.assert_allclose(hint[0].numpy(), unpacked.inpaint_hint(), atol=1e-6)
    assert (hint[0].numpy()[~unpacked.salient_mask] == -1).all()


def test_decode_settings_node_reads_the_file(plic_file):
    seed, steps, negative, strength, cfg = PlicDecodeSettings().run([plic_file])
    assert (seed, steps, strength, cfg) == (5, STEPS, 1.0, core.DEFAULT_GUIDANCE)
    assert negative == pack.DEFAULT_DECODE_SETTINGS["negative_prompt"]


def test_decode_settings_node_overrides_what_is_set(plic_file):
    seed, steps, negative, strength, cfg = PlicDecodeSettings().run(
        [plic_file], steps=3, seed=11, controlnet_strength=0.6, cfg=4.0)
    assert (seed, steps, strength, cfg) == (11, 3, 0.6, 4.0)
    assert negative == pack.DEFAULT_DECODE_SETTINGS["negative_prompt"]
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
    unpacked = pack.unpack(plic_file)
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


def test_plic_decode_fast_paths_match_the_library(tiny_models_dir, plic_file, small_file, loaded, tmp_path):
    folder = tmp_path / "in"
    for name in ("a", "b"):
        fileformat.save(plic_file, folder / f"{name}.plic")
    fileformat.save(pack.encode_image(load_shared("astronaut.png", max_side=56), prompt="x",
                                       settings=pack.EncodeSettings(max_side=56)), folder / "c.plic")
    result = _run_cli("decode", folder, "-o", tmp_path / "out", *_model_args(tiny_models_dir),
                      "--batch-size", 2, "--scheduler", "dpmpp_2m", "--vae-tiling", "--channels-last")
    assert result.returncode == 0, result.stderr
    from plic.image import load_rgb

    expected = loaded.reconstruct(pack.unpack(plic_file), core.DecodeSettings(
        steps=1, scheduler="dpmpp_2m", vae_tiling=True))
    for name in ("a", "b"):
        assert _max_diff(load_rgb(tmp_path / "out" / f"{name}.png"), expected) <= 2
    assert (tmp_path / "out" / "c.png").is_file()  # another size: its own call


def test_reconstruct_node_batches_with_the_chosen_sampler(loaded, plic_file):
    (image,) = PlicReconstruct().run(loaded, [plic_file, plic_file], 0, -1, 7.5, True,
                                     "dpmpp_2m", 2, True)
    expected = loaded.reconstruct(pack.unpack(plic_file), core.DecodeSettings(
        scheduler="dpmpp_2m", vae_tiling=True))
    for item in image:
        assert _max_diff(np.rint(item.numpy() * 255).astype(np.uint8), expected) <= 1
    optional = PlicReconstruct.INPUT_TYPES()["optional"]  # workflows saved without them still queue
    assert optional["scheduler"][0] == ["file", "unipc", "dpmpp_2m", "lcm", "tcd"]
    assert PlicDiffusersLoader.INPUT_TYPES()["optional"]["compile"][0] == list(core.COMPILE_MODES)


def test_bench_runs_tiny_on_cpu(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench.decode_gpu", "--models", "tiny", "--steps", "1", "--repeats", "2",
               "--variants", "unipc20", "batch2", "lcm4", "--sizes", "64x64", "--json", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = {row["variant"]: row for row in json.loads(out.read_text())["results"]}
    assert list(rows) == ["paper", "unipc20", "batch2", "lcm4"]  # the reference is always measured
    assert (rows["paper"]["steps"], rows["unipc20"]["steps"], rows["batch2"]["batch"]) == (1, 20, 2)
    assert (rows["lcm4"]["steps"], rows["lcm4"]["cfg"], rows["paper"]["cfg"]) == (4, 1.0, 7.5)
    assert all(row["repeats"] == 2 and row["s_per_image_min"] <= row["s_per_image"]
               <= row["s_per_image_max"] for row in rows.values())
    assert rows["paper"]["x_paper"] == 1 and rows["paper"]["max_px_diff"] == 0  # run to run
    assert rows["batch2"]["max_px_diff"] <= 1 and rows["unipc20"]["max_px_diff"] > 0
    assert rows["lcm4"]["max_px_diff"] > 0  # another sampler and a LoRA: another image
    assert all(row["salient_max_px_diff"] == 0 for row in rows.values())  # kept verbatim
    assert "| 64x64 | unipc20 |" in result.stdout


@needs_shared
def test_bench_times_the_shipped_decode_workflow_through_comfyui(tmp_path):
    """bench/decode_gpu.py's comfyui variant: the shipped decompress workflow, run by the real
    ComfyUI's executor in the benchmark's process, on full-size SD1.5-layout random models (the
    only ones ComfyUI recognises), after the paper's configuration; one model set at a time, in
    bf16 (--low-memory: both fp32 sets held 15.5 GB)."""
    out = tmp_path / "bench.json"
    command = [sys.executable, "-m", "bench.decode_gpu", "--models", "sd15", "--steps", "2", "--repeats",
               "1", "--variants", "comfyui", "--sizes", "64x64", "--low-memory", "--json", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    rows = {row["variant"]: row for row in json.loads(out.read_text())["results"]}
    assert list(rows) == ["paper", "comfyui"]
    comfy = rows["comfyui"]
    assert (comfy["steps"], comfy["batch"], comfy["repeats"]) == (2, 1, 1)
    assert comfy["s_per_image"] > 0 and comfy["loop_it_per_s"] > 0  # KSampler's steps were seen
    assert comfy["attention"].startswith("attention_")  # ComfyUI's own attention function
    assert comfy["max_px_diff"] > 0  # another sampler implementation: compared, not equal
    assert comfy["salient_max_px_diff"] == rows["paper"]["salient_max_px_diff"] == 0  # kept verbatim
