"""PLIC Caption: the prompt of a ``.plic`` file, written from the image (plic.caption).

The API key is never a widget: the node takes the NAME of the environment variable that holds it.
"""

from __future__ import annotations

from pathlib import Path

from plic import caption as cap
from plic.codec.prompt import MAX_PROMPT_CHARS
from plic.deps import resolve_device

from . import memory
from .common import CATEGORY, comfy_device, image_to_rgb_list, map_batch, model_dirs

BACKENDS = ["openai", "local", "manual"]
#: First entry of the local-model list: no folder chosen (the default, valid in every install).
NO_LOCAL_MODEL = "(none)"
FOLDER_KEY = "plic_captioners"


def captioner_dirs() -> list[Path]:
    """ComfyUI's captioner folders (models/captioners, known as "plic_captioners", and
    models/LLM); outside ComfyUI the same folders under $PLIC_MODELS_DIR."""
    return model_dirs(FOLDER_KEY, "captioners") + model_dirs("LLM")


def local_model_input() -> tuple:
    """The model folders found, after "(none)", as a list."""
    return ([NO_LOCAL_MODEL] + cap.list_local_models(captioner_dirs()),
            {"default": NO_LOCAL_MODEL,
             "tooltip": "Image-to-text model folder (BLIP, GIT, Florence-2...) in models/captioners "
                        "or models/LLM (outside ComfyUI: $PLIC_MODELS_DIR/captioners), for the "
                        "local back end."})


class PlicCaption:
    """IMAGE -> prompt text, one prompt per image of the batch."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "Images to describe; each gets its own prompt."}),
            "backend": (BACKENDS, {"default": "openai", "tooltip":
                        "openai: an OpenAI-compatible chat API (OpenAI, Ollama, vLLM, LM Studio); "
                        "local: a model folder run by transformers; manual: the text below."}),
            "model": ("STRING", {"default": cap.DEFAULT_MODEL, "tooltip":
                      "Model name for the openai back end (a vision model, e.g. gpt-4o, or "
                      "llava / qwen2.5vl on Ollama)."}),
            "base_url": ("STRING", {"default": "", "tooltip":
                         "API address for the openai back end; empty means OpenAI's cloud "
                         "(or $OPENAI_BASE_URL). Ollama: http://127.0.0.1:11434/v1"}),
            "api_key_env": ("STRING", {"default": cap.DEFAULT_KEY_ENV, "tooltip":
                            "NAME of the environment variable that holds the API key (set it "
                            "before starting ComfyUI). Never paste the key itself here: widget "
                            "values are saved in workflows and images."}),
            "local_model": local_model_input(),
            "manual_text": ("STRING", {"default": "", "multiline": True, "tooltip":
                            "The prompt for the manual back end; cleaned and cut like a "
                            "generated one."}),
            "max_chars": ("INT", {"default": MAX_PROMPT_CHARS, "min": 1, "max": MAX_PROMPT_CHARS,
                                  "tooltip": "Cut the prompt at a word boundary to this many "
                                             f"characters (at most {MAX_PROMPT_CHARS}, the paper's "
                                             "limit, which PLIC Pack applies too)."}),
            "timeout": ("FLOAT", {"default": cap.DEFAULT_TIMEOUT, "min": 1.0, "max": 3600.0,
                                  "step": 1.0, "tooltip":
                                  "Seconds to wait for one API reply before retrying."}),
            "max_retries": ("INT", {"default": cap.DEFAULT_RETRIES, "min": 0, "max": 10, "tooltip":
                            "Retries of the API after a rate limit (429), a server error (5xx) or a "
                            "time-out, waiting 1, 2, 4... s."}),
        }}

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "prompt_list")
    OUTPUT_IS_LIST = (False, True)
    OUTPUT_TOOLTIPS = ("All prompts, one line per image (a single line for one image); PLIC Pack "
                       "gives line i to image i.",
                       "The prompts as a list: nodes after it run once per prompt.")
    FUNCTION = "caption"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Writes a Stable Diffusion prompt for each image, as the PLIC paper did with "
                   "GPT-4o: through an OpenAI-compatible API, a local image-to-text model or your "
                   "own text. The key is read from an environment variable, never a widget.")

    def caption(self, image, backend, model, base_url, api_key_env, local_model, manual_text,
                max_chars, timeout, max_retries):
        captioner = self.make(backend, model, base_url, api_key_env, local_model, manual_text,
                              max_chars, timeout, max_retries)
        if isinstance(captioner, cap.LocalCaptioner):
            load_managed(captioner)
        prompts = map_batch(image_to_rgb_list(image), captioner.caption)
        return {"ui": {"text": prompts}, "result": ("\n".join(prompts), prompts)}

    @staticmethod
    def make(backend, model, base_url, api_key_env, local_model, manual_text, max_chars, timeout,
             max_retries):
        """The captioner the widgets ask for."""
        if backend == "manual":
            return cap.ManualCaptioner(manual_text, limit=max_chars)
        if backend == "local":
            name = "" if local_model == NO_LOCAL_MODEL else local_model
            return cap.LocalCaptioner(name, device=comfy_device(), limit=max_chars,
                                      search_dirs=captioner_dirs())
        return cap.OpenAICaptioner(model, base_url=base_url, api_key_env=api_key_env,
                                   timeout=timeout, max_retries=max_retries, limit=max_chars)


def load_managed(captioner: cap.LocalCaptioner) -> None:
    """Load the local captioner (ComfyUI making room for it first), register it with ComfyUI's
    memory manager and have it on its device for this run."""
    device = resolve_device(captioner.device)
    memory.make_room(memory.weight_bytes([captioner.path]), device)
    _, net = cap.load_local_model(captioner.path, device)
    memory.use(net, lambda: {"captioner": net}, device, cap.release_local_models)


NODE_CLASS_MAPPINGS = {"PlicCaption": PlicCaption}
NODE_DISPLAY_NAME_MAPPINGS = {"PlicCaption": "PLIC Caption"}
