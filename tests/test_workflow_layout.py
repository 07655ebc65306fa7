"""The shipped UI workflows are laid out to be read (scripts/workflow_layout.py): left to right
in titled groups, each group readable on a 1920x1080 screen, every node inside its group, no
two nodes overlapping even drawn as Nodes 2.0 draws them (taller), and no link running behind
a node. The saved sizes are what ComfyUI's frontends (1.27.10 and 1.58.1) gave each node,
measured with scripts/frontend_node_sizes.py; re-measure there after adding or widening a node,
then run scripts/workflow_layout.py."""

import copy
import json

import pytest

from scripts import workflow_layout as layout
from tests.support.images import REPO

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))


@pytest.fixture(scope="module")
def widget_orders():
    return layout.widget_orders()


def _compress() -> dict:
    return json.loads((REPO / "workflows" / "plic_compress.json").read_text())


def _node(workflow, node_type):
    return next(n for n in workflow["nodes"] if n["type"] == node_type)


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_groups_are_readable_and_no_nodes_overlap(path):
    workflow = json.loads(path.read_text())
    assert layout.node_overlaps(workflow) + layout.group_problems(workflow) == []


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_no_link_runs_behind_a_node(path, widget_orders):
    workflow = json.loads(path.read_text())
    assert layout.links_behind_nodes(workflow, layout.link_paths(workflow, widget_orders)) == []


def test_the_layout_script_lays_out_the_templates_as_shipped(widget_orders):
    for name, bands in layout.LAYOUTS.items():
        shipped = json.loads((REPO / "workflows" / name).read_text())
        again = copy.deepcopy(shipped)
        layout.lay_out(again, bands)
        assert again == shipped, f"run scripts/workflow_layout.py: {name} is not laid out as LAYOUTS says"


def test_the_check_sees_an_overlap():
    workflow = _compress()
    first, second = workflow["nodes"][:2]
    second["pos"] = [first["pos"][0] + 10, first["pos"][1] + 10]
    assert layout.node_overlaps(workflow) != []


def test_the_check_sees_a_link_behind_a_node(widget_orders):
    """The issue's case: PLIC Palette between PLIC Caption and PLIC Pack."""
    workflow = _compress()
    caption, pack, palette = (_node(workflow, t) for t in ("PlicCaption", "PlicPack", "PlicPalette"))
    pack["pos"] = [caption["pos"][0] + 900, caption["pos"][1]]
    palette["pos"] = [caption["pos"][0] + 450, caption["pos"][1]]
    found = layout.links_behind_nodes(workflow, layout.link_paths(workflow, widget_orders))
    assert any(f"({caption['id']} -> {pack['id']}) runs behind node {palette['id']}" in p for p in found)


def test_the_check_sees_a_node_outside_its_group_and_an_unreadable_group():
    workflow = _compress()
    _node(workflow, "PlicSave")["pos"][0] += 5000
    workflow["groups"][0]["bounding"][3] = 3000
    found = layout.group_problems(workflow)
    assert any("PlicSave is in 0 groups" in p for p in found)
    assert any("only at zoom" in p for p in found)
