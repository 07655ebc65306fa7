"""Captioning through the real ``openai`` client against a real chat-completions server on
127.0.0.1, reply parsing, the CLI helpers, the node, and where the API key may (not) appear."""

from __future__ import annotations

import argparse
import base64
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image

from plic import caption as cap
from plic.cli import encode as cli_encode
from plic.codec import fileformat
from plic.codec.prompt import split_prompts
from plic.errors import CaptionError, PlicError, PlicInputError
from tests.support.images import REPO, image_path, load_shared

KEY = "sk-test-7f3a9c1e5b2d4f6a8c0e"
KEY_ENV = "PLIC_TEST_CAPTION_KEY"


# --- the server ---------------------------------------------------------------------------------

def completion(content, **message) -> dict:
    """The smallest chat completion the client accepts."""
    return {"status": 200, "json": {"choices": [{"message": {"content": content, **message}}]}}


def error(status: int, text: str = "scripted failure") -> dict:
    return {"status": status, "json": {"error": {"message": text, "type": "test"}}}


class ChatServer:
    """A chat-completions endpoint answering each request with the next scripted reply and
    recording what it received."""

    def __init__(self):
        self.replies: list[dict] = []
        self.requests: list[dict] = []
        self.stop = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def script(self, *replies: dict) -> None:
        self.replies = list(replies)

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                server.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                        "body": body})
                reply = server.replies.pop(0) if server.replies else error(500, "no reply scripted")
                if server.stop.wait(reply.get("delay", 0)):
                    return
                data = reply["raw"] if "raw" in reply else json.dumps(reply["json"]).encode()
                self.send_response(reply["status"])
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        return Handler


@pytest.fixture
def server():
    chat = ChatServer()
    yield chat
    chat.close()


@pytest.fixture
def key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return load_shared("coffee.png")  # 600x400: sent downscaled to 512x341


def captioner(server, **settings) -> cap.OpenAICaptioner:
    settings = {"model": "test-vision", "base_url": server.url, "api_key_env": KEY_ENV,
                "timeout": 5.0, "max_retries": 2, "backoff": 0.01, **settings}
    return cap.OpenAICaptioner(**settings)


# --- parsing ------------------------------------------------------------------------------------

@pytest.mark.parametrize("reply, prompt", [
    ('Here is the prompt: "a tabby cat, green eyes, soft light" - enjoy "second"',
     "a tabby cat, green eyes, soft light"),
    ("\u201ca red boat\u201d at dusk", "a red boat"),
    ("\n\nPrompt: a foggy pier, muted blue tones\nIt shows a pier.", "a foggy pier, muted blue tones"),
    ('**Prompt:** "a bird on a branch', "a bird on a branch"),
    ('"   "\nan empty quote, then a line', "an empty quote, then a line"),
    ("", ""),
    (None, ""),
])
def test_parse_reply_keeps_the_first_quoted_string_else_the_first_line(reply, prompt):
    assert cap.parse_reply(reply) == prompt


def test_parse_reply_cuts_at_a_word_boundary():
    words = " ".join(f"word{i}" for i in range(100))
    prompt = cap.parse_reply(f'"{words}"', limit=50)
    assert len(prompt) <= 50 and words.startswith(prompt) and words[len(prompt)] == " "
    assert len(cap.parse_reply(f'"{words}"')) <= 240


def test_split_prompts_gives_one_line_per_image_or_one_for_all():
    assert split_prompts("a cat\nb dog\n", 2) == ["a cat", "b dog"]
    assert split_prompts("a cat", 3) == ["a cat"] * 3
    assert split_prompts("", 2) == ["", ""]
    with pytest.raises(PlicInputError, match="3 lines for 2 images"):
        split_prompts("a\nb\nc", 2)


def test_jpeg_data_uri_is_downscaled_jpeg(image):
    uri = cap.jpeg_data_uri(image, max_side=128, quality=70)
    assert uri.startswith("data:image/jpeg;base64,")
    decoded = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert decoded.format == "JPEG" and max(decoded.size) == 128


# --- the OpenAI-compatible back end through the real client ---------------------------------------

