"""Where the nodes, groups and links of a UI workflow (workflows/*.json) lie on the canvas, as
ComfyUI's classic canvas (frontend 1.27 and on) draws them, and the layout of the shipped
templates: left to right, in titled groups, each readable on a 1920x1080 screen, no link
behind a node.

  python scripts/workflow_layout.py            lay out the templates LAYOUTS names, then check
  python scripts/workflow_layout.py --check    only check every workflows/*.json

The geometry (slot positions, link splines) is LiteGraph's, measured in the real frontend with
scripts/frontend_node_sizes.py --check, which applies the same checks to what it draws.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TITLE = 30  # the title bar above a node's pos
TALL = 1.3  # Nodes 2.0 nodes are taller than the classic canvas draws them
SLOT = 20  # LiteGraph's NODE_SLOT_HEIGHT: one input/output row
WIDGET = 24  # one widget row
GROUP_TITLE = 50  # a group's title bar and the room under it
PAD = 30  # between a group's edge and its nodes, and between columns
GAP = 60  # between groups
#: A 1920x1080 screen less the editor's menus and tabs; a group drawn at READABLE zoom or more
#: fits there.
SCREEN = (1920, 960)
READABLE = 0.8
#: Nodes that are comments, not steps: in no group.
NOTES = {"Note", "MarkdownNote"}

#: The templates' layouts: bands left to right, each a stack of groups, each group (title,
#: colour, columns of node ids top to bottom; see lay_out).
LAYOUTS = {
    "plic_compress.json": [
        [("Load", "#3f789e", [[1]])],
        [("Describe: the prompt", "#8a6a3f", [[2]]),
         ("Describe: edges and colours", "#8a6a3f", [[3, 4]]),
         ("Describe: salient regions (kept exactly)", "#8a6a3f", [[9]])],
        [("Pack", "#6a4f8a", [[7]]), ("What is packed", "#444444", [[5, 6, 10]])],
        [("Save", "#3f8a5a", [[8]])],
    ],
    # The decoders' sources (models at the top, the .plic's parts under them) feed nodes far to
    # their right: each node sits below the links that pass over it to a later one, so that the
    # chain from the prompts to the saved image climbs from the bottom left to the top right.
    "plic_decompress.json": [
        [("Load the .plic", "#3f789e", [[(1, 790)], [(2, 540), 3]])],
        [("Models", "#555555", [[4, 7, 8]])],
        [("Conditioning", "#8a6a3f", [[(5, 1810)], [(6, 1420)], [(9, 1800)], [(10, 1340)], [(11, 1180)]])],
        [("Sample", "#6a4f8a", [[(12, 1030)], [(13, 690)]])],
        [("Restore the salient pixels", "#3f8a5a", [[14], [(15, 320)], [(16, 540)], [(17, 60)]])],
        [("Evaluate (optional)", "#666666", [[19], [(20, 380)], [21]])],
    ],
    # as plic_decompress.json, all but the models 240 lower: the LoRA's row
    "plic_decompress_fast.json": [
        [("Load the .plic", "#3f789e", [[(1, 1030)], [(2, 780), 3]])],
        [("Models and the few-step LoRA", "#555555", [[4, 22, 7, 8]])],
        [("Conditioning", "#8a6a3f", [[(5, 2050)], [(6, 1660)], [(9, 2040)], [(10, 1580)], [(11, 1420)]])],
        [("Sample (few steps)", "#6a4f8a", [[(12, 1270)], [(13, 930)]])],
        [("Restore the salient pixels", "#3f8a5a", [[(14, 240)], [(15, 560)], [(16, 780)], [(17, 300)]])],
        [("Evaluate (optional)", "#666666", [[(19, 240)], [(20, 620)], [(21, 240)]])],
    ],
    "plic_decompress_reference.json": [
        [("Load the .plic", "#3f789e", [[1]]), ("The reference pipeline", "#555555", [[2]])],
        [("Reconstruct", "#6a4f8a", [[(3, 200)]])],
        [("Evaluate (optional)", "#666666", [[(5, 300)], [6], [7]]), ("Save", "#3f8a5a", [[4]])],
    ],
}


def box(node: dict, tall: float = 1.0) -> tuple[float, float, float, float]:
    """(x, y, w, h) of a node with its title bar; ``tall`` stretches it as Nodes 2.0 does."""
    x, y = node["pos"]
    w, h = node["size"]
    return x, y - TITLE, w, (h + TITLE) * tall


def inside(inner: tuple, outer: tuple) -> bool:
    ix, iy, iw, ih = inner
    ox, oy, ow, oh = outer
    return ox <= ix and oy <= iy and ix + iw <= ox + ow and iy + ih <= oy + oh


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


def slot_positions(node: dict, widget_order: list[str]) -> tuple[list, list]:
    """Canvas points of a node's input and output slots: outputs and plain inputs one SLOT row
    each from the top, an input that replaces a widget beside that widget (``widget_order``:
    the node's widget names in order)."""
    x, y = node["pos"]
    w = node["size"][0]
    plain = [i for i in node.get("inputs", []) if "widget" not in i]
    rows = max(len(plain), len(node.get("outputs", [])))
    inputs = []
    for slot in node.get("inputs", []):
        if "widget" in slot:
            name = slot["widget"]["name"]
            row = widget_order.index(name) if name in widget_order else 0
            inputs.append((x + 10, y + 16 + SLOT * rows + WIDGET * row))
        else:
            inputs.append((x + 10, y + 14 + SLOT * plain.index(slot)))
    outputs = [(x + w - 9, y + 14 + SLOT * j) for j in range(len(node.get("outputs", [])))]
    return inputs, outputs


def spline(start: tuple, end: tuple, points: int = 48) -> list[tuple[float, float]]:
    """LiteGraph's link spline from an output to an input: a cubic Bezier whose handles point
    right from the output and left into the input, a quarter of the distance long."""
    (ax, ay), (bx, by) = start, end
    handle = 0.25 * ((bx - ax) ** 2 + (by - ay) ** 2) ** 0.5
    c1, c2 = (ax + handle, ay), (bx - handle, by)
    out = []
    for i in range(points + 1):
        t = i / points
        u = 1 - t
        out.append((u ** 3 * ax + 3 * u * u * t * c1[0] + 3 * u * t * t * c2[0] + t ** 3 * bx,
                    u ** 3 * ay + 3 * u * u * t * c1[1] + 3 * u * t * t * c2[1] + t ** 3 * by))
    return out


def link_paths(workflow: dict, widget_orders: dict[str, list[str]]) -> list[dict]:
    """Every link as {id, from, to (node ids), path (points)}."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    slots = {n["id"]: slot_positions(n, widget_orders.get(n["type"], [])) for n in workflow["nodes"]}
    paths = []
    for link_id, source, source_slot, target, target_slot, _type in workflow["links"]:
        target_inputs = nodes[target].get("inputs", [])
        index = next((i for i, slot in enumerate(target_inputs) if slot.get("link") == link_id), target_slot)
        paths.append({"id": link_id, "from": source, "to": target,
                      "path": spline(slots[source][1][source_slot], slots[target][0][index])})
    return paths


def links_behind_nodes(workflow: dict, paths: list[dict]) -> list[str]:
    """Links that run behind a node other than their two ends."""
    found = []
    for link in paths:
        for node in workflow["nodes"]:
            if node["id"] in (link["from"], link["to"]):
                continue
            x, y, w, h = box(node)
            if any(x < px < x + w and y < py < y + h for px, py in link["path"]):
                found.append(f"link {link['id']} ({link['from']} -> {link['to']}) runs behind "
                             f"node {node['id']} {node.get('title') or node['type']}")
    return found


def group_problems(workflow: dict) -> list[str]:
    """Each node (notes aside) inside exactly one titled group, tall as Nodes 2.0 draws it; each
    group readable at READABLE zoom on SCREEN; no two groups overlapping."""
    groups = workflow.get("groups", [])
    problems = []
    if not groups:
        return ["no groups"]
    for group in groups:
        _, _, w, h = group["bounding"]
        zoom = min(SCREEN[0] / w, SCREEN[1] / h)
        if not group.get("title"):
            problems.append(f"a group at {group['bounding']} has no title")
        if zoom < READABLE:
            problems.append(f"group {group.get('title')!r} ({w}x{h}) fits {SCREEN[0]}x{SCREEN[1]} "
                            f"only at zoom {zoom:.2f} (< {READABLE})")
    for node in workflow["nodes"]:
        if node["type"] in NOTES:
            continue
        holders = [g.get("title") for g in groups if inside(box(node, TALL), g["bounding"])]
        if len(holders) != 1:
            problems.append(f"node {node['id']} {node.get('title') or node['type']} is in "
                            f"{len(holders)} groups {holders}")
    named = [{"id": g.get("title"), "type": "group", "box": g["bounding"]} for g in groups]
    problems += [f"groups {a} and {b} overlap" for a, b in overlaps(named)]
    return problems


def lay_out(workflow: dict, bands: list[list[tuple[str, str, list[list]]]]) -> None:
    """Place ``bands`` left to right, each a stack of groups top to bottom, each group a row of
    columns of nodes stacked top to bottom (room left for Nodes 2.0's taller nodes), and set
    the workflow's groups to them. A column names a node by its id, or as (id, space) with
    ``space`` px more above it: a lane for the links that pass (above the first nodes of all its
    columns, it moves the group down). Notes go under everything."""
    nodes = {n["id"]: n for n in workflow["nodes"]}
    placed = [_item(n)[0] for band in bands for group in band for column in group[2] for n in column]
    if sorted(placed) != sorted(n["id"] for n in workflow["nodes"] if n["type"] not in NOTES):
        raise ValueError("the layout does not name every node once")
    workflow["groups"] = []
    left = 0
    for band in bands:
        top, right = 0, left
        for title, colour, columns in band:
            x, bottom = left + PAD, top
            for column in columns:
                y = top + GROUP_TITLE + TITLE
                for node_id, space in map(_item, column):
                    node = nodes[node_id]
                    node["pos"] = [x, y + space]
                    y += space + round(box(node, TALL)[3]) + PAD
                bottom = max(bottom, y)
                x += max(nodes[_item(n)[0]]["size"][0] for n in column) + PAD
            # the group starts above its highest node: space before every column moves it down
            start = min(nodes[_item(n)[0]]["pos"][1] for column in columns for n in column) - TITLE - GROUP_TITLE
            workflow["groups"].append({"id": len(workflow["groups"]) + 1, "title": title,
                                       "bounding": [left, start, x - left, bottom - start],
                                       "color": colour, "font_size": 24, "flags": {}})
            top, right = bottom + GAP, max(right, x)
        left = right + GAP
    below = max(g["bounding"][1] + g["bounding"][3] for g in workflow["groups"]) + GAP + TITLE
    for node in workflow["nodes"]:
        if node["type"] in NOTES:
            node["pos"] = [0, below]
            below += node["size"][1] + GAP + TITLE


def _item(entry) -> tuple[int, int]:
    return tuple(entry) if isinstance(entry, (list, tuple)) else (entry, 0)


def node_overlaps(workflow: dict) -> list[str]:
    """Nodes that overlap, drawn as tall as Nodes 2.0 draws them."""
    boxes = [{"id": n["id"], "type": n["type"], "box": box(n, TALL)} for n in workflow["nodes"]]
    return [f"nodes {a} and {b} overlap" for a, b in overlaps(boxes)]


def problems(workflow: dict, widget_orders: dict[str, list[str]]) -> list[str]:
    """Everything the layout rules find wrong with ``workflow`` (empty when none)."""
    found = node_overlaps(workflow) + group_problems(workflow)
    found += links_behind_nodes(workflow, link_paths(workflow, widget_orders))
    return found


def widget_orders() -> dict[str, list[str]]:
    """Each node class's widget names in the editor's order (ComfyUI's schemas and ours)."""
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    import nodes
    from tests.support.workflow_schema import load_schemas, widget_slots

    schemas = load_schemas(REPO / "tests" / "data" / "comfyui_object_info.json", nodes.NODE_CLASS_MAPPINGS)
    return {name: [slot[0] for slot in widget_slots(schema)] for name, schema in schemas.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check, change nothing")
    args = parser.parse_args(argv)
    orders = widget_orders()
    failed = 0
    for path in sorted((REPO / "workflows").glob("*.json")):
        workflow = json.loads(path.read_text())
        if not args.check and path.name in LAYOUTS:
            lay_out(workflow, LAYOUTS[path.name])
            path.write_text(json.dumps(workflow, indent=2) + "\n")
        found = problems(workflow, orders)
        print(f"{path.name}: {'ok' if not found else ''}")
        for problem in found:
            print(f"  {problem}")
        failed += bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
