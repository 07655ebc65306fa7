"""The command line on damaged and crafted files, and its manners at a terminal (issue 11)."""

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from plic.cli import main as cli
from plic.codec import fileformat, pack
from tests.support.images import REPO


def run_plic(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "plic", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, **kwargs)


@pytest.fixture
def small_plic(tmp_path):
    """A real .plic file of a small synthetic image, with a prompt."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[10:30, 20:50] = (200, 40, 40)
    path = tmp_path / "small.plic"
    fileformat.save(pack.encode_image(rgb, prompt="a red box"), path)
    return path


def test_info_checks_the_payloads_and_names_the_section(small_plic, capsys):
    """Item 10: info exited 0 on a file whose palette export and preview reject, and the error
    read "cannot identify image file <_io.BytesIO object at 0x...>"."""
    plic = fileformat.load(small_plic)
    plic.palette = b"not an image at all"
    fileformat.save(plic, small_plic, overwrite=True)
    for command in (["info"], ["info", "--json"], ["export", "-o", str(small_plic.parent / "parts")]):
        assert cli.main([command[0], str(small_plic), *command[1:]]) == 1
        err = capsys.readouterr().err
        assert err == (f"plic: {small_plic}: not a valid .plic file: section palette (PALT): holds no "
                       "image PLIC can read\n")
    assert cli.main(["info", "--no-check", str(small_plic)]) == 0


def test_info_escapes_control_characters_in_the_prompt(small_plic, capsys):
    """Item 11: a prompt's ANSI escapes reached the terminal raw."""
    plic = fileformat.load(small_plic)
    plic.prompt = "red \x1b[2J\x1b]0;owned\x07 box \u202e"
    fileformat.save(plic, small_plic, overwrite=True)
    assert cli.main(["info", str(small_plic)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out
    assert "  prompt: red \\x1b[2J\\x1b]0;owned\\x07 box \\u202e\n" in out


def test_a_closed_pipe_ends_info_quietly(small_plic):
    """Item 12: `plic info F | head` ended in a BrokenPipeError traceback."""
    process = subprocess.Popen([sys.executable, "-m", "plic", "info", str(small_plic)], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()  # the reader is gone before anything is written
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == 1
    assert err == ""


def test_ctrl_c_while_the_command_line_loads_prints_one_line():
    """Item 12: a Ctrl-C during start-up printed a traceback. The interrupt is raised where
    Python's SIGINT handler would raise it, inside an import of plic.cli.main, every time (a real
    signal sent from here raced the start-up and sometimes came after it)."""
    code = ("import importlib.abc, sys\n"
            "class CtrlC(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'plic.batch':\n"
            "            raise KeyboardInterrupt\n"
            "sys.meta_path.insert(0, CtrlC())\n"
            "from plic.__main__ import run\n"
            "sys.exit(run())\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 130
    assert result.stderr == "plic: interrupted\n" and result.stdout == ""


def test_library_warnings_are_one_line_without_their_source(tmp_path, capsys, monkeypatch):
    """Item 12: PIL's DecompressionBombWarning added two lines pointing into site-packages."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1100)  # PIL's own setting: warn above 1100 px
    Image.new("RGB", (40, 40), "white").save(tmp_path / "big.png")
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        assert cli.main(["encode", str(tmp_path / "big.png"), "-o", str(tmp_path), "--salient", "none"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("plic: warning: Image size (1600 pixels) exceeds limit of 1100 pixels")
    assert err.count("\n") == 1 and "site-packages" not in err


def test_a_header_only_file_declaring_a_huge_image_is_refused_cheaply(tmp_path):
    """Item 9: preview took 3.5 GB on a 32-byte file declaring 16384x16384."""
    import struct
    import zlib

    header = fileformat.HEADER.pack(fileformat.MAGIC, 1, 0, 0, 16384, 16384, 16384, 16384)
    (tmp_path / "huge.plic").write_bytes(header + struct.pack(">I", zlib.crc32(header)))
    limit = "import resource; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))"
    for command in (["preview", "-o", tmp_path / "p.png"], ["export", "-o", tmp_path / "parts"]):
        result = subprocess.run([sys.executable, "-c", f"{limit}; import runpy; "
                                 "runpy.run_module('plic', run_name='__main__')", command[0],
                                 tmp_path / "huge.plic", *command[1:]],
                                cwd=REPO, capture_output=True, text=True, timeout=120)
        assert result.returncode == 1
        assert "working size 16384x16384 is more than the 16777216 pixels allowed" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.plic"]


def test_the_command_line_loads_without_numba():
    """`plic --help` spent ~270 ms importing numba, which only the JBIG2 coder needs."""
    code = "import sys, plic.cli.main; assert 'numba' not in sys.modules, 'numba imported'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_what_encode_says_is_right(tmp_path, capsys):
    """Small things: "0.7x smaller" for a larger file, an animated GIF silently cut to its
    first frame, "-o" naming a file, doc markup in --help."""
    frames = [Image.new("RGB", (24, 16), colour) for colour in ("red", "blue")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    assert cli.main(["encode", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "out"),
                     "--prompt", "a red flag", "--salient", "none"]) == 0
    captured = capsys.readouterr()
    assert "x larger than anim.gif" in captured.out and "x smaller than" not in captured.out
    assert captured.err == f"plic: warning: {tmp_path / 'anim.gif'}: has 2 frames; PLIC uses the first\n"
    assert cli.main(["encode", str(tmp_path / "anim.gif"), "-o", str(tmp_path / "anim.gif")]) == 1
    assert capsys.readouterr().err == (f"plic: {tmp_path / 'anim.gif'}: is a file; -o takes the folder "
                                       "the .plic files go to\n")
    assert "``" not in cli.build_parser().format_help()


def test_progress_is_shown_on_a_terminal(tmp_path):
    """Small things: a folder of many images printed no N/M count."""
    import os
    import pty

    for name, colour in (("a.png", "red"), ("b.png", "blue")):
        Image.new("RGB", (24, 16), colour).save(tmp_path / name)
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "plic", "encode", str(tmp_path), "-o",
                                str(tmp_path / "out"), "--prompt", "x", "--salient", "none"],
                               cwd=REPO, stdout=subprocess.DEVNULL, stderr=follower)
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    assert process.wait(timeout=120) == 0
    assert seen.decode().splitlines() == [f"[1/2] {tmp_path / 'a.png'}", f"[2/2] {tmp_path / 'b.png'}"]


def test_a_detector_that_cannot_run_is_noted_once(tmp_path):
    """Small things: every image repeated the note that text detection cannot run."""
    import os

    for name in ("a.png", "b.png", "c.png"):
        Image.new("RGB", (24, 16), "white").save(tmp_path / name)
    # a Tesseract program that is not there: PLIC then neither loads libtesseract nor finds one
    env = dict(os.environ, PATH=os.path.dirname(sys.executable), PLIC_TESSERACT=str(tmp_path / "no-tesseract"))
    result = run_plic("encode", tmp_path, "-o", tmp_path / "out", "--prompt", "x", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("text skipped: text detection needs the Tesseract program") == 1


def test_info_export_and_preview_take_several_files(tmp_path, capsys):
    """Small things: info, export and preview took one file; an --overwrite export into the
    folder of an earlier one left that file's salient regions behind."""
    rgb = np.zeros((48, 64, 3), np.uint8)
    rgb[10:30, 20:50] = (200, 40, 40)
    mask = np.zeros((48, 64), bool)
    mask[12:20, 22:30] = True
    fileformat.save(pack.encode_image(rgb, prompt="one", salient_mask=mask), tmp_path / "one.plic")
    fileformat.save(pack.encode_image(rgb, prompt="two"), tmp_path / "two.plic")
    files = [str(tmp_path / "one.plic"), str(tmp_path / "two.plic")]
    assert cli.main(["info", "--json", *files]) == 0
    assert [(i["file"], i["prompt"]) for i in json.loads(capsys.readouterr().out)] == [
        (files[0], "one"), (files[1], "two")]
    assert cli.main(["preview", *files, "-o", str(tmp_path / "previews")]) == 0
    assert sorted(p.name for p in (tmp_path / "previews").iterdir()) == ["one.png", "two.png"]
    assert cli.main(["export", *files, "-o", str(tmp_path / "parts")]) == 0
    assert any(p.name.startswith("salient_0") for p in (tmp_path / "parts" / "one").iterdir())
    assert not any(p.name.startswith("salient") for p in (tmp_path / "parts" / "two").iterdir())
    parts = tmp_path / "parts" / "one"
    (parts / "notes.txt").write_text("mine")
    assert cli.main(["export", files[1], "-o", str(parts), "--overwrite"]) == 0
    assert sorted(p.name for p in parts.iterdir()) == sorted(
        [".plic-export.json", "decode_settings.json", "edges.jb2", "edges.png", "hint.png", "notes.txt",
         "palette.webp", "prompt.txt"])


def test_encode_counts_the_salient_bytes_as_info_does(tmp_path, capsys):
    """Small things: encode reported 4420 B salient where info said 4396 (section headers)."""
    rgb = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "noise.png")
    mask = np.zeros((48, 64), np.uint8)
    mask[8:24, 8:40] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    assert cli.main(["encode", str(tmp_path / "noise.png"), "-o", str(tmp_path), "--prompt", "x",
                     "--salient", "none", "--salient-mask", str(tmp_path / "mask.png")]) == 0
    sizes = fileformat.load(tmp_path / "noise.plic").section_sizes()
    payload = sizes["salient_mask"] + sizes["salient_pixels"]
    assert f"regions, {payload} bytes + 24 of section headers = " in capsys.readouterr().out
