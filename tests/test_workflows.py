"""Every shipped workflow (UI format in workflows/, API format in workflows/api/) is valid
against ComfyUI's real node schemas plus ours; and the validator catches what it should."""

import copy
import json

import pytest

from conftest import needs_shared
from tests.support.images import OBJECT_INFO, REPO, SHARED_OBJECT_INFO
from tests.support.workflow_schema import load_schemas, trim, validate_api, validate_ui

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))


@pytest.fixture(scope="module")
def schemas():
    import nodes

    return load_schemas(OBJECT_INFO, nodes.NODE_CLASS_MAPPINGS)


@needs_shared
def test_the_trimmed_schemas_are_comfyuis_own_and_cover_every_workflow():
    """tests/data holds ComfyUI's schemas for exactly the classes the workflows and tests use;
    refresh it with `python tests/support/workflow_schema.py ../shared/comfyui/object_info.json
    tests/data/comfyui_object_info.json` when a workflow starts using another ComfyUI node."""
    workflows = [json.loads(p.read_text()) for p in UI_WORKFLOWS + API_WORKFLOWS]
    expected = trim(json.loads(SHARED_OBJECT_INFO.read_text()), workflows)
    assert json.loads(OBJECT_INFO.read_text()) == expected


def test_the_compress_workflow_ships_in_both_formats():
    assert REPO / "workflows" / "plic_compress.json" in UI_WORKFLOWS
    assert REPO / "workflows" / "api" / "plic_compress.json" in API_WORKFLOWS


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_is_valid(path, schemas):
    assert validate_ui(json.loads(path.read_text()), schemas) == []


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.name)
def test_api_workflow_is_valid(path, schemas):
    assert validate_api(json.loads(path.read_text()), schemas) == []


def _compress(api: bool) -> dict:
    folder = REPO / "workflows" / ("api" if api else "")
    return json.loads((folder / "plic_compress.json").read_text())


def _ui_node(workflow, node_type):
    return next(n for n in workflow["nodes"] if n["type"] == node_type)


def test_ui_validator_reports_a_link_between_mismatched_types(schemas):
    workflow = _compress(api=False)
    link = next(l for l in workflow["links"] if l[5] == "PLIC_PALETTE")
    pack = _ui_node(workflow, "PlicPack")
    edges_slot = next(i for i, inp in enumerate(pack["inputs"]) if inp["name"] == "edges")
    palette_slot = link[4]
    pack["inputs"][palette_slot]["link"] = None
    pack["inputs"][edges_slot]["link"] = link[0]
    link[4] = edges_slot
    problems = validate_ui(workflow, schemas)
    assert any("PLIC_PALETTE" in p and "edges" in p for p in problems)
    assert any("'palette' is not connected" in p for p in problems)


@pytest.mark.parametrize("values, needle", [
    ([1024, 100, 2000], "outside 0..1000"),
    ([1024, 100], "2 widget values"),
    ([1024.5, 100, 200], "is not an INT"),
])
def test_ui_validator_reports_bad_widget_values(schemas, values, needle):
    workflow = _compress(api=False)
    _ui_node(workflow, "PlicCannyEdges")["widgets_values"] = values
    assert any(needle in p for p in validate_ui(workflow, schemas))


def test_ui_validator_reports_unknown_nodes_and_combo_values(schemas):
    workflow = _compress(api=False)
    _ui_node(workflow, "PlicSave")["type"] = "PlicNoSuchNode"
    _ui_node(workflow, "LoadImage")["widgets_values"] = ["missing.png", "image"]
    problems = validate_ui(workflow, schemas)
    assert any("PlicNoSuchNode" in p and "no such node type" in p for p in problems)
    assert any("'missing.png' is not one of" in p for p in problems)


def _ksampler(widgets):
    """A UI node of ComfyUI's KSampler; its seed carries a control_after_generate value."""
    return {"nodes": [{"id": 1, "type": "KSampler", "inputs": [], "outputs": [],
                       "widgets_values": widgets}], "links": []}


def test_ui_validator_knows_control_after_generate_and_model_lists(schemas):
    good = [786, "randomize", 20, 7.5, "euler", "normal", 1.0]
    problems = validate_ui(_ksampler(good), schemas)
    assert problems and all("is not connected" in p for p in problems)  # widgets are fine
    bad = [786, "sometimes", 20, 7.5, "euler", "normal", 1.0]
    assert any("'sometimes'" in p for p in validate_ui(_ksampler(bad), schemas))
    checkpoint = {"nodes": [{"id": 1, "type": "CheckpointLoaderSimple", "inputs": [], "outputs": [],
                             "widgets_values": ["any-model.safetensors"]}], "links": []}
    assert validate_ui(checkpoint, schemas) == []  # no models installed: any file name


def test_api_validator_reports_bad_links_and_missing_inputs(schemas):
    prompt = _compress(api=True)
    prompt["7"]["inputs"]["edges"] = ["4", 0]  # a palette into the edges input
    del prompt["8"]["inputs"]["filename_prefix"]
    prompt["3"]["inputs"]["max_side"] = 8
    problems = validate_api(prompt, schemas)
    assert any("PLIC_PALETTE from node 4" in p for p in problems)
    assert any("'filename_prefix' is missing" in p for p in problems)
    assert any("outside 16..16384" in p for p in problems)


def test_api_validator_reports_links_to_missing_nodes_and_unknown_inputs(schemas):
    prompt = copy.deepcopy(_compress(api=True))
    prompt["7"]["inputs"]["palette"] = ["99", 0]
    prompt["8"]["inputs"]["overwrite"] = True
    problems = validate_api(prompt, schemas)
    assert any("missing node 99" in p for p in problems)
    assert any("unknown input 'overwrite'" in p for p in problems)
