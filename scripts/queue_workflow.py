#!/usr/bin/env python3
"""Queue an API-format ComfyUI workflow on a running ComfyUI and fetch what it produced.

Uses only ComfyUI's HTTP API and the standard library:
  1. POST /upload/image   uploads --image into ComfyUI's input folder (an image or a .plic file);
  2. POST /prompt         queues --workflow with that file set on its LoadImage / PLIC Load nodes;
  3. GET  /history/{id}   is polled until the run is done;
  4. GET  /view           downloads every output file (images, .plic) into --download.

Example:
  python scripts/queue_workflow.py --workflow workflows/api/plic_compress.json \
      --image photo.jpg --download out/
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

#: Node classes that read a file from the input folder, and the input naming the file.
FILE_INPUTS = {"LoadImage": "image", "PlicLoad": "file"}
#: Keys of a node's outputs in /history that list files.
FILE_OUTPUT_KEYS = ("images", "plic", "gifs", "audio")


class ComfyError(Exception):
    """The server refused a request or the run failed; the message says why."""


def request(server: str, path: str, data: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> bytes:
    """One HTTP request to ComfyUI; an HTTP error raises ComfyError with the server's reply."""
    req = urllib.request.Request(f"http://{server}{path}", data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        raise ComfyError(f"{req.get_method()} {path}: HTTP {exc.code}: "
                         f"{exc.read().decode('utf-8', 'replace')[:2000]}") from None
    except urllib.error.URLError as exc:
        raise ComfyError(f"cannot reach ComfyUI at {server}: {exc.reason}") from None


def multipart(fields: dict[str, str], file_field: str, path: Path) -> tuple[bytes, str]:
    """A multipart/form-data body with ``fields`` and one file; returns (body, content type)."""
    boundary = uuid.uuid4().hex
    parts = []
    for name, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
                     f"{value}\r\n".encode())
    kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                 f'filename="{path.name}"\r\nContent-Type: {kind}\r\n\r\n'.encode())
    parts.append(path.read_bytes())
    parts.append(f"\r\n--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def upload(server: str, path: Path) -> str:
    """Upload ``path`` to the input folder; returns the name to put in a workflow."""
    body, content_type = multipart({"type": "input", "overwrite": "true"}, "image", path)
    reply = json.loads(request(server, "/upload/image", body, {"Content-Type": content_type}))
    return f"{reply['subfolder']}/{reply['name']}" if reply.get("subfolder") else reply["name"]


def use_file(workflow: dict, name: str) -> int:
    """Point every file-reading node of ``workflow`` at ``name``; returns how many it changed."""
    wanted = "PlicLoad" if name.lower().endswith(".plic") else "LoadImage"
    changed = 0
    for node in workflow.values():
        if node.get("class_type") == wanted:
            node["inputs"][FILE_INPUTS[wanted]] = name
            changed += 1
    return changed


def set_inputs(workflow: dict, assignments: list[str]) -> None:
    """Apply ``NODE_ID.INPUT=VALUE`` assignments (VALUE parsed as JSON when it parses, else
    taken as text) to ``workflow``."""
    for assignment in assignments:
        target, sep, value = assignment.partition("=")
        node_id, dot, name = target.partition(".")
        if not (sep and dot) or node_id not in workflow:
            raise ComfyError(f"--set {assignment!r}: expected NODE_ID.INPUT=VALUE with a node id of "
                             f"the workflow ({', '.join(workflow)})")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        workflow[node_id]["inputs"][name] = parsed


def use_prompt(workflow: dict, text: str) -> int:
    """Make every PLIC Caption node of ``workflow`` use ``text`` (its manual back end)."""
    nodes = [node for node in workflow.values() if node.get("class_type") == "PlicCaption"]
    for node in nodes:
        node["inputs"].update(backend="manual", manual_text=text)
    return len(nodes)


def queue(server: str, workflow: dict, client_id: str) -> str:
    """Queue ``workflow``; returns its prompt id."""
    body = json.dumps({"prompt": workflow, "client_id": client_id}).encode()
    reply = json.loads(request(server, "/prompt", body, {"Content-Type": "application/json"}))
    if reply.get("node_errors"):
        raise ComfyError(f"the workflow was rejected: {json.dumps(reply['node_errors'])}")
    return reply["prompt_id"]


def wait(server: str, prompt_id: str, timeout: float, interval: float = 0.5) -> dict:
    """Poll /history until the run ends; returns its history entry."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = json.loads(request(server, f"/history/{prompt_id}"))
        entry = history.get(prompt_id)
        if entry and entry.get("status", {}).get("completed", entry.get("outputs") is not None):
            return entry
        if entry and entry.get("status", {}).get("status_str") == "error":
            return entry
        time.sleep(interval)
    raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


def run_errors(entry: dict) -> list[str]:
    """The error messages of a finished run (empty when it succeeded)."""
    if entry.get("status", {}).get("status_str") != "error":
        return []
    return [f"{data.get('node_type')} (node {data.get('node_id')}): {data.get('exception_message')}"
            for kind, data in entry["status"].get("messages", []) if kind == "execution_error"]


def output_files(entry: dict) -> list[dict]:
    """Every file the run wrote: dicts with filename, subfolder, type (and extras)."""
    return [item for outputs in entry.get("outputs", {}).values()
            for key in FILE_OUTPUT_KEYS for item in outputs.get(key, [])
            if isinstance(item, dict) and "filename" in item]


def download(server: str, item: dict, folder: Path) -> Path:
    query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
    target = folder / Path(item["filename"]).name
    folder.mkdir(parents=True, exist_ok=True)
    target.write_bytes(request(server, f"/view?{query}", timeout=120))
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default="127.0.0.1:8188", help="host:port of ComfyUI")
    parser.add_argument("--workflow", type=Path, required=True, help="an API-format workflow (JSON)")
    parser.add_argument("--image", type=Path, help="image (or .plic) to upload and feed the workflow")
    parser.add_argument("--prompt", help="the image's description (sets PLIC Caption to this text)")
    parser.add_argument("--set", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                        help="change any input of the workflow, e.g. --set 2.backend=openai "
                             "(repeatable; VALUE is JSON or text)")
    parser.add_argument("--download", type=Path, help="folder to download the outputs into")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the run")
    args = parser.parse_args(argv)
    try:
        workflow = json.loads(args.workflow.read_text())
        if args.image is not None:
            name = upload(args.server, args.image)
            if not use_file(workflow, name):
                raise ComfyError(f"{args.workflow} has no node that reads {args.image.name}")
            print(f"uploaded {args.image} as {name}")
        if args.prompt is not None and not use_prompt(workflow, args.prompt):
            raise ComfyError(f"{args.workflow} has no PLIC Caption node to take --prompt")
        set_inputs(workflow, args.set)
        prompt_id = queue(args.server, workflow, uuid.uuid4().hex)
        print(f"queued prompt {prompt_id}")
        entry = wait(args.server, prompt_id, args.timeout)
        errors = run_errors(entry)
        if errors:
            raise ComfyError("the run failed: " + "; ".join(errors))
        for item in output_files(entry):
            extras = {k: v for k, v in item.items() if k not in ("filename", "subfolder", "type")}
            where = f"{item.get('subfolder')}/" if item.get("subfolder") else ""
            print(f"output: {item.get('type', 'output')}/{where}{item['filename']} "
                  f"{json.dumps(extras) if extras else ''}".rstrip())
            if args.download:
                print(f"downloaded {download(args.server, item, args.download)}")
    except (ComfyError, OSError, ValueError) as exc:
        print(f"queue_workflow: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
