"""Memory of a real ComfyUI 0.3.64 server over a queue that alternates PLIC's decoder (PLIC Load ->
PLIC Diffusers Loader -> PLIC Reconstruct) and a graph of ComfyUI's own nodes (Diffusers Loader ->
KSampler -> VAE Decode), then POST /free: the server's RSS after each prompt, how often PLIC's
decoder was loaded from disk and how often ComfyUI's loader ran, for this checkout and for an
earlier commit (the peer), in the same run, on the CPU with random-weight models: "medium" is
SD1.5's layout at half the UNet/ControlNet width (the decoder ~2.4 GB in fp32, ComfyUI's model
~1.7 GB), "tiny" the test models.

  python -m bench.comfy_memory --peer d3c2f74 --rounds 3 [--size tiny] [--cache-lru 8]
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from plic.codec import fileformat, pack
from plic.decode import sd15_configs
from plic.image import load_rgb, to_working
from scripts.comfy_server import ComfyServer
from tests.support import random_models
from tests.support.tiny_models import COLOR_CANNY, INPAINT, PIPELINE, build_models_tree

REPO = Path(__file__).resolve().parents[1]
#: Printed by the launcher each time plic.decode.reconstruct.load_pipeline reads the decoder from disk.
LOAD_MARK = "BENCH: PLIC decoder loaded from disk"
LAUNCHER = '''import runpy, sys
sys.path.insert(0, ".")
from plic.decode import reconstruct
load = reconstruct.load_pipeline
def counted(*args, **kwargs):
    print("{mark}", flush=True)
    return load(*args, **kwargs)
reconstruct.load_pipeline = counted
sys.argv = ["main.py", *sys.argv[1:]]
runpy.run_path("main.py", run_name="__main__")
'''


#: UNet and ControlNet widths of the "medium" models (SD1.5: 320, 640, 1280, 1280).
MEDIUM_WIDTHS = (160, 320, 640, 640)


def build_medium(models_dir: Path) -> Path:
    """SD1.5's layout at half the UNet/ControlNet width, saved as tiny_models.build_models_tree
    saves the tiny ones (same folder names)."""
    configs = sd15_configs.full()
    for name in ("unet", "controlnet"):
        configs[name]["block_out_channels"] = MEDIUM_WIDTHS
    configs["text_encoder"]["vocab_size"] = len(random_models.character_vocabulary())
    tokenizer = random_models.load_tokenizer(random_models.save_tokenizer(models_dir.parent / "tokenizer-src"))
    random_models.save_models_tree(random_models.build(configs, tokenizer), models_dir, PIPELINE,
                                   (INPAINT, COLOR_CANNY))
    return models_dir


def plic_graph(file: str) -> dict:
    return {
        "1": {"class_type": "PlicLoad", "inputs": {"file": file}},
        "2": {"class_type": "PlicDiffusersLoader",
              "inputs": {"model": PIPELINE, "inpaint_controlnet": INPAINT,
                         "color_canny_controlnet": COLOR_CANNY, "precision": "auto", "cpu_offload": False}},
        "3": {"class_type": "PlicReconstruct",
              "inputs": {"pipeline": ["2", 0], "plic": ["1", 0], "steps": 2, "seed": -1,
                         "guidance_scale": 7.5, "keep_loaded": True}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "plic"}},
    }


def comfy_graph(seed: int) -> dict:
    return {
        "1": {"class_type": "DiffusersLoader", "inputs": {"model_path": PIPELINE}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat", "clip": ["1", 1]}},
        "3": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "4": {"class_type": "KSampler",
              "inputs": {"model": ["1", 0], "positive": ["2", 0], "negative": ["2", 0],
                         "latent_image": ["3", 0], "seed": seed, "control_after_generate": "fixed",
                         "steps": 2, "cfg": 7.5, "sampler_name": "euler", "scheduler": "normal",
                         "denoise": 1.0}},
        "5": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 2]}},
        "6": {"class_type": "SaveImage", "inputs": {"images": ["5", 0], "filename_prefix": "comfy"}},
    }


def tiny_plic() -> bytes:
    rgb = to_working(load_rgb(REPO / "plic" / "data" / "example.png"), 64)
    mask = np.zeros(rgb.shape[:2], bool)
    mask[8:30, 20:44] = True
    return fileformat.dumps(pack.encode_image(rgb, prompt="an astronaut", salient_mask=mask,
                                               settings=pack.EncodeSettings(max_side=64)))


def rss_mb(server: ComfyServer) -> float:
    import psutil

    return psutil.Process(server.process.pid).memory_info().rss / 2**20


def measure(pack: Path, models: Path, rounds: int, extra_args: tuple[str, ...]) -> list[tuple[str, float, int, int]]:
    """(step, RSS MB, PLIC decoder loads so far, ComfyUI loader runs so far) after each step."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="plic-bench-") as tmp:
        launcher = Path(tmp) / "launch.py"
        launcher.write_text(LAUNCHER.format(mark=LOAD_MARK), encoding="utf-8")

        def link_models(folder: Path) -> None:
            folder.rmdir()
            folder.symlink_to(models, target_is_directory=True)

        with ComfyServer.prepared(Path(tmp) / "base", models=link_models, pack=pack,
                                  extra_args=extra_args, launcher=launcher) as server:
            name = server.upload("bench.plic", tiny_plic())["name"]
            comfy_loads = 0

            def record(step: str) -> None:
                rows.append((step, rss_mb(server), server.log.read_text().count(LOAD_MARK), comfy_loads))

            record("started")
            for i in range(rounds):
                server.run(plic_graph(name))
                record(f"{i + 1} PLIC decode")
                prompt_id = server.queue(comfy_graph(seed=i))
                entry = server.wait(prompt_id)
                cached = {node for kind, data in entry["status"]["messages"] if kind == "execution_cached"
                          for node in data["nodes"]}
                comfy_loads += "1" not in cached
                record(f"{i + 1} ComfyUI graph")
            for _ in range(2):  # the worker frees between prompts; it may miss the first wake-up
                server.post_json("/free", {"unload_models": True, "free_memory": True})
                time.sleep(3)
            record("POST /free")
    return rows


def export(commit: str, folder: Path) -> Path:
    """The pack as it was at ``commit``, in ``folder``."""
    folder.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peer", default="d3c2f74", help="commit to compare with (default: d3c2f74)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cache-lru", type=int, default=0, help="ComfyUI's --cache-lru N (0: classic cache)")
    parser.add_argument("--size", choices=("medium", "tiny"), default="medium")
    args = parser.parse_args(argv)
    extra = ("--cache-lru", str(args.cache_lru)) if args.cache_lru else ()
    build = build_medium if args.size == "medium" else build_models_tree
    with tempfile.TemporaryDirectory(prefix="plic-peer-") as tmp:
        models = build(Path(tmp) / "models")
        results = {f"peer {args.peer}": measure(export(args.peer, Path(tmp) / "pack"), models, args.rounds, extra),
                   "this checkout": measure(REPO, models, args.rounds, extra)}
    cache = f"--cache-lru {args.cache_lru}" if args.cache_lru else "classic cache"
    print(f"\nComfyUI 0.3.64 on the CPU, {cache}, {args.size} models; "
          "RSS MB / PLIC decoder loads / ComfyUI loader runs")
    names = list(results)
    print(f"| step | {' | '.join(names)} |\n|---|{'---|' * len(names)}")
    for i, (step, *_) in enumerate(results[names[0]]):
        cells = [f"{rows[i][1]:.0f} MB / {rows[i][2]} / {rows[i][3]}" for rows in results.values()]
        print(f"| {step} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
