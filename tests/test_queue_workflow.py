"""scripts/queue_workflow.py against a real HTTP server on 127.0.0.1 that answers like ComfyUI."""

import json
import threading
import urllib.parse
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.support.images import REPO, image_path

PLIC_BYTES = b"\x89PLIC\r\n\x1a-not-really"


class FakeComfy(BaseHTTPRequestHandler):
    """The four endpoints the client uses; records what it was sent."""

    def log_message(self, *args):
        pass

    def reply(self, status, payload, content_type="application/json"):
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        state = self.server.state
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if self.path == "/upload/image":
            head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
            message = BytesParser(policy=HTTP).parsebytes(head + body)
            fields = {part.get_param("name", header="content-disposition"): part for part in message.iter_parts()}
            image = fields["image"]
            state["upload"] = {"filename": image.get_filename(), "data": image.get_payload(decode=True),
                               "type": fields["type"].get_content().strip()}
            return self.reply(200, {"name": image.get_filename(), "subfolder": "", "type": "input"})
        if self.path == "/prompt":
            request = json.loads(body)
            state["prompt"] = request
            if state.get("reject"):
                return self.reply(400, {"error": {"type": "prompt_outputs_failed_validation"},
                                        "node_errors": {"3": {"errors": [{"message": "bad"}]}}})
            return self.reply(200, {"prompt_id": "p-1", "number": 0, "node_errors": {}})
        self.reply(404, {})

    def do_GET(self):
        state = self.server.state
        url = urllib.parse.urlparse(self.path)
        if url.path == "/history/p-1":
            state["polls"] = state.get("polls", 0) + 1
            if state["polls"] < 2:
                return self.reply(200, {})  # still running
            return self.reply(200, {"p-1": state["history"]})
        if url.path == "/view":
            state["viewed"] = urllib.parse.parse_qs(url.query)
            return self.reply(200, PLIC_BYTES, "application/octet-stream")
        self.reply(404, {})


@pytest.fixture
def comfy():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeComfy)
    server.state = {"history": {
        "status": {"status_str": "success", "completed": True, "messages": []},
        "outputs": {"8": {"plic": [{"filename": "PLIC_00001_.plic", "subfolder": "", "type": "output",
                                    "bytes": 7318, "bpp": 0.2233, "ratio": 107.5}]}},
    }}
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def run_client(comfy, *args):
    from scripts import queue_workflow

    return queue_workflow.main(["--server", f"127.0.0.1:{comfy.server_address[1]}",
                                "--workflow", str(REPO / "workflows" / "api" / "plic_compress.json"),
                                *map(str, args)])


def test_uploads_queues_waits_and_downloads(comfy, tmp_path, capsys):
    """Without a websocket (this server has none) the run is followed through /history."""
    image = image_path("astronaut.png")
    assert run_client(comfy, image, "--download", tmp_path, "--timeout", 30) == 0
    state = comfy.state
    assert state["upload"] == {"filename": "astronaut.png", "data": image.read_bytes(), "type": "input"}
    sent = state["prompt"]
    assert sent["client_id"] and sent["prompt"]["1"]["inputs"]["image"] == "astronaut.png"
    assert sent["prompt"]["8"]["class_type"] == "PlicSave"
    assert state["polls"] == 2
    assert state["viewed"] == {"filename": ["PLIC_00001_.plic"], "type": ["output"]}
    assert (tmp_path / "astronaut.plic").read_bytes() == PLIC_BYTES
    out = capsys.readouterr().out
    assert 'done [1/1] astronaut.png: {"file": "astronaut.plic", "bytes": 7318' in out
    record = json.loads((tmp_path / "manifest.json").read_text())["files"]["astronaut.png"]
    assert record["status"] == "done" and record["prompt_id"] == "p-1"
    assert record["outputs"] == [{"file": "astronaut.plic", "bytes": 7318, "bpp": 0.2233, "ratio": 107.5}]


def test_a_rerun_skips_what_is_done_unless_the_input_or_workflow_changed(comfy, tmp_path, capsys):
    image = tmp_path / "in" / "photo.png"
    image.parent.mkdir()
    image.write_bytes(image_path("astronaut.png").read_bytes())
    out = tmp_path / "out"
    assert run_client(comfy, image.parent, "--download", out) == 0
    comfy.state.pop("upload")
    assert run_client(comfy, image.parent, "--download", out) == 0
    assert "upload" not in comfy.state and "photo.png: done before" in capsys.readouterr().out
    assert run_client(comfy, image.parent, "--download", out, "--set", "9.budget_bpp=1") == 0
    assert comfy.state.pop("upload")["filename"] == "photo.png"  # another workflow: run again
    (out / "photo.plic").unlink()
    assert run_client(comfy, image.parent, "--download", out, "--set", "9.budget_bpp=1") == 0
    assert comfy.state.pop("upload")["filename"] == "photo.png"  # its output is gone: run again


def test_prompt_and_set_change_the_queued_workflow(comfy, tmp_path):
    assert run_client(comfy, "--prompt", "a cat on a sofa", "--set", "9.budget_bpp=2",
                      "--set", "8.filename_prefix=cats/PLIC", "--timeout", 30) == 0
    sent = comfy.state["prompt"]["prompt"]
    assert sent["2"]["inputs"]["backend"] == "manual" and sent["2"]["inputs"]["manual_text"] == "a cat on a sofa"
    assert sent["9"]["inputs"]["budget_bpp"] == 2 and sent["8"]["inputs"]["filename_prefix"] == "cats/PLIC"


def test_a_bad_assignment_is_refused(comfy, capsys):
    assert run_client(comfy, "--set", "99.x=1") == 1
    assert "expected NODE_ID.INPUT=VALUE" in capsys.readouterr().err


def test_a_rejected_workflow_is_reported(comfy, capsys):
    comfy.state["reject"] = True
    assert run_client(comfy) == 1
    assert "the workflow was refused: PlicCannyEdges (node 3): bad" in capsys.readouterr().err


def test_a_failed_run_is_reported(comfy, capsys):
    comfy.state["history"] = {"status": {"status_str": "error", "completed": False, "messages": [
        ["execution_error", {"node_id": "8", "node_type": "PlicSave", "exception_message": "disk full"}]]},
        "outputs": {}}
    assert run_client(comfy, "--timeout", 30) == 1
    assert "PlicSave (node 8): disk full" in capsys.readouterr().err


def test_an_unreachable_server_is_reported(capsys):
    from scripts import queue_workflow

    assert queue_workflow.main(["--server", "127.0.0.1:9", "--workflow",
                                str(REPO / "workflows" / "api" / "plic_compress.json")]) == 1
    assert "cannot reach ComfyUI" in capsys.readouterr().err
