"""A .plic (or an image) from a stranger (issue 24): outputs stay inside the folder the user
named, every crafted file is refused in bounded time and memory with one line, and things that
are not files are never read. Crafted files are made here with the format's own writer."""

import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from conftest import REPO
from plic import cli, codec, fileformat, jbig2, safefs

#: Input names that must never lead an output out of -o: dots, dashes, separators' look-alikes
#: and control characters (a newline, an escape sequence).
ODD_STEMS = ["..", ".", "-rf", "a\nb", "x\x1b[2Jy", " ", "...."]


@pytest.fixture
def small_plic():
    """A real file of a small image with one kept region, as bytes."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[10:30, 20:50] = (200, 40, 40)
    mask = np.zeros((48, 64), bool)
    mask[12:20, 22:30] = True
    return fileformat.dumps(codec.encode_image(rgb, prompt="a red box", salient_mask=mask))


def tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("stem", ODD_STEMS)
def test_output_names_stay_in_their_folder(stem, tmp_path):
    name = safefs.output_name(stem)
    assert name and "/" not in name and all(c.isprintable() for c in name)
    assert name not in (".", "..")
    assert safefs.output_path(tmp_path, stem, ".plic").parent == tmp_path


def test_export_of_oddly_named_files_writes_only_inside_o(small_plic, tmp_path, capsys):
    """`...plic` (stem `..`) exported into parent/ and deleted a file there; `..plic` into -o
    itself."""
    sources = tmp_path / "sources"
    sources.mkdir()
    for stem in ODD_STEMS[:4]:
        (sources / f"{stem}.plic").write_bytes(small_plic)
    parent = tmp_path / "parent"
    parent.mkdir()
    for name in ("prompt.txt", "hint.png", "salient_000_1_1.png"):
        (parent / name).write_text("the user's")
    before = {p.name: p.read_text() for p in parent.iterdir()}
    for _ in range(2):  # the second run replaces what the first wrote, and only that
        assert cli.main(["export", str(sources), "-o", str(parent / "out"), "--overwrite"]) == 0
    assert {p.name: p.read_text() for p in parent.iterdir() if p.is_file()} == before
    out = parent / "out"
    assert sorted(p.name for p in out.iterdir()) == ["-rf", "_", "__", "a_b"]
    for folder in out.iterdir():
        assert "prompt.txt" in {p.name for p in folder.iterdir()}
    assert "\x1b" not in capsys.readouterr().out


def test_encode_and_decode_targets_of_odd_names(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for stem in ("..", "a\nb"):
        Image.new("RGB", (24, 16), "red").save(images / f"{stem}.png", format="PNG")
    assert cli.main(["encode", str(images), "-o", str(tmp_path / "out"), "--prompt", "x",
                     "--salient", "none"]) == 0
    assert tree(tmp_path / "out") == ["__.plic", "a_b.plic"]
    from plic.cli_decode import targets
    (tmp_path / "out" / "...plic").write_bytes((tmp_path / "out" / "__.plic").read_bytes())
    assert {t.parent for _, t in targets([tmp_path / "out"], tmp_path / "png")} == {tmp_path / "png"}


def test_a_listing_cannot_point_the_clean_up_at_other_files(small_plic, tmp_path):
    (tmp_path / "a.plic").write_bytes(small_plic)
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "keep.txt").write_text("mine")
    (out / "notes.txt").write_text("mine")
    (out / "salient_007_1_1.png").write_text("mine: not listed by an export")
    (out / ".plic-export.json").write_text('["../keep.txt", "notes.txt", "/etc/passwd"]')
    assert cli.main(["export", str(tmp_path / "a.plic"), "-o", str(out), "--overwrite"]) == 0
    assert (tmp_path / "keep.txt").exists() and (out / "notes.txt").exists()
    assert (out / "salient_007_1_1.png").exists()


def test_an_export_that_fills_the_disk_leaves_no_part(small_plic, tmp_path):
    """A full disk left 2 of 7 parts and the rerun refused "already exists". The export runs
    with a file size limit (RLIMIT_FSIZE) that the larger parts exceed, so their writes fail
    as on a full disk."""
    (tmp_path / "a.plic").write_bytes(small_plic)
    out = tmp_path / "out"
    limit = ("import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
             "resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))")
    command = [sys.executable, "-c", f"{limit}; import runpy; runpy.run_module('plic', run_name='__main__')",
               "export", tmp_path / "a.plic", "-o", out]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert result.stderr.startswith(f"plic: {out}/") and "File too large" in result.stderr
    assert result.stderr.count("\n") == 1
    assert list(out.iterdir()) == []  # no part, no temporary file
    assert cli.main(["export", str(tmp_path / "a.plic"), "-o", str(out)]) == 0  # no "already exists"


def test_a_rename_that_fails_takes_back_the_new_parts(small_plic, tmp_path, capsys):
    (tmp_path / "a.plic").write_bytes(small_plic)
    out = tmp_path / "out"
    out.mkdir()
    (out / "hint.png").mkdir()  # a folder where a part goes: its rename fails
    assert cli.main(["export", str(tmp_path / "a.plic"), "-o", str(out), "--overwrite"]) == 1
    assert "hint.png" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["hint.png"]
