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

from plic import safefs
from plic.cli import main as cli
from plic.codec import fileformat, jbig2, pack
from tests.support.images import REPO

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
    return fileformat.dumps(pack.encode_image(rgb, prompt="a red box", salient_mask=mask))


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
    from plic.cli.decode import targets
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


# -- crafted files: each refused with one line, in bounded time and memory -----------------------

def jbig2_stream(width: int, height: int, regions: int) -> bytes:
    """A JBIG2 embedded stream of one page holding ``regions`` full-page generic regions, made
    with the coder's own segment writer: 33 bytes buy a whole page of decoding apiece."""
    region = jbig2.GenericRegion(width, height, 0, jbig2.NOMINAL_AT[0], False, b"")
    segments = [jbig2._segment(0, jbig2._PAGE_INFORMATION, 1, jbig2._page_information(width, height))]
    segments += [jbig2._segment(1 + i, jbig2._IMMEDIATE_LOSSLESS_GENERIC, 1,
                                jbig2._generic_region_data(region)) for i in range(regions)]
    return b"".join(segments + [jbig2._segment(1 + regions, jbig2._END_OF_PAGE, 1)])


def test_a_page_is_decoded_at_most_once():
    """Issue 24 item 2: 700 full-page regions in 46 KB took plic info 74 s."""
    assert jbig2.decode(jbig2_stream(64, 32, 1), max_pixels=64 * 32).shape == (32, 64)
    with pytest.raises(jbig2.JBIG2Error, match="regions decode more than max_pixels=2048 pixels together"):
        jbig2.decode(jbig2_stream(64, 32, 2), max_pixels=64 * 32)


@pytest.mark.parametrize("section", ["edges", "salient_mask"])
def test_many_regions_in_an_edge_or_mask_stream_are_refused(section, tmp_path):
    stream = jbig2_stream(1024, 1024, 700)
    plic = fileformat.PlicFile((1024, 1024), (1024, 1024), **{section: stream})
    (tmp_path / "crafted.plic").write_bytes(fileformat.dumps(plic))
    result = bounded_plic("info", tmp_path / "crafted.plic")
    assert result.returncode == 1
    assert "regions decode more than max_pixels=1048576 pixels together" in result.stderr
    assert result.stderr.count("\n") == 1


def sealed(header_sizes, sections) -> bytes:
    """A file whose header and CRCs are right, holding ``sections`` [(type, payload)] as
    they are: what a crafted file looks like to the reader."""
    header = fileformat.HEADER.pack(fileformat.MAGIC, 1, 0, len(sections), *header_sizes)
    out = header + struct.pack(">I", zlib.crc32(header))
    for kind, payload in sections:
        out += kind + struct.pack(">I", len(payload)) + payload + struct.pack(
            ">I", zlib.crc32(payload, zlib.crc32(kind)))
    return out


