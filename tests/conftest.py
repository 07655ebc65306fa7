"""Shared fixtures, and the two image sets (tests/support/images.py) as test parameters.

The core set lives in tests/data and makes the suite run from the repository alone. The
extended set is ../shared beside the repository (14 larger images, ComfyUI's full node
schemas): tests marked ``needs_shared`` use it and are skipped, with the reason, when it is
absent; with PLIC_REQUIRE_SHARED=1 (set by .ci/run) they fail instead.
"""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support.images import CORE_IMAGES, DATA, EXTENDED_IMAGES, SHARED, SHARED_PRESENT

REQUIRE_SHARED = os.environ.get("PLIC_REQUIRE_SHARED") == "1"
SHARED_REASON = f"extended set: needs {SHARED} beside the repository (absent)"

needs_shared = pytest.mark.needs_shared


def _every_image():
    """Parameters over every image: the core set, then the extended set (one skipped
    placeholder when ../shared is absent, so the run lists what it left out)."""
    params = [pytest.param(name, id=name) for name in CORE_IMAGES]
    extended = EXTENDED_IMAGES if SHARED_PRESENT else ["shared-images"]
    return params + [pytest.param(name, id=name, marks=needs_shared) for name in extended]


EVERY_IMAGE = _every_image()


def pytest_runtest_setup(item):
    if item.get_closest_marker("needs_shared") and not SHARED_PRESENT:
        if REQUIRE_SHARED:
            pytest.fail(f"PLIC_REQUIRE_SHARED=1 but {SHARED_REASON}", pytrace=False)
        pytest.skip(SHARED_REASON)


def pytest_terminal_summary(terminalreporter):
    """Name each extended test left out, so a run without ../shared says what it did not do."""
    left_out = [report.nodeid for report in terminalreporter.stats.get("skipped", [])
                if SHARED_REASON in str(report.longrepr)]
    if left_out:
        terminalreporter.write_sep("-", f"{len(left_out)} extended tests skipped: {SHARED_REASON}")
        for nodeid in left_out:
            terminalreporter.write_line(nodeid)


def large_image() -> np.ndarray:
    """A real photograph larger than the 1024 px working size: coffee.png tiled 3 x 3 (1800x1200)."""
    from plic.image import load_rgb

    return np.tile(load_rgb(DATA / "coffee.png"), (3, 3, 1))


def rss_mb(pid: int | str = "self") -> float:
    """The resident memory (VmRSS, MB) of process ``pid``, this one by default (Linux's /proc)."""
    status = Path(f"/proc/{pid}/status")
    if not status.is_file():
        pytest.skip("memory is read from /proc/<pid>/status (Linux)")
    (line,) = [line for line in status.read_text().splitlines() if line.startswith("VmRSS:")]
    return int(line.split()[1]) / 1024


def require_tool(command: str, debian: str) -> str:
    """The path of an external program the test needs, or a failure saying what to install."""
    path = shutil.which(command)
    if path is None:
        pytest.fail(f"'{command}' is not installed: run `bash scripts/setup.sh` as root, or "
                    f"`apt-get install {debian}`", pytrace=False)
    return path


def read_pbm(raw: bytes) -> np.ndarray:
    """Parse a binary PBM (P4), as jbig2dec writes it, to a 0/1 array; 1 = black."""
    tokens, pos = [], 0
    while len(tokens) < 3:
        while raw[pos:pos + 1].isspace():
            pos += 1
        if raw[pos:pos + 1] == b"#":
            pos = raw.index(b"\n", pos)
            continue
        end = pos
        while not raw[end:end + 1].isspace():
            end += 1
        tokens.append(raw[pos:end])
        pos = end
    assert tokens[0] == b"P4"
    width, height = int(tokens[1]), int(tokens[2])
    pos += 1  # the single whitespace byte
    row_bytes = (width + 7) // 8
    data = np.frombuffer(raw[pos:pos + row_bytes * height], dtype=np.uint8)
    return np.unpackbits(data.reshape(height, row_bytes), axis=1)[:, :width]
