#!/usr/bin/env python3
"""Queue an API-format ComfyUI workflow on running ComfyUI servers, once for each input file,
and fetch what each run produced.

Uses only ComfyUI's HTTP API, its websocket and the standard library. For each file:
  1. POST /upload/image   uploads it into ComfyUI's input folder (an image or a .plic file);
  2. POST /prompt         queues the workflow with that file set on its LoadImage / PLIC Load nodes;
  3. GET  /ws             reports the run's progress and its end (GET /history/{id} is read at
                          the end, and polled when the websocket cannot connect);
  4. GET  /view           downloads every output file into --download as soon as the run ends,
                          named after the input (photo.jpg -> photo.plic, a second PNG of one
                          run photo_2.png), and records the run in --download's manifest.json;
                          a rerun skips each file that the manifest lists as done with the same
                          input, the same workflow and its outputs still there.
--in-flight prompts are queued at once, dealt round-robin to the --server(s). A file that fails
is reported with ComfyUI's own message while the others go on; the exit status is 1 when any
file failed.

Example:
  python scripts/queue_workflow.py --workflow workflows/api/plic_compress.json \\
      photos/ --download out/ --server 127.0.0.1:8188 --server 10.0.0.2:8188
"""

from __future__ import annotations

import argparse
import base64
import copy
import hashlib
import itertools
import json
import mimetypes
import os
import queue as queues
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

#: Node classes that read a file from the input folder, and the input naming the file.
FILE_INPUTS = {"LoadImage": "image", "PlicLoad": "file"}
#: What a folder gives to each of them (as plic.image.IMAGE_SUFFIXES; this script imports
#: nothing of the pack, so that any Python runs it).
FOLDER_SUFFIXES = {"LoadImage": {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"},
                   "PlicLoad": {".plic"}}
#: Keys of a node's outputs in /history that list files.
FILE_OUTPUT_KEYS = ("images", "plic", "gifs", "audio")
#: The websocket messages that end a run.
END_MESSAGES = ("execution_success", "execution_error", "execution_interrupted")
MANIFEST = "manifest.json"
#: Seconds between reads of /history while a run goes on (the websocket usually ends the wait).
POLL = 0.5


class ComfyError(Exception):
    """The server refused a request or the run failed; the message says why, and ``reply`` is
    the body of the server's refusal (empty otherwise)."""

    def __init__(self, message: str, reply: bytes = b""):
        super().__init__(message)
        self.reply = reply


def one_line(text: str) -> str:
    return " ".join(str(text).split())


def request(server: str, path: str, data: bytes | None = None, headers: dict | None = None,
            timeout: float = 30) -> bytes:
    """One HTTP request to ComfyUI; an HTTP error raises ComfyError with the server's reply."""
    req = urllib.request.Request(f"http://{server}{path}", data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return response.read()
    except urllib.error.HTTPError as exc:
        reply = exc.read()
        raise ComfyError(f"{req.get_method()} {path}: HTTP {exc.code}: "
                         f"{reply.decode('utf-8', 'replace')[:2000]}", reply) from None
    except (urllib.error.URLError, OSError) as exc:
        raise ComfyError(f"cannot reach ComfyUI at {server}: {getattr(exc, 'reason', exc)}") from None


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


def file_node(name: str) -> str:
    """The class of the nodes that read the file ``name`` (.plic: PLIC Load, else Load Image)."""
    return "PlicLoad" if name.lower().endswith(".plic") else "LoadImage"


def use_file(workflow: dict, name: str) -> int:
    """Point every file-reading node of ``workflow`` at ``name``; returns how many it changed."""
    wanted = file_node(name)
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


def expand(paths: list[Path], workflow: dict) -> list[Path]:
    """Files as given; a folder replaced by the files directly inside it that the workflow
    reads (.plic files when it has a PLIC Load, else images), sorted."""
    classes = {node.get("class_type") for node in workflow.values()}
    reader = "PlicLoad" if "PlicLoad" in classes else "LoadImage"
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir()
                                if p.is_file() and p.suffix.lower() in FOLDER_SUFFIXES[reader]))
        else:
            files.append(path)
    return files


def node_errors(reply: dict, workflow: dict) -> str:
    """ComfyUI's reasons for refusing a workflow (the reply of POST /prompt), on one line."""
    reasons = [f"{workflow.get(node_id, {}).get('class_type', '?')} (node {node_id}): "
               f"{error.get('message', '')}: {error.get('details', '')}".rstrip(": ")
               for node_id, node in reply.get("node_errors", {}).items()
               for error in node.get("errors", [])]
    if not reasons and reply.get("error"):
        error = reply["error"]
        reasons = [f"{error.get('message', '')}: {error.get('details', '')}".rstrip(": ")]
    return one_line("; ".join(reasons) or json.dumps(reply)[:2000])


