"""The pack where a user meets it: ComfyUI 0.3.64's real frontend (the comfyui-frontend-package
the venv has, 1.27.10) in headless Chromium, driven by scripts/frontend_node_sizes.py's check():
each template drawn at fit-to-view (a screenshot of each) has every node inside its group and no
link drawn through a node; the compress template's readouts are on screen after it runs, after
a switch to another workflow tab and back, after a rerun that ComfyUI's cache skips, and after
a rerun with only the prompt changed.

Extended set: needs ../shared (ComfyUI's source) and the chromium program."""

from __future__ import annotations

import json

import pytest

from conftest import REQUIRE_SHARED, require_tool
from scripts.comfy_server import COMFYUI
from tests.support.images import REPO

if not (COMFYUI / "main.py").is_file():
    _MISSING = f"{COMFYUI} is missing: the real-frontend tests need the repository beside shared/"
    if REQUIRE_SHARED:
        pytest.fail(f"PLIC_REQUIRE_SHARED=1 but {_MISSING}", pytrace=False)
    pytest.skip(_MISSING, allow_module_level=True)

TEMPLATES = sorted(p.name for p in (REPO / "workflows").glob("*.json"))
READOUT_NODES = ("PlicPack", "PlicSave", "PlicSalientRegions")


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    require_tool("chromium", "chromium")
    from scripts.frontend_node_sizes import check

    shots = tmp_path_factory.mktemp("screenshots")
    return check(screenshots=shots), shots


@pytest.mark.parametrize("name", TEMPLATES)
def test_each_template_at_fit_to_view_has_every_node_in_its_group(drawn, name):
    from PIL import Image

    results, shots = drawn
    layout = results["layout"][name]
    with Image.open(shots / name.replace(".json", ".png")) as shot:
        assert shot.width == 1920
    assert layout["groups"] and layout["outside"] == [] and layout["undrawn"] == []


@pytest.mark.parametrize("name", TEMPLATES)
def test_no_link_is_drawn_through_a_node(drawn, name):
    behind = drawn[0]["layout"][name]["behind"]
    assert behind == [], json.dumps(behind, indent=1)


@pytest.mark.parametrize("moment", ["run", "tab_switch", "cached_rerun", "prompt_changed"])
def test_readouts_stay_on_screen(drawn, moment):
    readouts = drawn[0]["readouts"][moment]
    for node in READOUT_NODES:
        shown = readouts[node]
        assert shown and shown["shown"] and shown["label"] == "report" and shown["text"], (node, shown)
        assert shown["font"] == "12px" and shown["opacity"] == "1"
    assert readouts["PlicSave"]["text"].startswith("PLIC_0000")
    assert "kept 1 face" in readouts["PlicSalientRegions"]["text"]
    assert readouts["PlicCaption"] is None  # its manual text box already shows the prompt
