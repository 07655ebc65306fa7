"""The web extension: every .js file parses, and its logic module passes its node unit tests."""

import inspect
import re
import subprocess

import pytest

from conftest import require_tool
from tests.support.images import REPO

WEB_FILES = sorted((REPO / "web").glob("*.js"))
JS_TESTS = sorted((REPO / "tests" / "js").glob("*.test.mjs"))


@pytest.fixture(scope="module")
def node():
    return require_tool("node", "nodejs")


def test_the_extension_ships_its_files():
    assert {p.name for p in WEB_FILES} >= {"plic.js", "plic_format.js"}
    assert JS_TESTS


@pytest.mark.parametrize("path", WEB_FILES + JS_TESTS, ids=lambda p: p.name)
def test_javascript_parses(node, path):
    result = subprocess.run([node, "--check", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_logic_module_unit_tests(node):
    result = subprocess.run([node, "--test", *map(str, JS_TESTS)], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "# fail 0" in result.stdout and "# pass 0" not in result.stdout


def test_the_extension_imports_comfyui_the_usual_way():
    source = (REPO / "web" / "plic.js").read_text()
    assert 'from "../../scripts/app.js"' in source
    assert "./plic_format.js" in source


def _js_names(constant: str) -> list[str]:
    """The node class names a constant of web/plic_format.js lists (an array or one string)."""
    source = (REPO / "web" / "plic_format.js").read_text()
    match = re.search(rf"export const {constant} = (\[[^\]]*\]|\"[^\"]*\");", source)
    assert match, f"{constant} not found in plic_format.js"
    return re.findall(r'"([^"]+)"', match.group(1))


def test_the_extension_names_real_node_classes():
    from nodes import NODE_CLASS_MAPPINGS

    readout, upload = _js_names("READOUT_NODES"), _js_names("UPLOAD_NODE")
    assert set(readout + upload) <= set(NODE_CLASS_MAPPINGS), "a name the editor never sees"
    # a node's readout is text or a saved .plic's figures; images ComfyUI shows itself
    shows_readout = {name for name, cls in NODE_CLASS_MAPPINGS.items()
                     if re.search(r'\{"ui": \{"(text|plic)"', inspect.getsource(getattr(cls, cls.FUNCTION)))}
    assert shows_readout == set(readout)


def test_the_extension_uses_only_the_frontends_public_api():
    """scripts/widgets.js is internal (the newest frontend warns on import) and widget.inputEl is
    deprecated for widget.element; the readout shows a label, not its internal name."""
    source = (REPO / "web" / "plic.js").read_text()
    assert "scripts/widgets.js" not in source and "inputEl" not in source
    assert "addDOMWidget" in source and "widget.label = READOUT_LABEL" in source