def queue(server: str, workflow: dict, client_id: str) -> str:
    """Queue ``workflow``; returns its prompt id. ComfyError with ComfyUI's reasons when it is
    refused."""
    body = json.dumps({"prompt": workflow, "client_id": client_id}).encode()
    try:
        reply = json.loads(request(server, "/prompt", body, {"Content-Type": "application/json"}))
    except ComfyError as exc:
        try:
            refused = json.loads(exc.reply)
        except ValueError:
            raise exc from None
        raise ComfyError(f"the workflow was refused: {node_errors(refused, workflow)}") from None
    if reply.get("node_errors"):
        raise ComfyError(f"the workflow was refused: {node_errors(reply, workflow)}")
    return reply["prompt_id"]


def run_errors(entry: dict) -> list[str]:
    """ComfyUI's error messages for a finished run (empty when it succeeded)."""
    if entry.get("status", {}).get("status_str") != "error":
        return []
    return [one_line(f"{data.get('node_type')} (node {data.get('node_id')}): "
                     f"{data.get('exception_message') or 'interrupted'}")
            for kind, data in entry["status"].get("messages", [])
            if kind in ("execution_error", "execution_interrupted")] or ["the run failed"]


def output_files(entry: dict) -> list[dict]:
    """Every file the run wrote: dicts with filename, subfolder, type (and extras)."""
    return [item for outputs in entry.get("outputs", {}).values()
            for key in FILE_OUTPUT_KEYS for item in outputs.get(key, [])
            if isinstance(item, dict) and "filename" in item]


def download(server: str, item: dict, target: Path) -> Path:
    query = urllib.parse.urlencode({k: item.get(k, "") for k in ("filename", "subfolder", "type")})
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(request(server, f"/view?{query}", timeout=120))
    return target


