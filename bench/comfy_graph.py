"""The shipped decompress workflow run by ComfyUI's own executor and nodes, in this process, for
``bench/decode_gpu.py``'s ``comfyui`` variant: what most users queue, timed like the diffusers
variants beside it.

ComfyUI (the source tree of ``--comfyui``, by default ../shared/comfyui/ComfyUI-0.3.64) is
imported as a library: ``comfy.options`` leaves argument parsing off unless ``main.py`` turns it
on, so ``comfy.cli_args.args`` holds the defaults, set here before anything reads them (base
folder, ``cpu`` without CUDA). This pack is loaded into it the way ComfyUI loads any custom node
(``nodes.load_custom_node`` on a ``custom_nodes/`` folder that links to this checkout).

The graph is ``workflows/api/plic_decompress.json`` as shipped, cut down to what produces the
decoded image (PLIC Restore Salient; the save and evaluation branches are left out) with two
changes: ``DiffusersLoader`` replaces ``CheckpointLoaderSimple`` (same outputs: MODEL, CLIP, VAE;
the random models are saved as a diffusers folder, ComfyUI converts it as it loads), and the
ControlNet loaders name the random ControlNets. Every call writes the same ``.plic`` under a new
name and queues the graph with it: PLIC Load and everything after it run again, as for a new
file, while the model loaders stay cached, as they do in a running ComfyUI.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.timing import StepClock
from scripts.comfy_server import REPO

WORKFLOW = REPO / "workflows" / "api" / "plic_decompress.json"
#: Node ids in the shipped workflow: the decoded image (PLIC Restore Salient), KSampler (its steps
#: are the loop), PLIC Decode Settings, PLIC Load and the checkpoint loader.
OUTPUT_NODE, SAMPLER_NODE, SETTINGS_NODE, LOAD_NODE, LOADER_NODE = "16", "13", "3", "1", "4"
#: Folder names of the models written for ComfyUI (models/diffusers/, models/controlnet/).
PIPELINE, INPAINT, COLOR_CANNY = "sd15", "inpaint", "color_canny"


class _NoClient:
    """What ComfyUI's executor sends progress and status to: nobody (no web client)."""

    client_id = None
    last_node_id = None

    def send_sync(self, event, data, sid=None):
        pass


def decode_graph(steps: int, seed: int) -> dict:
    """The shipped API workflow, cut to the decoded image, with the loaders and settings set."""
    workflow = json.loads(WORKFLOW.read_text(encoding="utf-8"))
    needed, todo = set(), [OUTPUT_NODE]
    while todo:
        node = todo.pop()
        if node not in needed:
            needed.add(node)
            todo += [value[0] for value in workflow[node]["inputs"].values() if isinstance(value, list)]
    graph = {node: workflow[node] for node in sorted(needed, key=int)}
    controlnets = [n for n, node in graph.items() if node["class_type"] == "ControlNetLoader"]
    if graph[LOADER_NODE]["class_type"] != "CheckpointLoaderSimple" or len(controlnets) != 2:
        raise ValueError(f"{WORKFLOW}: expected node {LOADER_NODE} to load the checkpoint, and two "
                         "ControlNet loaders")
    graph[LOADER_NODE] = {"class_type": "DiffusersLoader", "inputs": {"model_path": PIPELINE}}
    for node, name in zip(controlnets, (INPAINT, COLOR_CANNY)):
        graph[node]["inputs"]["control_net_name"] = f"{name}/diffusion_pytorch_model.safetensors"
    graph[SETTINGS_NODE]["inputs"].update(steps=steps, seed=seed)
    return graph