def test_quoted_reply_becomes_the_prompt(server, key, image):
    server.script(completion('Sure! "a tabby cat lying on a wooden floor, warm light" Hope it helps.'))
    assert captioner(server).caption(image) == "a tabby cat lying on a wooden floor, warm light"
    (request,) = server.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    assert KEY.encode() not in request["body"]
    body = json.loads(request["body"])
    assert body["model"] == "test-vision"
    text, picture = body["messages"][0]["content"]
    assert "Stable Diffusion" in text["text"] and "quotes" in text["text"]
    uri = picture["image_url"]["url"]
    assert uri.startswith("data:image/jpeg;base64,") and len(uri) < 200_000
    sent = Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1])))
    assert sent.format == "JPEG" and max(sent.size) == cap.DEFAULT_MAX_SIDE


def test_reply_without_quotes_uses_its_first_line(server, key, image):
    server.script(completion("a cat on a rug,   soft colours\nThis prompt describes a cat."))
    assert captioner(server).caption(image) == "a cat on a rug, soft colours"


def test_long_reply_is_cut_to_the_limit(server, key, image):
    server.script(completion('"' + "very " * 100 + 'long"'))
    prompt = captioner(server, limit=40).caption(image)
    assert len(prompt) <= 40 and prompt.startswith("very very")


def test_429_is_retried_with_backoff(server, key, image, caplog):
    server.script(error(429, "slow down"), error(503), completion('"a cat"'))
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="plic.caption"):
        assert captioner(server, backoff=0.2).caption(image) == "a cat"
    assert len(server.requests) == 3
    assert time.monotonic() - start >= 0.2 + 0.4  # waited backoff, then 2 x backoff
    assert "RateLimitError" in caplog.text and "try 2 of 3" in caplog.text


def test_500_after_the_last_retry_names_the_setting(server, key, image):
    server.script(*[error(500)] * 3)
    with pytest.raises(CaptionError, match=r"HTTP 500 \(3 tries\).*'max_retries' \(--caption-retries\)"):
        captioner(server).caption(image)
    assert len(server.requests) == 3


def test_slow_server_times_out_and_names_the_timeout(server, key, image):
    server.script({**completion('"late"'), "delay": 3})
    start = time.monotonic()
    with pytest.raises(CaptionError, match=r"within 0.3 s \(1 try\); raise 'timeout' \(--caption-timeout\)") as info:
        captioner(server, timeout=0.3, max_retries=0).caption(image)
    assert time.monotonic() - start < 2.5
    assert info.value.backend == "openai"


def test_malformed_json_is_reported(server, key, image):
    server.script({"status": 200, "raw": b"{not json"})
    with pytest.raises(CaptionError, match=r"did not send a chat completion.*--caption-base-url"):
        captioner(server).caption(image)


@pytest.mark.parametrize("reply", [completion(""), completion(None), completion('""\n  '),
                                   {"status": 200, "json": {"choices": []}}])
def test_empty_reply_is_an_error(server, key, image, reply):
    server.script(reply)
    with pytest.raises(CaptionError, match=r"'test-vision' at http://127.0.0.1:\d+/v1 sent an empty reply.*--caption-model"):
        captioner(server).caption(image)


@pytest.mark.parametrize("reply", [
    completion(None, refusal="I can't help with that."),
    completion("I'm sorry, but I can't help with identifying people in images."),
    {"status": 200, "json": {"choices": [{"message": {"content": "x"},
                                          "finish_reason": "content_filter"}]}},
])
def test_refusal_is_not_taken_as_a_prompt(server, key, image, reply):
    server.script(reply)
    with pytest.raises(CaptionError, match="refused to describe the image.*--prompt"):
        captioner(server).caption(image)


def test_refused_image_names_the_model_setting(server, key, image):
    server.script(error(400, "image input is not supported by this model"))
    with pytest.raises(CaptionError, match=r"refused the image.*HTTP 400.*not supported.*--caption-model"):
        captioner(server).caption(image)
    assert len(server.requests) == 1