class Websocket:
    """The receiving end of a websocket (RFC 6455) over a plain socket: all ComfyUI's /ws
    needs, since the client only listens."""

    def __init__(self, server: str, path: str, timeout: float = 10):
        host, _, port = server.rpartition(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {server}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                          "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        self.stream = self.sock.makefile("rb")
        status = self.stream.readline()
        while self.stream.readline() not in (b"\r\n", b""):
            pass
        if status.split()[1:2] != [b"101"]:
            self.close()
            raise ComfyError(f"{server}{path}: no websocket ({one_line(status.decode('latin-1'))})")
        self.sock.settimeout(None)

    def _read(self, size: int) -> bytes:
        data = self.stream.read(size)
        if len(data) < size:
            raise EOFError("the server closed the websocket")
        return data

    def _send(self, opcode: int, payload: bytes) -> None:
        """One masked frame (a client's frames are masked); control frames only."""
        mask = os.urandom(4)
        self.sock.sendall(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask
                          + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def messages(self):
        """Yield each text message until the server closes; pings are answered."""
        kind, pieces = None, []
        while True:
            head, size = self._read(2)
            size &= 0x7F
            if size >= 126:
                size = int.from_bytes(self._read(2 if size == 126 else 8), "big")
            payload = self._read(size)  # a server's frames are not masked
            opcode = head & 0x0F
            if opcode == 0x8:
                return
            if opcode == 0x9:
                self._send(0xA, payload)
            elif opcode in (0x0, 0x1, 0x2):
                kind = opcode if opcode else kind
                pieces.append(payload)
                if head & 0x80:
                    if kind == 0x1:
                        yield b"".join(pieces).decode("utf-8")
                    kind, pieces = None, []

    def close(self) -> None:
        self.sock.close()


class Server:
    """One ComfyUI: its address, and what its websocket says about the prompts queued here."""

    def __init__(self, address: str, say):
        self.address = address
        self.say = say
        self.client_id = uuid.uuid4().hex
        self.lock = threading.Lock()
        self.ended: dict[str, threading.Event] = {}
        self.watched: dict[str, tuple[str, dict]] = {}  # prompt id -> (label, workflow)
        self.websocket: Websocket | None = None

    def listen(self) -> None:
        """Connect the websocket and follow it in a thread; without it runs are polled."""
        try:
            self.websocket = Websocket(self.address, f"/ws?clientId={self.client_id}")
        except (OSError, ComfyError):
            return
        threading.Thread(target=self._follow, daemon=True).start()

    def _follow(self) -> None:
        try:
            for text in self.websocket.messages():
                message = json.loads(text)
                data = message.get("data") or {}
                if isinstance(data, dict) and data.get("prompt_id"):
                    self._on_message(message["type"], data)
        except (OSError, EOFError, ValueError):
            pass
        self.websocket = None

    def _on_message(self, kind: str, data: dict) -> None:
        prompt_id = data["prompt_id"]
        if kind in END_MESSAGES:
            self._event(prompt_id).set()
        with self.lock:
            label, workflow = self.watched.get(prompt_id, (None, {}))
        if label is None:
            return
        node = workflow.get(str(data.get("node")), {}).get("class_type")
        if kind == "executing" and node:
            self.say(f"  {label}: {node} (node {data['node']})")
        elif kind == "progress" and node:
            value, total = data.get("value", 0), data.get("max", 0)
            if value == total or value % max(1, total // 4) == 0:
                self.say(f"  {label}: {node} {value}/{total}")

    def _event(self, prompt_id: str) -> threading.Event:
        with self.lock:
            return self.ended.setdefault(prompt_id, threading.Event())

    def watch(self, prompt_id: str, label: str, workflow: dict) -> None:
        with self.lock:
            self.watched[prompt_id] = (label, workflow)

    def wait(self, prompt_id: str, timeout: float) -> dict:
        """The /history entry of ``prompt_id`` once the run has ended (succeeded or failed)."""
        ended = self._event(prompt_id)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            entry = json.loads(request(self.address, f"/history/{prompt_id}")).get(prompt_id)
            if entry and entry.get("status", {}).get("status_str") in ("success", "error"):
                with self.lock:
                    self.watched.pop(prompt_id, None)
                    self.ended.pop(prompt_id, None)
                return entry
            # history is written just after the end message: then poll briskly
            ended.wait(POLL if self.websocket is None or ended.is_set() else 5 * POLL)
            if ended.is_set():
                time.sleep(POLL / 5)
        raise ComfyError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


class Manifest:
    """``manifest.json`` in the download folder: for each input (named by its path), the run
    that last handled it: status done or failed, the server and prompt id, the input's and the
    workflow's SHA-256, the output files with what ComfyUI said of them, or the error. Written
    after every file, so that an interrupted batch keeps what it did."""

    def __init__(self, folder: Path | None):
        self.path = folder / MANIFEST if folder else None
        self.files: dict[str, dict] = {}
        if self.path and self.path.is_file():
            try:
                self.files = json.loads(self.path.read_text())["files"]
            except (ValueError, KeyError, TypeError):
                raise ComfyError(f"{self.path}: not a manifest this script wrote; "
                                 "move it away or download into another folder") from None
        self.lock = threading.Lock()

    def is_done(self, key: str, record: dict) -> bool:
        """Whether ``key`` was done with the same input and workflow, its outputs all there."""
        old = self.files.get(key, {})
        return (self.path is not None and old.get("status") == "done"
                and all(old.get(k) == record[k] for k in ("input_sha256", "workflow_sha256"))
                and all((self.path.parent / out["file"]).is_file() for out in old.get("outputs", [])))

    def record(self, key: str, record: dict) -> None:
        with self.lock:
            self.files[key] = record
            if self.path:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                partial = self.path.with_name(MANIFEST + ".partial")
                partial.write_text(json.dumps({"files": self.files}, indent=1, sort_keys=True))
                partial.replace(self.path)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def output_names(stem: str, items: list[dict]) -> list[str]:
    """Download names of a run's output ``items``: the input's stem and each file's suffix,
    numbered from the second of one suffix on (photo.png, photo_2.png)."""
    seen: dict[str, int] = {}
    names = []
    for item in items:
        suffix = Path(item["filename"]).suffix
        seen[suffix] = seen.get(suffix, 0) + 1
        names.append(f"{stem}{'' if seen[suffix] == 1 else f'_{seen[suffix]}'}{suffix}")
    return names


def run_one(server: Server, workflow: dict, path: Path | None, label: str, args) -> dict:
    """Upload ``path`` (None: run the workflow as it is), queue, wait, download; returns the
    manifest's record of the run, or raises ComfyError."""
    workflow = copy.deepcopy(workflow)
    record = {"server": server.address}
    if path is not None:
        name = upload(server.address, path)
        if not use_file(workflow, name):
            raise ComfyError(f"{args.workflow} has no {file_node(name)} node to read it")
    prompt_id = queue(server.address, workflow, server.client_id)
    server.watch(prompt_id, label, workflow)
    record["prompt_id"] = prompt_id
    server.say(f"{label}: queued on {server.address} as {prompt_id}")
    entry = server.wait(prompt_id, args.timeout)
    errors = run_errors(entry)
    if errors:
        raise ComfyError("; ".join(errors))
    items = [item for item in output_files(entry) if item.get("type", "output") == "output"]
    outputs = []
    for item, name in zip(items, output_names(Path(label).stem, items)):
        extras = {k: v for k, v in item.items() if k not in ("filename", "subfolder", "type")}
        if args.download:
            download(server.address, item, args.download / name)
        outputs.append({"file": name if args.download else item["filename"], **extras})
    return {**record, "status": "done", "outputs": outputs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("inputs", nargs="*", type=Path, metavar="FILE_OR_FOLDER",
                        help="images (or .plic files) to feed the workflow, one run each; a folder "
                             "gives the files directly inside it that the workflow reads "
                             "(none: run the workflow as it is)")
    parser.add_argument("--server", action="append", metavar="HOST:PORT",
                        help="a ComfyUI (repeatable: runs are dealt round-robin; default 127.0.0.1:8188)")
    parser.add_argument("--workflow", type=Path, required=True, help="an API-format workflow (JSON)")
    parser.add_argument("--prompt", help="the images' description (sets PLIC Caption to this text)")
    parser.add_argument("--set", action="append", default=[], metavar="NODE_ID.INPUT=VALUE",
                        help="change any input of the workflow, e.g. --set 2.backend=openai "
                             "(repeatable; VALUE is JSON or text)")
    parser.add_argument("--download", type=Path, metavar="FOLDER",
                        help="folder to download the outputs into, with manifest.json")
    parser.add_argument("--in-flight", type=int, default=0, metavar="N",
                        help="prompts queued at once, over all servers (default 2 per server)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for each run")
    args = parser.parse_args(argv)
    servers_given = args.server or ["127.0.0.1:8188"]
    lock = threading.Lock()

    def say(line: str, stream=sys.stdout) -> None:
        with lock:
            print(line, file=stream, flush=True)

    try:
        workflow = json.loads(args.workflow.read_text())
        if args.prompt is not None and not use_prompt(workflow, args.prompt):
            raise ComfyError(f"{args.workflow} has no PLIC Caption node to take --prompt")
        set_inputs(workflow, args.set)
        if args.in_flight < 0:
            raise ComfyError(f"--in-flight {args.in_flight}: give a number of prompts, 1 or more")
        manifest = Manifest(args.download)
        files = expand(args.inputs, workflow)
        if args.inputs and not files:
            raise ComfyError(f"{' '.join(map(str, args.inputs))}: no file the workflow reads")
    except (ComfyError, OSError, ValueError) as exc:
        print(f"queue_workflow: {one_line(exc)}", file=sys.stderr)
        return 1
    workflow_sha = sha256(json.dumps(workflow, sort_keys=True).encode())

    # name each job after its input (the workflow's when there is none) and skip what is done
    jobs, first = [], {}
    failed = 0
    for path in files or [None]:
        label = path.name if path is not None else args.workflow.name
        stem = Path(label).stem
        try:
            if stem in first:
                raise ComfyError(f"its outputs would be named {stem}.* like those of {first[stem]}; "
                                 "rename one of them or queue them separately")
            first[stem] = path
            record = {"input": str(path) if path else None, "workflow_sha256": workflow_sha,
                      "input_sha256": sha256(path.read_bytes()) if path else None}
        except (ComfyError, OSError) as exc:
            say(f"FAILED {label}: {one_line(exc)}", sys.stderr)
            failed += 1
            continue
        if manifest.is_done(label, record):
            say(f"{label}: done before (in {manifest.path}), skipped")
            continue
        jobs.append((path, label, record))

    servers = [Server(address, say) for address in servers_given]
    for server in servers:
        server.listen()
    work: queues.Queue = queues.Queue()
    for job in jobs:
        work.put(job)
    results = {"failed": failed, "ended": 0}

    def worker(server: Server) -> None:
        while True:
            try:
                path, label, record = work.get_nowait()
            except queues.Empty:
                return
            try:
                record.update(run_one(server, workflow, path, label, args))
            except (ComfyError, OSError, ValueError) as exc:
                record.update(server=server.address, status="failed", error=one_line(exc))
            manifest.record(label, record)
            with lock:
                results["ended"] += 1
                results["failed"] += record["status"] == "failed"
                count = f"[{results['ended']}/{len(jobs)}]"
            if record["status"] == "failed":
                say(f"FAILED {count} {label}: {record['error']}", sys.stderr)
            else:
                say(f"done {count} {label}: {', '.join(json.dumps(out) for out in record['outputs'])}")

    slots = args.in_flight or 2 * len(servers)
    threads = [threading.Thread(target=worker, args=(server,))
               for server in itertools.islice(itertools.cycle(servers), slots)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for server in servers:
        if server.websocket is not None:
            server.websocket.close()
    if results["failed"]:
        say(f"queue_workflow: {results['failed']} of {len(files) or 1} files failed", sys.stderr)
    return 1 if results["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