class ComfyUI:
    """ComfyUI imported into this process once per run, before any variant is built (its import
    sets torch's global switches, which then hold for every variant alike), with a temporary
    base folder and this checkout as its one custom node pack; ``bf16_unet`` holds the UNet and
    the ControlNets in bf16 (its ``--bf16-unet``). Raises ImportError, saying what is missing,
    when it cannot run here."""

    def __init__(self, source: Path, cuda: bool, bf16_unet: bool = False):
        if not (source / "execution.py").is_file():
            raise ImportError(f"no ComfyUI source in {source} (pass --comfyui PATH: a ComfyUI 0.3.x "
                              "folder whose requirements.txt is installed)")
        if "nodes" in sys.modules:
            raise ImportError("a module named 'nodes' is already imported (this repository's "
                              "nodes/ package?): run the benchmark as a script")
        self._folder = tempfile.TemporaryDirectory(prefix="plic-comfy-bench-")
        self.base = Path(self._folder.name)
        sys.path.insert(0, str(source))
        try:
            from comfy.cli_args import args

            args.base_directory = str(self.base)
            args.cpu = not cuda
            args.bf16_unet = bf16_unet
            import comfy.utils
            import execution

            import nodes
        except ImportError as exc:
            raise ImportError(f"ComfyUI in {source} does not import ({exc}): install its "
                              "requirements.txt") from exc
        pack = self.base / "custom_nodes" / "comfyui-plic"
        pack.parent.mkdir(parents=True)
        pack.symlink_to(REPO, target_is_directory=True)
        if not asyncio.run(nodes.load_custom_node(str(pack))):
            raise ImportError("ComfyUI could not load this pack (its log above says why)")
        self.execution, self.utils = execution, comfy.utils
        self.input = self.base / "input"
        self.input.mkdir(exist_ok=True)  # the pack copies its example inputs there

    def write_models(self, components) -> None:
        """``components`` where the graph's loaders read them, replacing the previous ones."""
        from tests.support import random_models

        shutil.rmtree(self.base / "models", ignore_errors=True)
        random_models.save_models_tree(components, self.base / "models", PIPELINE, (INPAINT, COLOR_CANNY))


class ComfyGraphRunner:
    """The ``comfyui`` variant: same interface as decode_gpu.Runner (``call``, ``times``...)."""

    def __init__(self, variant, components, device: str, steps: int, comfyui: ComfyUI):
        import comfy.ldm.modules.attention as attention
        import torch

        self.variant = variant
        self.cuda = device.startswith("cuda")
        self.steps = steps
        self.times: list[dict] = []
        self.comfyui = comfyui
        comfyui.write_models(components)
        self.executor = comfyui.execution.PromptExecutor(_NoClient(), cache_type=False)  # loaders anew
        self.graph = decode_graph(steps, seed=0)
        self.guidance = self.graph[SETTINGS_NODE]["inputs"]["cfg"]  # the shipped workflow's
        self.calls = 0
        self._clock = StepClock(self.cuda)
        comfyui.utils.set_progress_bar_global_hook(self._on_progress)
        self.attention = attention.optimized_attention.__name__
        self.precision = "-"  # ComfyUI's choice, read from the loaded model after the first call
        self.offload = False  # ComfyUI's own memory management: whole models on a GPU that fits them
        self._torch = torch

    def _on_progress(self, value, total, preview, prompt_id=None, node_id=None):
        """ComfyUI's progress hook; KSampler's bar names no node, the executing context does."""
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if (node_id or (context.node_id if context else None)) == SAMPLER_NODE:
            self._clock.mark()

    def call(self, sample) -> tuple[dict, list[np.ndarray]]:
        """Queue the graph on a new copy of the file: seconds of the executor's run (between CUDA
        synchronisations) and the sampler's iterations/s between its first and last step."""
        self.calls += 1
        name = f"bench-{self.calls}.plic"
        (self.comfyui.input / name).write_bytes(sample.data)
        graph = json.loads(json.dumps(self.graph))
        graph[LOAD_NODE]["inputs"]["file"] = name
        self._clock = StepClock(self.cuda)
        if self.cuda:
            self._torch.cuda.synchronize()
        start = time.perf_counter()
        self.executor.execute(graph, f"bench-{self.calls}", {}, [OUTPUT_NODE])
        if self.cuda:
            self._torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        if not self.executor.success:
            errors = [data for event, data in self.executor.status_messages if event == "execution_error"]
            raise RuntimeError(f"ComfyUI's run of the decode graph failed: "
                               f"{errors[0]['exception_message'] if errors else self.executor.status_messages}")
        tensor = self.executor.caches.outputs.get(OUTPUT_NODE)[0][0].float()  # output 0, batch
        if not self._torch.isfinite(tensor).all():
            raise RuntimeError("ComfyUI's decode made non-finite pixels: a model file was not read "
                               "whole (see ComfyUI's 'missing' warnings above)")
        pixels = (tensor.clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
        model = self.executor.caches.outputs.get(LOADER_NODE)[0][0]  # DiffusersLoader's MODEL
        self.precision = str(model.model_dtype()).removeprefix("torch.")
        return {"seconds": seconds, "loop_it_per_s": self._clock.rate()}, list(pixels)

    def release(self) -> None:
        """Drop the executor with its cached outputs and unload ComfyUI's models (the times and
        descriptions stay)."""
        import comfy.model_management

        self.executor = None
        comfy.model_management.unload_all_models()
