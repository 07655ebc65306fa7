"""No two nodes of a shipped UI workflow overlap, even drawn as Nodes 2.0 draws them (taller).
The saved sizes are what ComfyUI's frontends (1.27.10 and 1.58.1) gave each node, measured with
scripts/frontend_node_sizes.py; re-measure there after adding or widening a node."""

import json

import pytest

from conftest import REPO
from scripts.frontend_node_sizes import overlaps

TITLE = 30  # the title bar above a node's pos
TALL = 1.3  # Nodes 2.0 nodes are taller than the classic canvas draws them
UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


def boxes(workflow: dict) -> list[dict]:
    return [{"id": n["id"], "type": n["type"],
             "box": (n["pos"][0], n["pos"][1] - TITLE, n["size"][0], (n["size"][1] + TITLE) * TALL)}
            for n in workflow["nodes"]]


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_no_nodes_overlap(path):
    assert overlaps(boxes(json.loads(path.read_text()))) == []


def test_the_check_sees_an_overlap():
    workflow = json.loads((REPO / "workflows" / "plic_compress.json").read_text())
    first, second = workflow["nodes"][:2]
    second["pos"] = [first["pos"][0] + 10, first["pos"][1] + 10]
    assert overlaps(boxes(workflow)) != []
