"""The size every node of the shipped workflows gets in ComfyUI's real frontend, and which nodes
overlap: starts ComfyUI 0.3.64 with the pack (scripts/comfy_server.py), opens its frontend in
headless Chromium (Debian package chromium) through the DevTools protocol, loads each
workflows/*.json with app.loadGraphData and reads back the nodes' bounding boxes.

  python scripts/frontend_node_sizes.py [--front-end-root DIR] [--vue-nodes] [--check DIR]

--check instead checks each template as drawn at fit-to-view (links behind nodes, nodes
outside their group; a screenshot of each into DIR) and the readouts after a run, a tab switch,
a cached rerun and a new prompt (tests/test_frontend.py).

--front-end-root serves another frontend (e.g. a newer comfyui-frontend-package's static/);
--vue-nodes turns on "Nodes 2.0" (setting Comfy.VueNodes.Enabled) where the frontend has it.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.comfy_server import ComfyServer, _free_port  # noqa: E402
from scripts.workflow_layout import overlaps  # noqa: E402

READ_BOXES = """(async () => {
  const workflow = %s;
  await window.app.loadGraphData(workflow);
  await new Promise((r) => setTimeout(r, 1500));
  const scale = window.app.canvas.ds.scale;
  return JSON.stringify(window.app.graph._nodes.map((n) => {
    const b = n.getBounding ? Array.from(n.getBounding()) : [n.pos[0], n.pos[1] - 30, n.size[0], n.size[1] + 30];
    // Nodes 2.0 draws each node as a DOM element: its on-screen size is the real one
    const element = document.querySelector(`[data-node-id="${n.id}"]`);
    if (element) {
      const rect = element.getBoundingClientRect();
      b[2] = rect.width / scale;
      b[3] = rect.height / scale;
    }
    return {id: n.id, type: n.type, title: n.title, dom: !!element, box: b.map(Math.round)};
  }));
})()"""


#: What the readouts of the compress template show (and whether they are on screen) after it
#: runs, after a switch to another workflow tab and back, after a rerun that ComfyUI's cache
#: skips, and after a rerun with only the prompt changed.
READOUT_STAYS = """(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  const command = (id) => window.app.extensionManager.command.execute(id);
  const idle = async () => {
    await sleep(1000);
    for (let i = 0; i < 600; i++) {
      const queue = await (await fetch("/queue")).json();
      if (!queue.queue_running.length && !queue.queue_pending.length) break;
      await sleep(500);
    }
    await sleep(1500);
  };
  // each readout's text, label, and whether it is on screen with its node at zoom 1
  const readouts = async () => {
    const seen = {};
    for (const node of window.app.graph._nodes) {
      if (!["PlicPack", "PlicSave", "PlicSalientRegions", "PlicCaption"].includes(node.type)) continue;
      const widget = node.widgets?.find((w) => w.name === "plic_readout");
      if (!widget) { seen[node.type] = null; continue; }
      window.app.canvas.ds.scale = 1;
      window.app.canvas.ds.offset = [100 - node.pos[0], 150 - node.pos[1]];
      window.app.canvas.setDirty(true, true);
      await sleep(400);
      const rect = widget.element.getBoundingClientRect();
      const style = getComputedStyle(widget.element.lastChild);
      seen[node.type] = {text: widget.value, label: widget.element.firstChild.textContent,
        shown: rect.height > 20 && rect.width > 20 && !!widget.element.offsetParent,
        height: Math.round(rect.height), scroll: widget.element.lastChild.scrollHeight > widget.element.lastChild.clientHeight + 1,
        font: style.fontSize, opacity: style.opacity, color: style.color, background: style.backgroundColor};
    }
    return seen;
  };
  await window.app.loadGraphData(%s);
  await sleep(1000);
  const seen = {};
  await command("Comfy.QueuePrompt"); await idle();
  seen.run = await readouts();
  await command("Comfy.NewBlankWorkflow"); await sleep(1500);
  await command("Workspace.PreviousOpenedWorkflow"); await sleep(2500);
  seen.tab_switch = await readouts();
  await command("Comfy.QueuePrompt"); await idle();
  seen.cached_rerun = await readouts();
  const caption = window.app.graph._nodes.find((n) => n.type === "PlicCaption");
  caption.widgets.find((w) => w.name === "manual_text").value = "a different prompt";
  await command("Comfy.QueuePrompt"); await idle();
  seen.prompt_changed = await readouts();
  return JSON.stringify(seen);
})()"""


#: The layout as drawn at fit-to-view: every link's drawn path tested against every other node's
#: box (Nodes 2.0: its DOM size), and every node against the groups.
LAYOUT = """(async () => {
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  await window.app.loadGraphData(%s);
  await sleep(1500);
  await window.app.extensionManager.command.execute("Comfy.Canvas.FitView");
  await sleep(1500);
  const canvas = window.app.canvas, graph = window.app.graph, scale = canvas.ds.scale;
  canvas.draw(true, true);
  const nodes = graph._nodes.map((n) => {
    const box = Array.from(n.getBounding());
    const element = document.querySelector(`[data-node-id="${n.id}"]`);
    if (element) {
      const rect = element.getBoundingClientRect();
      [box[2], box[3]] = [rect.width / scale, rect.height / scale];
    }
    return {id: n.id, type: n.type, box};
  });
  const groups = graph._groups.map((g) => ({title: g.title, box: Array.from(g._bounding ?? g.bounding)}));
  const inside = ([x, y, w, h], [gx, gy, gw, gh]) => gx <= x && gy <= y && x + w <= gx + gw && y + h <= gy + gh;
  const outside = nodes.filter((n) => !["Note", "MarkdownNote"].includes(n.type))
    .filter((n) => groups.filter((g) => inside(n.box, g.box)).length !== 1).map((n) => `${n.id} ${n.type}`);
  const ctx = canvas.canvas.getContext("2d");
  ctx.save();
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.lineWidth = 3;
  const behind = [], undrawn = [];
  const links = graph.links instanceof Map ? [...graph.links.values()] : Object.values(graph.links);
  for (const link of links) {
    if (!link.path) { undrawn.push(link.id); continue; }
    for (const node of nodes) {
      if (node.id === link.origin_id || node.id === link.target_id) continue;
      const [x, y, w, h] = node.box;
      let hit = false;
      for (let px = x + 2; px < x + w - 2 && !hit; px += 5)
        for (let py = y + 2; py < y + h - 2 && !hit; py += 5) hit = ctx.isPointInStroke(link.path, px, py);
      if (hit) behind.push(`link ${link.id} (${link.origin_id} -> ${link.target_id}) runs behind node ${node.id} ${node.type}`);
    }
  }
  ctx.restore();
  return JSON.stringify({fit_zoom: scale, groups: groups.length, outside, behind, undrawn});
})()"""


async def _evaluate(ws, expression: str, ident: list[int]):
    ident[0] += 1
    await ws.send_json({"id": ident[0], "method": "Runtime.evaluate",
                        "params": {"expression": expression, "awaitPromise": True, "returnByValue": True}})
    while True:
        reply = await ws.receive_json(timeout=60)
        if reply.get("id") == ident[0]:
            result = reply.get("result", {})
            if "exceptionDetails" in result:
                raise RuntimeError(json.dumps(result["exceptionDetails"])[:2000])
            return result.get("result", {}).get("value")


async def measure(url: str, workflows: list[Path], script: str = READ_BOXES,
                  screenshots: Path | None = None) -> dict[str, object]:
    """What ``script`` (JavaScript with %s for a workflow's JSON) returns as JSON in the frontend
    at ``url``, for each workflow; with ``screenshots``, the screen as the script leaves it is
    saved there as <workflow>.png."""
    import aiohttp

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="plic-chromium-") as profile:
        browser = subprocess.Popen(
            [shutil.which("chromium") or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=1920,1080",
             url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        async with session.get(f"http://127.0.0.1:{port}/json") as reply:
                            pages = [t for t in await reply.json() if t["type"] == "page"]
                        if pages:
                            break
                    except aiohttp.ClientError:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError("Chromium did not open its DevTools port")
                    await asyncio.sleep(0.5)
                async with session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    ident = [0]
                    while not await _evaluate(ws, "!!(window.app && window.app.graph && window.app.canvas)", ident):
                        if time.monotonic() > deadline + 60:
                            raise RuntimeError("the frontend did not start")
                        await asyncio.sleep(1)
                    await asyncio.sleep(3)  # extensions (ours included) finish registering
                    results = {}
                    for path in workflows:
                        results[path.name] = json.loads(await _evaluate(ws, script % path.read_text(), ident))
                        if screenshots is not None:
                            ident[0] += 1
                            await ws.send_json({"id": ident[0], "method": "Page.captureScreenshot"})
                            while (reply := await ws.receive_json(timeout=60)).get("id") != ident[0]:
                                pass
                            screenshots.mkdir(parents=True, exist_ok=True)
                            (screenshots / f"{path.stem}.png").write_bytes(base64.b64decode(reply["result"]["data"]))
                    return results
        finally:
            _end_process_group(browser)


def _end_process_group(process: subprocess.Popen, seconds: float = 15) -> None:
    """End ``process`` and every process of its group (Chromium's renderers and network service
    go on writing into the profile for a moment after the browser itself exits), so that the
    profile folder can be removed: SIGTERM, then SIGKILL to what is left after ``seconds``."""
    group = process.pid  # started with start_new_session: its own process group
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, sig)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            process.poll()
            try:
                os.killpg(group, 0)  # anyone left in the group?
            except ProcessLookupError:
                return
            time.sleep(0.1)


def check(front_end_root: Path | None = None, vue_nodes: bool = False,
          screenshots: Path | None = None) -> dict:
    """In a real ComfyUI with the frontend at ``front_end_root`` (None: the installed one),
    classic canvas or Nodes 2.0: each template's layout as drawn at fit-to-view (LAYOUT, a
    screenshot of each in ``screenshots``) and the compress template's readouts as a user
    meets them (READOUT_STAYS). Returns {"layout": {template: ...}, "readouts": {...}}."""
    extra = ("--front-end-root", str(front_end_root)) if front_end_root else ()
    with tempfile.TemporaryDirectory(prefix="plic-frontend-") as tmp:
        with ComfyServer.prepared(Path(tmp), extra_args=extra) as server:
            server.post_json("/settings/Comfy.TutorialCompleted", True)  # no template browser on top
            server.post_json("/settings/Comfy.VueNodes.Enabled", vue_nodes)
            layout = asyncio.run(measure(server.url, sorted((REPO / "workflows").glob("*.json")), LAYOUT,
                                         screenshots))
            readouts = asyncio.run(measure(server.url, [REPO / "workflows" / "plic_compress.json"],
                                           READOUT_STAYS))
    return {"layout": layout, "readouts": readouts["plic_compress.json"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--front-end-root", type=Path)
    parser.add_argument("--vue-nodes", action="store_true")
    parser.add_argument("--check", type=Path, metavar="DIR",
                        help="instead: check() the layouts and readouts, screenshots into DIR")
    args = parser.parse_args(argv)
    if args.check:
        print(json.dumps(check(args.front_end_root, args.vue_nodes, args.check), indent=1))
        return 0
    extra = ("--front-end-root", str(args.front_end_root)) if args.front_end_root else ()
    workflows = sorted((REPO / "workflows").glob("*.json"))
    with tempfile.TemporaryDirectory(prefix="plic-frontend-") as tmp:
        with ComfyServer.prepared(Path(tmp), extra_args=extra) as server:
            if args.vue_nodes:
                server.post_json("/settings/Comfy.VueNodes.Enabled", True)
            results = asyncio.run(measure(server.url, workflows))
    found = 0
    for name, nodes in results.items():
        print(f"{name}: {'Nodes 2.0 (DOM sizes)' if any(n['dom'] for n in nodes) else 'classic canvas'}")
        for node in nodes:
            print(f"  {node['id']:>3} {node['type']:<28} box {node['box']}")
        for a, b in overlaps(nodes):
            print(f"  OVERLAP: {a} and {b}")
            found += 1
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
