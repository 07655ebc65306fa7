"""Missing optional packages give an error that says what to install and how."""

import sys

import pytest

from plic.deps import require
from plic.errors import MissingDependencyError


def test_missing_package_names_the_pip_command():
    with pytest.raises(MissingDependencyError) as info:
        require("plic_no_such_module", package="plic-no-such", purpose="Testing")
    message = str(info.value)
    assert message.startswith("Testing needs the Python package 'plic-no-such', which is not installed")
    assert message.endswith("pip install plic-no-such")


def test_grounding_dino_hint_installs_it_without_its_pinned_dependencies(monkeypatch):
    from plic.salient import grounded_sam

    monkeypatch.setitem(sys.modules, "groundingdino", None)  # as if it were not installed
    with pytest.raises(MissingDependencyError, match="pip install addict yapf timm && pip install "
                                                     "--no-deps --no-build-isolation groundingdino-py$"):
        grounded_sam._import_groundingdino()
