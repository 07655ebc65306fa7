"""A real ComfyUI server on 127.0.0.1 with this pack in its custom_nodes/, for the tests
(tests/test_comfyui_server.py) and benchmarks (bench/comfy_memory.py): ComfyUI's source from
../shared/comfyui/ComfyUI-0.3.64, run offline in a temporary base folder as its README says.

    with ComfyServer.prepared(tmp_folder, models=build) as server:
        server.run(api_workflow)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
COMFYUI = REPO.parent / "shared" / "comfyui" / "ComfyUI-0.3.64"
PACK_NAME = "comfyui-plic"
#: Bounded waits, in seconds.
START_TIMEOUT = 120
RUN_TIMEOUT = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A ComfyUI process on 127.0.0.1 (a free port) with the pack ``pack`` in custom_nodes/ of
    the base folder ``base``; always stopped on leaving :meth:`prepared`."""

    def __init__(self, base: Path, pack: Path = REPO, extra_args: tuple[str, ...] = (),
                 launcher: Path | None = None):
        """``extra_args`` go to ComfyUI's main.py; ``launcher`` is a script run instead of
        main.py (with main.py's arguments) that runs it, e.g. to count calls in a benchmark."""
        self.base = base
        self.pack = pack
        self.extra_args = extra_args
        self.launcher = launcher
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / "comfyui.log"
        self.process: subprocess.Popen | None = None

    @classmethod
    @contextlib.contextmanager
    def prepared(cls, base: Path, models: Callable[[Path], object] | None = None, **kwargs):
        """A running server in the new base folder ``base``; ``models(base / "models")`` fills
        the models folder while ComfyUI starts."""
        for folder in ("custom_nodes", "input", "output", "temp", "user", "models"):
            (base / folder).mkdir(parents=True, exist_ok=True)
        server = cls(base, **kwargs)
        (base / "custom_nodes" / PACK_NAME).symlink_to(server.pack, target_is_directory=True)
        try:
            server.launch()
            if models is not None:
                models(base / "models")
            server.wait_ready()
            yield server
        finally:
            server.stop()

    def launch(self) -> None:
        env = {**os.environ, "PYTHONPATH": str(self.pack)}  # the pack's plic, not an installed one
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, str(self.launcher or "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(self.port),
                 "--disable-auto-launch", "--base-directory", str(self.base),
                 "--database-url", f"sqlite:///{self.base / 'comfyui.db'}", *self.extra_args],
                cwd=COMFYUI, env=env, stdout=log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ComfyUI exited with {self.process.returncode}; is its "
                                   f"requirements.txt installed (scripts/setup.sh)?\n{self.log_tail()}")
            try:
                self.get("/object_info/PlicLoad")
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"ComfyUI did not answer within {START_TIMEOUT} s\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.is_file() else ""

    def request(self, path: str, data: bytes | None = None, headers: dict | None = None):
        req = urllib.request.Request(self.url + path, data=data, headers=headers or {})
        with urllib.request.urlopen(req, timeout=30) as reply:
            return reply.status, reply.headers.get_content_type(), reply.read()

    def get(self, path: str) -> bytes:
        return self.request(path)[2]

    def get_json(self, path: str):
        return json.loads(self.get(path))

    def post_json(self, path: str, body: dict):
        status, _, raw = self.request(path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        return json.loads(raw) if raw.strip() else None

    def upload(self, name: str, data: bytes, overwrite: bool | None = None) -> dict:
        """POST /upload/image as the web extension does (multipart: image, type=input)."""
        boundary = uuid.uuid4().hex
        fields = [("type", "input")] + ([("overwrite", str(overwrite).lower())] if overwrite is not None else [])
        body = io.BytesIO()
        for key, value in fields:
            body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
        body.write(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
                   "Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n")
        body.write(f"--{boundary}--\r\n".encode())
        _, _, raw = self.request("/upload/image", body.getvalue(),
                                 {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        return json.loads(raw)

    def queue(self, prompt: dict, client_id: str = "plic-tests") -> str:
        try:
            return self.post_json("/prompt", {"prompt": prompt, "client_id": client_id})["prompt_id"]
        except urllib.error.HTTPError as exc:
            raise RuntimeError(f"/prompt refused the workflow: {exc.read().decode(errors='replace')}") from None

    def wait(self, prompt_id: str) -> dict:
        """The /history entry of ``prompt_id`` once it has finished (or failed)."""
        deadline = time.monotonic() + RUN_TIMEOUT
        while time.monotonic() < deadline:
            entry = self.get_json(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None \
                    and entry["status"].get("status_str") in ("success", "error"):
                return entry
            time.sleep(0.3)
        raise RuntimeError(f"prompt {prompt_id} did not finish within {RUN_TIMEOUT} s\n{self.log_tail()}")

    def run(self, prompt: dict) -> dict:
        entry = self.wait(self.queue(prompt))
        if entry["status"]["status_str"] != "success":
            raise RuntimeError(json.dumps(entry["status"]["messages"])[-3000:] + "\n" + self.log_tail())
        return entry

    def view(self, item: dict) -> bytes:
        query = urllib.parse.urlencode({k: item[k] for k in ("filename", "subfolder", "type")})
        return self.get(f"/view?{query}")
