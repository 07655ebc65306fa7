"""Writing the prompt of a ``.plic`` file from its image ("captioning").

The paper asked GPT-4o for a Stable Diffusion prompt and kept the first "quoted" string of the
reply, cut to 240 characters. Three back ends share that contract (``caption(rgb) -> str``, a
cleaned prompt of at most ``limit`` characters):

* :class:`OpenAICaptioner` - any OpenAI-compatible chat-completions API (OpenAI, Ollama, vLLM,
  LM Studio...) through the ``openai`` package. The key comes only from an environment variable.
* :class:`LocalCaptioner` - an image-to-text model (BLIP, GIT, Florence-2...) in a local folder,
  loaded offline with ``transformers`` and cached per folder and device.
* :class:`ManualCaptioner` - text the user typed, cleaned the same way.

:func:`make_captioner` builds one from a spec ("openai", "local:PATH", "none"); the command
line's options are in plic.cli.encode.
Nothing here imports ComfyUI; the node passes its model folders in.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Protocol
from urllib.parse import urlparse

import numpy as np

from plic import model_files
from plic.codec.prompt import MAX_PROMPT_CHARS, check_prompt_limit, clean_prompt
from plic.deps import require, resolve_device
from plic.errors import CaptionError, PlicInputError
from plic.image import check_rgb, to_working

log = logging.getLogger("plic.caption")

DEFAULT_MODEL = "gpt-4o"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"
DEFAULT_TIMEOUT = 60.0
DEFAULT_RETRIES = 3
DEFAULT_BACKOFF = 1.0
#: Longest wait between two tries, also for a server's Retry-After.
MAX_BACKOFF = 30.0
DEFAULT_MAX_SIDE = 512
DEFAULT_JPEG_QUALITY = 85
DEFAULT_MAX_NEW_TOKENS = 60
#: Task prompt Florence-2 style models need; other local models caption from the image alone.
FLORENCE_TASK = "<MORE_DETAILED_CAPTION>"
#: Folders (under a models root) searched for local captioners: ComfyUI's LLM folder and ours.
LOCAL_MODEL_FOLDERS = ("captioners", "LLM")

INSTRUCTION = (
    "You write prompts for Stable Diffusion 1.5. Look at this image and write the one prompt from "
    "which Stable Diffusion would redraw it as faithfully as possible. Describe the main subject, "
    "the setting, the style or medium (photo, painting, illustration, render...), the colours, "
    "the lighting and the composition, as short comma-separated phrases, most important first. "
    "Describe only what is visible; mention text in the image only briefly. Stay under 40 words. "
    'Answer with the prompt alone, inside double quotes, like "a red bicycle leaning on a '
    'brick wall, ...".'
)

# Where each setting is changed: (node widget, command-line option).
_SETTINGS = {
    "model": ("model", "--caption-model"),
    "base_url": ("base_url", "--caption-base-url"),
    "api_key_env": ("api_key_env", "--caption-key-env"),
    "timeout": ("timeout", "--caption-timeout"),
    "max_retries": ("max_retries", "--caption-retries"),
    "path": ("local_model", "--caption local:PATH"),
    "device": ("device", "--caption-device"),
}
_QUOTED = re.compile(r'"([^"]*[^"\s][^"]*)"|\u201c([^\u201d]*[^\u201d\s][^\u201d]*)\u201d')
_LABEL = re.compile(r"^[\s*#_]*(?:stable diffusion )?prompt[\s*_]*:[\s*_]*", re.IGNORECASE)
_REFUSAL = re.compile(r"^\s*(?:i'?m sorry|i am sorry|sorry,|i can(?:'|no)t|i am unable|i'm unable"
                      r"|unable to)", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def setting(name: str) -> str:
    """How a message names a setting: its widget and its command-line option."""
    widget, option = _SETTINGS[name]
    return f"'{widget}' ({option})"


class Captioner(Protocol):
    """Anything that writes a prompt for an RGB uint8 image."""

    def caption(self, rgb: np.ndarray) -> str:
        ...


def parse_reply(text: str | None, limit: int = MAX_PROMPT_CHARS) -> str:
    """The prompt in a model's reply: its first "quoted" string, else its first non-empty line
    (without a "Prompt:" label or stray quotes), cleaned and cut at a word boundary to ``limit``.
    Returns "" when the reply holds no text."""
    text = text or ""
    match = _QUOTED.search(text)
    if match:
        return clean_prompt(match.group(1) if match.group(1) is not None else match.group(2), limit)
    for line in text.splitlines():
        line = _LABEL.sub("", line).strip().strip("\"'`\u201c\u201d*").strip()
        if line:
            return clean_prompt(line, limit)
    return ""


def jpeg_data_uri(rgb: np.ndarray, max_side: int = DEFAULT_MAX_SIDE,
                  quality: int = DEFAULT_JPEG_QUALITY) -> str:
    """The image, its longest side scaled down to ``max_side``, as a ``data:image/jpeg`` URI."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(to_working(rgb, max_side)).save(buffer, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class OpenAICaptioner:
    """Prompts from an OpenAI-compatible chat-completions API.

    ``base_url`` None means OpenAI's cloud (or the ``OPENAI_BASE_URL`` variable, as in the
    ``openai`` package). The key is read from the environment variable *named* ``api_key_env``;
    a server of our own (any other ``base_url``) may run without one. Rate limits (429), server
    errors (5xx), time-outs and lost connections are retried ``max_retries`` times, waiting
    ``backoff``, 2x``backoff``, 4x``backoff``... seconds (or the server's Retry-After).
    """

    backend = "openai"

    def __init__(self, model: str = DEFAULT_MODEL, *, base_url: str | None = None,
                 api_key_env: str = DEFAULT_KEY_ENV, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF,
                 max_side: int = DEFAULT_MAX_SIDE, jpeg_quality: int = DEFAULT_JPEG_QUALITY,
                 limit: int = MAX_PROMPT_CHARS, instruction: str = INSTRUCTION):
        self.model = (model or "").strip()
        self.base_url = (base_url or "").strip() or None
        self.api_key_env = (api_key_env or "").strip()
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_side = int(max_side)
        self.jpeg_quality = int(jpeg_quality)
        self.limit = check_prompt_limit(limit)
        self.instruction = instruction
        self._check_settings()
        self._client = None
        self._key = None

    def __repr__(self) -> str:
        return f"OpenAICaptioner(model={self.model!r}, base_url={self.server!r})"

    @property
    def server(self) -> str:
        """The API address in use, for messages and logs."""
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"

    def caption(self, rgb: np.ndarray) -> str:
        """One prompt for ``rgb``; raises :class:`CaptionError` naming the setting to change."""
        messages = [{"role": "user", "content": [
            {"type": "text", "text": self.instruction},
            {"type": "image_url", "image_url": {"url": jpeg_data_uri(rgb, self.max_side,
                                                                     self.jpeg_quality)}},
        ]}]
        log.info("captioning with model %s at %s", self.model, self.server)
        response = self._request(messages)
        return self._prompt_from(response)

    def _check_settings(self) -> None:
        if not self.model:
            raise CaptionError(self.backend, f"no model is set; name one in {setting('model')}")
        if not _ENV_NAME.match(self.api_key_env):
            # Never echo the value: a user may have pasted the key itself here.
            raise CaptionError(self.backend, f"{setting('api_key_env')} must be the NAME of an "
                               "environment variable that holds the key (such as OPENAI_API_KEY), "
                               "never the key itself")
        if self.timeout <= 0 or self.max_retries < 0 or self.backoff < 0:
            raise CaptionError(self.backend, f"{setting('timeout')} must be positive and "
                               f"{setting('max_retries')} at least 0")
        if self.base_url and urlparse(self.base_url).scheme not in ("http", "https"):
            raise CaptionError(self.backend, f"{setting('base_url')} {self.base_url!r} is not an "
                               "http(s) address; for a local server it looks like "
                               "http://127.0.0.1:11434/v1")

    def _client_or_new(self):
        if self._client is None:
            openai = _openai()
            self._key = os.environ.get(self.api_key_env, "").strip()
            if not self._key:
                if _is_openai_cloud(self.server):
                    raise CaptionError(self.backend, f"no API key: the environment variable "
                                       f"{self.api_key_env} is not set. Set it before starting "
                                       f"PLIC/ComfyUI, or name another variable in "
                                       f"{setting('api_key_env')}")
                log.info("%s is not set; calling %s without a key", self.api_key_env, self.server)
            self._client = openai.OpenAI(api_key=self._key or "no-key", base_url=self.base_url,
                                         timeout=self.timeout, max_retries=0)
        return self._client

    def _request(self, messages: list) -> object:
        """The chat completion, with our retries; every failure becomes a CaptionError."""
        openai = _openai()
        client = self._client_or_new()
        transient = (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError)
        attempt = 0
        while True:
            try:
                return client.chat.completions.create(model=self.model, messages=messages)
            except transient as exc:
                if attempt == self.max_retries:
                    raise self._error(exc, attempt + 1) from None
                delay = self._delay(attempt, exc)
                log.warning("%s at %s; try %d of %d in %.1f s", type(exc).__name__, self.server,
                            attempt + 2, self.max_retries + 1, delay)
                time.sleep(delay)
                attempt += 1
            except (openai.OpenAIError, ValueError) as exc:
                raise self._error(exc, attempt + 1) from None

    def _delay(self, attempt: int, exc: Exception) -> float:
        delay = self.backoff * 2 ** attempt
        response = getattr(exc, "response", None)
        try:
            delay = max(delay, float(response.headers.get("retry-after", 0)))
        except (AttributeError, TypeError, ValueError):
            pass
        return min(delay, MAX_BACKOFF)

    def _error(self, exc: Exception, tries: int) -> CaptionError:
        """The user's view of an ``openai`` exception: what happened and which setting to change."""
        openai = _openai()

        where = f"the server at {self.server}"
        status = getattr(exc, "status_code", None)
        detail = self._redact(getattr(exc, "message", None) or str(exc))[:300].rstrip(". ")
        tries = f"{tries} {'try' if tries == 1 else 'tries'}"
        if isinstance(exc, openai.APITimeoutError):
            problem = (f"no reply from {where} within {self.timeout:g} s ({tries}); raise "
                       f"{setting('timeout')} or check that the server is not overloaded")
        elif isinstance(exc, openai.APIConnectionError):
            problem = (f"cannot reach {where} ({tries}): {detail}. Start the server or fix "
                       f"{setting('base_url')}")
        elif isinstance(exc, (openai.AuthenticationError, openai.PermissionDeniedError)):
            problem = (f"{where} refused the key in {self.api_key_env} (HTTP {status}): {detail}. "
                       f"Put a valid key in that variable or name another in "
                       f"{setting('api_key_env')}")
        elif isinstance(exc, openai.NotFoundError):
            problem = (f"model {self.model!r} was not found at {where} (HTTP 404): {detail}. "
                       f"Change {setting('model')} to a vision model the server serves, or fix "
                       f"{setting('base_url')} (it usually ends in /v1)")
        elif isinstance(exc, (openai.BadRequestError, openai.UnprocessableEntityError)):
            problem = (f"{where} refused the image or the request (HTTP {status}): {detail}. "
                       f"Check that {setting('model')} names a model that accepts images")
        elif isinstance(exc, openai.APIStatusError):
            problem = (f"{where} answered HTTP {status} ({tries}): {detail}. Try again "
                       f"later or raise {setting('max_retries')}")
        else:
            problem = (f"{where} did not send a chat completion ({detail}). Check that "
                       f"{setting('base_url')} points at an OpenAI-compatible API")
        return CaptionError(self.backend, problem)

    def _prompt_from(self, response) -> str:
        choice = (getattr(response, "choices", None) or [None])[0]
        message = getattr(choice, "message", None)
        content = getattr(message, "content", None)
        content = content if isinstance(content, str) else ""
        prompt = parse_reply(content, self.limit)
        refusal = getattr(message, "refusal", None) or (
            "content filter" if getattr(choice, "finish_reason", None) == "content_filter" else None)
        if not refusal and prompt and not _QUOTED.search(content) and _REFUSAL.match(prompt):
            refusal = prompt
        if refusal:
            raise CaptionError(self.backend, f"model {self.model!r} refused to describe the image "
                               f"({self._redact(str(refusal))[:200]!r}). Write the prompt yourself "
                               f"(manual back end / --prompt) or choose another {setting('model')}")
        if not prompt:
            raise CaptionError(self.backend, f"model {self.model!r} at {self.server} sent an empty "
                               f"reply (no text in choices[0].message.content). Try again, choose "
                               f"another {setting('model')}, or check {setting('base_url')}")
        return prompt

    def _redact(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _openai():
    return require("openai", package="openai", purpose="Captioning with an OpenAI-compatible API")


def _is_openai_cloud(url: str) -> bool:
    return (urlparse(url).hostname or "").endswith("openai.com")


# --- local models -------------------------------------------------------------------------------

_MODELS: dict[tuple[str, str], tuple] = {}
_MODELS_LOCK = threading.Lock()


def list_local_models(search_dirs: list[Path] | None = None) -> list[str]:
    """Names of the model folders (holding a config.json) directly inside ``search_dirs``
    (default, outside ComfyUI: ``$PLIC_MODELS_DIR/captioners`` and ``$PLIC_MODELS_DIR/LLM``)."""
    dirs = model_files.search_dirs(LOCAL_MODEL_FOLDERS) if search_dirs is None else search_dirs
    return model_files.names_in(dirs, lambda entry: (entry / "config.json").is_file())


def resolve_local_model(name: str | os.PathLike, search_dirs: list[Path] | None = None) -> Path:
    """The model folder ``name`` - a path, or a folder name inside ``search_dirs``."""
    if not str(name).strip():
        raise CaptionError("local", f"no model folder is chosen: put an image-to-text model's "
                           f"folder in models/captioners and choose it in {setting('path')}")
    dirs = model_files.search_dirs(LOCAL_MODEL_FOLDERS) if search_dirs is None else search_dirs
    candidates = model_files.candidate_paths(str(name).strip(), dirs)
    for folder in candidates:
        if folder.is_dir():
            if not (folder / "config.json").is_file():
                raise CaptionError("local", f"{folder} holds no config.json, so it is not a "
                                   f"transformers model folder; change {setting('path')}")
            return folder.resolve()
    looked = ", ".join(str(c) for c in candidates)
    raise CaptionError("local", f"model folder {str(name)!r} not found (looked in {looked}). Put "
                       f"the model's folder (config.json, weights, processor files) in "
                       f"models/captioners or set PLIC_MODELS_DIR, or change {setting('path')}")


def load_local_model(path: Path, device: str) -> tuple:
    """(processor, model) of the folder ``path`` on ``device``, loaded offline once and cached."""
    key = (str(path), device)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _load_local_model(path, device)
        return _MODELS[key]


def release_local_models() -> None:
    """Forget every cached local captioner (the next caption loads it again)."""
    with _MODELS_LOCK:
        _MODELS.clear()


def _load_local_model(path: Path, device: str) -> tuple:
    transformers = require("transformers", package="transformers", purpose="Local captioning")
    log.info("loading the captioner in %s on %s", path, device)
    try:
        processor = transformers.AutoProcessor.from_pretrained(path, local_files_only=True)
        model = transformers.AutoModelForImageTextToText.from_pretrained(path, local_files_only=True)
        model.to(device).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise CaptionError("local", f"cannot load the image-to-text model in {path}: "
                           f"{str(exc)[:300]}. It must be a transformers image-to-text model "
                           f"(BLIP, GIT, Florence-2...) with its processor files; change "
                           f"{setting('path')} or {setting('device')}") from None
    return processor, model


class LocalCaptioner:
    """Prompts from an image-to-text model in a local folder (no network, cached per device).

    ``task`` is the text prompt some models need (Florence-2: "<MORE_DETAILED_CAPTION>", used by
    default for them); captioning models like BLIP and GIT work from the image alone."""

    backend = "local"

    def __init__(self, path: str | os.PathLike, *, device: str = "auto",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, limit: int = MAX_PROMPT_CHARS,
                 task: str | None = None, search_dirs: list[Path] | None = None):
        self.path = resolve_local_model(path, search_dirs)
        self.device = device
        self.max_new_tokens = int(max_new_tokens)
        self.limit = check_prompt_limit(limit)
        self.task = task

    def caption(self, rgb: np.ndarray) -> str:
        """One prompt for ``rgb``; raises :class:`CaptionError` when the model writes nothing."""
        from PIL import Image

        torch = require("torch", package="torch", purpose="Local captioning")
        processor, model = load_local_model(self.path, resolve_device(self.device))
        task = self.task or (FLORENCE_TASK if model.config.model_type == "florence2" else None)
        image = Image.fromarray(check_rgb(rgb))
        inputs = (processor(images=image, text=task, return_tensors="pt") if task
                  else processor(images=image, return_tensors="pt")).to(model.device)
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        ids = _without_prompt(ids, inputs.get("input_ids"))
        text = processor.batch_decode(ids, skip_special_tokens=True)[0]
        prompt = clean_prompt(text, self.limit)
        if not prompt:
            raise CaptionError(self.backend, f"the model in {self.path} gave an empty reply (no caption); "
                               f"choose another model in {setting('path')}")
        return prompt


def _without_prompt(ids, input_ids):
    """Generated tokens without the text prompt that decoder-only models repeat first."""
    if input_ids is None or ids.shape[1] < input_ids.shape[1]:
        return ids
    n = input_ids.shape[1]
    return ids[:, n:] if bool((ids[:, :n] == input_ids.to(ids.device)).all()) else ids


class ManualCaptioner:
    """The user's own text as the prompt, cleaned and cut like a generated one (may be empty)."""

    backend = "manual"

    def __init__(self, text: str, *, limit: int = MAX_PROMPT_CHARS):
        self.prompt = clean_prompt(text, limit)

    def caption(self, rgb: np.ndarray) -> str:
        return self.prompt


# --- building one -------------------------------------------------------------------------------

_OPENAI_SETTINGS = {"model", "base_url", "api_key_env", "timeout", "max_retries", "backoff",
                    "max_side", "jpeg_quality", "limit"}
_LOCAL_SETTINGS = {"device", "max_new_tokens", "limit", "task", "search_dirs"}


def make_captioner(spec: str, **settings) -> Captioner | None:
    """A captioner from ``spec``: "openai", "local:PATH" (a folder, or a name in the model
    folders) or "none" (None: no prompt is generated). ``settings`` are the back end's keyword
    arguments; None values mean "the default", settings of other back ends are ignored."""
    spec = (spec or "none").strip()
    given = {k: v for k, v in settings.items() if v is not None}
    unknown = set(given) - _OPENAI_SETTINGS - _LOCAL_SETTINGS
    if unknown:
        raise TypeError(f"unknown caption settings: {', '.join(sorted(unknown))}")
    if spec == "none":
        return None
    if spec == "openai":
        return OpenAICaptioner(**{k: v for k, v in given.items() if k in _OPENAI_SETTINGS})
    if spec.startswith("local:") and spec[len("local:"):].strip():
        return LocalCaptioner(spec[len("local:"):].strip(),
                              **{k: v for k, v in given.items() if k in _LOCAL_SETTINGS})
    raise PlicInputError(f"--caption {spec!r}: use openai, local:PATH (a model folder) or none")