def test_unknown_model_names_the_model_setting(server, key, image):
    server.script(error(404, "model 'test-vision' not found"))
    with pytest.raises(CaptionError, match=r"'test-vision' was not found.*--caption-model"):
        captioner(server).caption(image)


def test_unreachable_server_names_base_url(image, key):
    probe = ChatServer()
    url = probe.url
    probe.close()
    with pytest.raises(CaptionError, match=r"cannot reach the server at http://127.0.0.1.*--caption-base-url"):
        cap.OpenAICaptioner("m", base_url=url, api_key_env=KEY_ENV, max_retries=1,
                            backoff=0.01).caption(image)


def test_missing_key_for_openai_cloud_fails_before_any_request(monkeypatch, image):
    monkeypatch.delenv(KEY_ENV, raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(CaptionError, match=f"{KEY_ENV} is not set.*--caption-key-env"):
        cap.OpenAICaptioner(api_key_env=KEY_ENV).caption(image)


def test_own_server_works_without_a_key(server, monkeypatch, image):
    monkeypatch.delenv(KEY_ENV, raising=False)
    server.script(completion('"a cat"'))
    assert captioner(server).caption(image) == "a cat"
    assert server.requests[0]["headers"]["authorization"] == "Bearer no-key"


@pytest.mark.parametrize("settings, match", [
    ({"api_key_env": KEY}, "must be the NAME of an environment variable"),
    ({"model": " "}, "no model is set"),
    ({"base_url": "127.0.0.1:11434"}, "not an http"),
    ({"timeout": 0}, "must be positive"),
])
def test_bad_settings_are_refused_up_front(server, settings, match):
    with pytest.raises(CaptionError, match=match) as info:
        captioner(server, **settings)
    assert KEY not in str(info.value)


# --- the key stays in the environment --------------------------------------------------------------

def test_key_appears_in_no_log_message_or_file(server, key, image, caplog, tmp_path):
    from plic.codec.fileformat import PlicFile, save

    caplog.set_level(logging.DEBUG)
    for name in ("openai", "httpx", "httpcore", "plic"):
        caplog.set_level(logging.DEBUG, logger=name)
    server.script(error(429), completion('"a cat on a rug"'), error(401, f"Incorrect API key {KEY}"))
    prompt = captioner(server).caption(image)
    with pytest.raises(CaptionError) as failure:
        captioner(server).caption(image)
    assert "refused the key in PLIC_TEST_CAPTION_KEY" in str(failure.value)
    path = save(PlicFile((600, 400), (600, 400), prompt=prompt), tmp_path / "cat.plic")
    assert prompt.encode() in path.read_bytes()
    assert "test-vision" in caplog.text and server.url in caplog.text  # logs name model and server
    for text in (caplog.text, str(failure.value), repr(captioner(server)), path.read_bytes().decode("latin-1")):
        assert KEY not in text
        assert KEY[6:] not in text


def test_no_option_or_widget_takes_a_key():
    from nodes.caption import PlicCaption

    parser = argparse.ArgumentParser()
    cli_encode.add_caption_arguments(parser)
    options = [o for action in parser._actions for o in action.option_strings]
    assert not [o for o in options if "key" in o and o != "--caption-key-env"]
    widgets = PlicCaption.INPUT_TYPES()["required"]
    assert [w for w in widgets if "key" in w] == ["api_key_env"]
    assert widgets["api_key_env"][1]["default"] == "OPENAI_API_KEY"


# --- building captioners --------------------------------------------------------------------------

def test_make_captioner_specs(server, tmp_path):
    assert cap.make_captioner("none") is None
    openai = cap.make_captioner("openai", model="m", base_url=server.url, device="cpu", limit=99)
    assert isinstance(openai, cap.OpenAICaptioner) and openai.limit == 99 and openai.model == "m"
    with pytest.raises(CaptionError, match="not found.*models/captioners"):
        cap.make_captioner(f"local:{tmp_path / 'missing'}")
    with pytest.raises(PlicInputError, match="openai, local:PATH"):
        cap.make_captioner("gpt")
    with pytest.raises(TypeError, match="unknown caption settings: api_key"):
        cap.make_captioner("openai", api_key=KEY)


def test_cli_helpers_caption_through_the_server(server, key, image):
    parser = argparse.ArgumentParser()
    cli_encode.add_caption_arguments(parser)
    args = parser.parse_args(["--caption", "openai", "--caption-model", "llava",
                              "--caption-base-url", server.url, "--caption-key-env", KEY_ENV,
                              "--caption-timeout", "5", "--caption-limit", "12"])
    server.script(completion('"a cat lying on a wooden floor"'))
    assert cli_encode.captioner_from_args(args).caption(image) == "a cat lying"
    assert json.loads(server.requests[0]["body"])["model"] == "llava"
    assert cli_encode.captioner_from_args(parser.parse_args([])) is None


def test_plic_encode_captions_through_a_local_server(server, tmp_path):
    """`plic encode --caption openai` as a user runs it, against an OpenAI-compatible server."""
    server.script(completion('Here you go: "a cup of coffee on a saucer, warm light"'),
                  completion('"a rocket on its launch pad"'))
    env = {**os.environ, KEY_ENV: KEY}
    result = subprocess.run(
        [sys.executable, "-m", "plic", "encode", image_path("coffee.png"), image_path("rocket.jpg"),
         "-o", tmp_path, "--caption", "openai", "--caption-base-url", server.url,
         "--caption-model", "llava", "--caption-key-env", KEY_ENV],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert fileformat.load(tmp_path / "coffee.plic").prompt == "a cup of coffee on a saucer, warm light"
    assert fileformat.load(tmp_path / "rocket.plic").prompt == "a rocket on its launch pad"
    assert [r["headers"]["authorization"] for r in server.requests] == [f"Bearer {KEY}"] * 2
    for path in tmp_path.iterdir():
        assert KEY.encode() not in path.read_bytes()
    assert KEY not in result.stdout + result.stderr


def test_manual_text_is_cleaned_and_cut():
    manual = cap.ManualCaptioner("  a cat\n\n on   a rug, by the window ", limit=17)
    assert manual.caption(np.zeros((4, 4, 3), np.uint8)) == "a cat on a rug"
    assert cap.ManualCaptioner("").caption(np.zeros((4, 4, 3), np.uint8)) == ""


# --- the node -------------------------------------------------------------------------------------

def test_node_declares_tooltips_and_outputs():
    import nodes
    from nodes.caption import PlicCaption

    assert nodes.NODE_CLASS_MAPPINGS["PlicCaption"] is PlicCaption
    for name, (kind, options) in PlicCaption.INPUT_TYPES()["required"].items():
        assert options.get("tooltip"), name
    assert PlicCaption.RETURN_TYPES == ("STRING", "STRING") and PlicCaption.OUTPUT_IS_LIST == (False, True)


def test_node_captions_a_batch_through_the_server(server, key, image):
    import torch

    from nodes.caption import PlicCaption

    batch = torch.from_numpy(np.stack([image, image[::-1]]).astype(np.float32) / 255.0)
    server.script(completion('"a cat"'), completion('"an upside-down cat"'))
    out = PlicCaption().caption(batch, "openai", "test-vision", server.url, KEY_ENV, "", "", 240, 5.0, 0)
    assert out["result"] == ("a cat\nan upside-down cat", ["a cat", "an upside-down cat"])
    assert out["ui"] == {"text": ["a cat", "an upside-down cat"]}
    assert split_prompts(out["result"][0], 2) == out["result"][1]


def test_node_manual_backend_and_errors_are_plic_errors(image):
    import torch

    from nodes.caption import PlicCaption

    one = torch.from_numpy(image[None].astype(np.float32) / 255.0)
    out = PlicCaption().caption(one, "manual", "", "", "OPENAI_API_KEY", "", " a  red cup ", 240, 5.0, 0)
    assert out["result"] == ("a red cup", ["a red cup"])
    with pytest.raises(PlicError, match="must be the NAME"):
        PlicCaption().caption(one, "openai", "m", "", "sk-abc123", "", "", 240, 5.0, 0)
