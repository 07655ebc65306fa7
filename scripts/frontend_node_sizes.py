"""The size every node of the shipped workflows gets in ComfyUI's real frontend, and which nodes
overlap: starts ComfyUI 0.3.64 with the pack (scripts/comfy_server.py), opens its frontend in
headless Chromium (Debian package chromium) through the DevTools protocol, loads each
workflows/*.json with app.loadGraphData and reads back the nodes' bounding boxes.

  python scripts/frontend_node_sizes.py [--front-end-root DIR] [--vue-nodes] [--readout]

--readout instead shows what PLIC Save's readout becomes after two runs (value, label, the
text area Nodes 2.0 draws, whether it is saved, warnings logged meanwhile).

--front-end-root serves another frontend (e.g. a newer comfyui-frontend-package's static/);
--vue-nodes turns on "Nodes 2.0" (setting Comfy.VueNodes.Enabled) where the frontend has it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from scripts.comfy_server import ComfyServer, _free_port  # noqa: E402

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


READOUT = """(async () => {
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => { warnings.push(args.join(" ")); warn(...args); };
  await window.app.loadGraphData(%s);
  const node = window.app.graph._nodes.find((n) => n.type === "PlicSave");
  node.onExecuted({plic: [{filename: "PLIC_00001_.plic", bytes: 812, bpp: 0.0248, ratio: 968}]});
  node.onExecuted({plic: [{filename: "PLIC_00002_.plic", bytes: 900, bpp: 0.0300, ratio: 900}]});
  await new Promise((r) => setTimeout(r, 1000));
  const readouts = node.widgets.filter((w) => w.name === "plic_readout");
  const element = document.querySelector(`[data-node-id="${node.id}"]`);
  return JSON.stringify({widgets: readouts.length, value: readouts[0]?.value, label: readouts[0]?.label,
    nodes2_text_areas: element ? Array.from(element.querySelectorAll("textarea")).map((t) => t.value) : null,
    nodes2_text: element ? element.innerText : null,
    saved_widgets_values: node.serialize().widgets_values, warnings});
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


def overlaps(nodes: list[dict], gap: int = 0) -> list[tuple[str, str]]:
    """Pairs of nodes whose boxes (x, y, w, h) overlap (closer than ``gap``)."""
    found = []
    for i, a in enumerate(nodes):
        ax, ay, aw, ah = a["box"]
        for b in nodes[i + 1:]:
            bx, by, bw, bh = b["box"]
            if ax < bx + bw + gap and bx < ax + aw + gap and ay < by + bh + gap and by < ay + ah + gap:
                found.append((f"{a['id']} {a['type']}", f"{b['id']} {b['type']}"))
    return found


async def measure(url: str, workflows: list[Path], script: str = READ_BOXES) -> dict[str, object]:
    """What ``script`` (JavaScript with %s for a workflow's JSON) returns as JSON in the frontend
    at ``url``, for each workflow."""
    import aiohttp

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="plic-chromium-") as profile:
        browser = subprocess.Popen(
            [shutil.which("chromium") or "chromium", "--headless=new", "--no-sandbox", "--disable-gpu",
             f"--remote-debugging-port={port}", f"--user-data-dir={profile}", "--window-size=1920,1080",
             url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
                    return {path.name: json.loads(await _evaluate(ws, script % path.read_text(), ident))
                            for path in workflows}
        finally:
            browser.terminate()
            browser.wait(timeout=15)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--front-end-root", type=Path)
    parser.add_argument("--vue-nodes", action="store_true")
    parser.add_argument("--readout", action="store_true")
    args = parser.parse_args(argv)
    extra = ("--front-end-root", str(args.front_end_root)) if args.front_end_root else ()
    workflows = sorted((REPO / "workflows").glob("*.json"))
    with tempfile.TemporaryDirectory(prefix="plic-frontend-") as tmp:
        with ComfyServer.prepared(Path(tmp), extra_args=extra) as server:
            if args.vue_nodes:
                server.post_json("/settings/Comfy.VueNodes.Enabled", True)
            if args.readout:
                compress = [REPO / "workflows" / "plic_compress.json"]
                print(json.dumps(asyncio.run(measure(server.url, compress, READOUT)), indent=1))
                return 0
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