def test_salient_regions_cannot_cover_more_than_the_image(tmp_path):
    """Issue 24 item 2: 400 full-size lossless-WebP regions of 220 B each took 15.8 s."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (512, 512), "white").save(buffer, format="WEBP", lossless=True)
    region = fileformat._REGION_HEAD.pack(0, 0, 512, 512, 3, len(buffer.getvalue())) + buffer.getvalue()
    payload = struct.pack(">H", 400) + region * 400
    data = sealed((512, 512, 512, 512), [(b"SPIX", payload)])
    with pytest.raises(fileformat.PlicFormatError, match="the regions cover 524288 pixels together, "
                                                         "more than the 512x512 image holds"):
        fileformat.loads(data)
    regions = [fileformat.SalientRegion(0, 0, 512, 512, "webp-lossless", buffer.getvalue())] * 2
    with pytest.raises(ValueError, match="more than the 512x512 image holds"):
        fileformat.dumps(fileformat.PlicFile((512, 512), (512, 512), salient_regions=regions))


def bounded_plic(*args, seconds: int = 20, memory: int = 1 << 30):
    """``plic ARGS`` in a process that may use at most ``seconds`` of CPU time and ``memory``
    bytes of address space: a refusal must come well inside both."""
    limit = (f"import resource; resource.setrlimit(resource.RLIMIT_CPU, ({seconds}, {seconds})); "
             f"resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))")
    return subprocess.run([sys.executable, "-c", f"{limit}; import runpy; "
                           "runpy.run_module('plic', run_name='__main__')", *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)


def test_an_original_size_no_encoder_read_is_refused_before_decoding(tmp_path):
    """Issue 24 item 4: a 478-byte file declaring 20000x20000 wrote a 20000x20000 PNG."""
    import argparse

    from plic.cli import decode as cli_decode

    path = tmp_path / "tall.plic"
    fileformat.save(fileformat.PlicFile((20000, 20000), (64, 64), prompt="x"), path)
    args = argparse.Namespace(size="original", max_pixels=100_000_000,
                              max_working_pixels=fileformat.MAX_WORKING_PIXELS)
    with pytest.raises(cli.PlicError, match="declares an original size of 20000x20000, more than "
                                            "the 100000000 pixels --max-pixels allows"):
        cli_decode.read_one(None, path, tmp_path / "tall.png", args)
    assert not (tmp_path / "tall.png").exists()


@pytest.mark.parametrize("suffix", [".plic", ".png"])
def test_things_that_are_not_files_are_refused(suffix, tmp_path):
    """Issue 24 item 5: a link to /dev/zero read until MemoryError; a FIFO hung info and encode."""
    fifo = tmp_path / f"fifo{suffix}"
    os.mkfifo(fifo)
    zero = tmp_path / f"zero{suffix}"
    zero.symlink_to("/dev/zero")
    command = ["info"] if suffix == ".plic" else ["encode", "-o", tmp_path / "out", "--salient", "none",
                                                  "--prompt", "x"]
    for path, kind in ((fifo, "a FIFO (named pipe)"), (zero, "a character device")):
        result = bounded_plic(command[0], path, *command[1:], seconds=30)
        assert result.returncode == 1
        assert f"{path}: " in result.stderr and f"is {kind}, not a regular file" in result.stderr
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


@pytest.mark.parametrize("options, refused", [
    (["--target-bpp", "inf"], "argument --target-bpp: inf is not a number more than 0 and at most 24"),
    (["--target-bpp", "1e308"], "argument --target-bpp: 1e308 is not a number"),
    (["--target-bpp", "nan"], "argument --target-bpp: nan is not a number"),
    (["--salient-budget", "nan"], "argument --salient-budget: nan is not a number 0..24"),
    (["--salient-budget", "inf"], "argument --salient-budget: inf is not a number 0..24"),
    (["--salient-codec", "webp", "--salient-quality", "-5"], "argument --salient-quality: -5 is outside 0..100"),
    (["--salient-quality", "500"], "argument --salient-quality: 500 is outside 0..100"),
    (["--canny", "5", "99999999999"], "argument --canny: 99999999999 is outside 0..2040"),
    (["--face-threshold", "nan"], "argument --face-threshold: nan is not a number 0..1"),
    (["--face-threshold", "-1"], "argument --face-threshold: -1 is not a number 0..1"),
    (["--face-threshold", "5"], "argument --face-threshold: 5 is not a number 0..1"),
    (["--word-threshold", "nan"], "argument --word-threshold: nan is not a number 0..1"),
    (["--max-side", "0"], "argument --max-side: 0 is outside 1..16384"),
])
def test_encode_refuses_option_values_it_cannot_use(options, refused, tmp_path, capsys):
    """Issue 23 item 2 and issue 24 item 7: these crashed, or ran with a meaningless value."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["encode", str(REPO / "tests" / "data" / "chelsea.png"), "-o", str(tmp_path), *options])
    assert exit_.value.code == 2
    assert refused in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("options, refused", [
    (["--guidance", "inf"], "argument --cfg/--guidance: inf is not a number 0..100"),
    (["--guidance", "nan"], "argument --cfg/--guidance: nan is not a number 0..100"),
    (["--seed", "18446744073709551616"], "argument --seed: 18446744073709551616 is outside 0..18446744073709551615"),
    (["--seed", "-9223372036854775809"], "argument --seed: -9223372036854775809 is outside 0.."),
    (["--device", "bogus"], "argument --device: 'bogus' is not a device; use auto, cpu, cuda, cuda:N or mps"),
    (["--steps", "0"], "argument --steps: 0 is outside 1..1000"),
    (["--batch-size", "0"], "argument --batch-size: 0 is outside 1..1024"),
])
def test_decode_refuses_option_values_it_cannot_use(options, refused, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["decode", str(tmp_path / "a.plic"), "-o", str(tmp_path / "a.png"), "--model", "m",
                  "--inpaint-controlnet", "i", "--color-canny-controlnet", "c", *options])
    assert exit_.value.code == 2
    assert refused in capsys.readouterr().err


def test_a_device_this_machine_lacks_is_refused_by_name():
    from plic.deps import resolve_device
    from plic.errors import PlicInputError

    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal is for machines without one")
    with pytest.raises(PlicInputError, match="device 'cuda' is not on this machine .torch sees no "
                                             "CUDA GPUs.; use cpu or auto"):
        resolve_device("cuda")
    with pytest.raises(PlicInputError, match="device 'bogus' is not one torch knows"):
        resolve_device("bogus")


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose IHDR (checksum made right) declares ``width`` x ``height``."""
    import io

    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


@pytest.mark.parametrize("size", [(13000, 13000), (65535, 2700)])
def test_an_image_beyond_max_pixels_is_refused_before_decoding(size, tmp_path):
    """Issue 23 item 3: a 13000x13000 PNG took 2.9 GB and 32 s with only PIL's warning."""
    (tmp_path / "huge.png").write_bytes(png_declaring(*size))
    result = bounded_plic("encode", tmp_path / "huge.png", "-o", tmp_path / "out", "--prompt", "x",
                          "--salient", "none", memory=1 << 30)
    assert result.returncode == 1
    assert result.stderr == (f"plic: {tmp_path / 'huge.png'}: is {size[0]}x{size[1]}, "
                             f"{size[0] * size[1]} pixels, more than the 100000000 allowed: scale "
                             "it down first, or raise --max-pixels\n")


def test_a_jpeg_beyond_max_pixels_is_read_reduced(tmp_path):
    from plic.image import load_rgb

    Image.new("RGB", (2000, 1200), "blue").save(tmp_path / "big.jpg", quality=90)
    assert load_rgb(tmp_path / "big.jpg", max_pixels=700_000).shape == (600, 1000, 3)  # 1/2 size
    assert load_rgb(tmp_path / "big.jpg", max_pixels=200_000).shape == (300, 500, 3)  # 1/4
    assert load_rgb(tmp_path / "big.jpg", max_pixels=100_000).shape == (150, 250, 3)  # 1/8
    assert load_rgb(tmp_path / "big.jpg").shape == (1200, 2000, 3)  # within the limit: as it is
