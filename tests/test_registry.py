"""The pack as the Comfy Registry and ComfyUI-Manager see it: pyproject.toml's [tool.comfy]
and `comfy node validate` (comfy-cli, which scripts/setup.sh's full mode installs)."""

import os
import subprocess
import sys
import urllib.parse
import xml.etree.ElementTree as ET

import tomllib

from tests.support.images import REPO


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_the_icon_is_a_square_svg_of_the_repository_at_most_400_px():
    """The registry shows the Icon URL; it names a file of this repository's main branch."""
    data = _pyproject()
    owner_name = urllib.parse.urlparse(data["project"]["urls"]["Repository"]).path
    prefix = f"https://raw.githubusercontent.com{owner_name}/main/"
    icon = data["tool"]["comfy"]["Icon"]
    assert icon.startswith(prefix), icon
    svg = ET.parse(REPO / icon[len(prefix):]).getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    assert svg.get("width") == svg.get("height") and int(svg.get("width")) <= 400
    assert svg.get("viewBox") == f"0 0 {svg.get('width')} {svg.get('height')}"


def test_comfy_node_validate_passes_with_no_security_warning():
    result = subprocess.run([sys.executable, "-m", "comfy_cli", "--skip-prompt", "node", "validate"],
                            cwd=REPO, env={**os.environ, "DO_NOT_TRACK": "1"}, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=300)
    said = result.stdout + result.stderr  # comfy-cli prints its verdict on stderr without a terminal
    assert result.returncode == 0 and "All validation checks passed" in said, said
