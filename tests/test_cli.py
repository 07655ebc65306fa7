"""The `plic` command line, run as a user runs it (a subprocess), on the test images."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import needs_shared, read_pbm, require_tool
from plic import batch
from plic.cli import decode as cli_decode
from plic.cli import main as cli
from plic.codec import edges, fileformat
from tests.support.images import CORE_IMAGES, DATA, EXTENDED_IMAGES, REPO, SHARED_IMAGES, image_path, load_shared


def plic(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "plic", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def encode_folder(folder, out) -> str:
    return plic("encode", folder, "-o", out, "--prompt", "a test prompt").stdout


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoded")
    return out, encode_folder(DATA, out)


def check_summary_lines(out, stdout, names):
    """One line per image, in name order: its .plic, its bytes, bpp and ratio."""
    lines = [line for line in stdout.strip().splitlines() if not line.startswith("  ")]  # notes
    assert len(lines) == len(names) > 0
    for name, line in zip(names, lines):
        stem = name.rsplit(".", 1)[0]
        assert line.startswith(f"{out / stem}.plic: ")
        size = (out / f"{stem}.plic").stat().st_size
        assert f"{size} bytes" in line and " bpp at " in line and f"smaller than {name}" in line


def check_edges_with_jbig2dec(out, names, tmp_path):
    """The exported edges.jb2 of each image decodes with jbig2dec to exactly its Canny map."""
    jbig2dec = require_tool("jbig2dec", "jbig2dec")
    assert names
    for name in names:
        stem = name.rsplit(".", 1)[0]
        folder = tmp_path / stem
        assert cli.main(["export", str(out / f"{stem}.plic"), "-o", str(folder)]) == 0  # in-process
        pbm = tmp_path / f"{stem}.pbm"
        subprocess.run([jbig2dec, "-t", "pbm", "-o", str(pbm), str(folder / "edges.jb2")], check=True)
        np.testing.assert_array_equal(read_pbm(pbm.read_bytes()), edges.canny(load_shared(name)), err_msg=name)


def test_encode_a_folder_prints_bytes_bpp_and_ratio(encoded):
    check_summary_lines(*encoded, CORE_IMAGES)


def test_exported_edges_decode_bit_exactly_with_jbig2dec(encoded, tmp_path):
    check_edges_with_jbig2dec(encoded[0], CORE_IMAGES, tmp_path)


@needs_shared
def test_every_shared_image_encodes_and_its_edges_decode_with_jbig2dec(tmp_path):
    out = tmp_path / "encoded"
    names = sorted(CORE_IMAGES + EXTENDED_IMAGES)
    check_summary_lines(out, encode_folder(SHARED_IMAGES, out), names)
    check_edges_with_jbig2dec(out, names, tmp_path)


def test_export_writes_standard_files(encoded, tmp_path):
    out, _ = encoded
    plic("export", out / "astronaut.plic", "-o", tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    # the face the default salient step finds is stored as one region
    parts = ["decode_settings.json", "edges.jb2", "edges.png", "hint.png", "palette.webp", "prompt.txt",
             "salient_000_167_50.webp", "salient_mask.png", "salient_pixels.png"]
    assert names == sorted([".plic-export.json", *parts])
    assert json.loads((tmp_path / ".plic-export.json").read_text()) == parts  # what a re-export may remove
    assert (tmp_path / "prompt.txt").read_text() == "a test prompt\n"
    with Image.open(tmp_path / "palette.webp") as im:
        assert im.size == (32, 32)
    with Image.open(tmp_path / "hint.png") as im:
        assert im.size == (512, 512)
    again = plic("export", out / "astronaut.plic", "-o", tmp_path, check=False)
    assert again.returncode == 1 and "already exists; pass --overwrite" in again.stderr


def test_info_json_accounts_for_every_byte(encoded):
    out, _ = encoded
    info = json.loads(plic("info", out / "coffee.plic", "--json").stdout)
    size = (out / "coffee.plic").stat().st_size
    assert info["total_bytes"] == size
    sections = info["sections"]
    assert set(sections) == {"prompt", "edges", "palette"}
    overhead = 32 + 12 * len(sections)
    assert sum(s["bytes"] for s in sections.values()) + overhead == size
    w, h = info["working_size"]
    assert (w, h) == (600, 400)  # under the 1024 px working size: kept as it is
    assert info["total_bpp"] == pytest.approx(size * 8 / (w * h))
    assert "edges" in plic("info", out / "coffee.plic").stdout


def test_preview_is_one_png(encoded, tmp_path):
    out, _ = encoded
    plic("preview", out / "page.plic", "-o", tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG" and im.width > 4 * 100


def test_salient_mask_from_a_png(tmp_path):
    mask = np.zeros((512, 512), np.uint8)
    mask[50:120, 180:300] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    plic("encode", image_path("astronaut.png"), "-o", tmp_path, "--salient-mask", tmp_path / "mask.png",
         "--salient", "none")  # the mask alone: lossless, capped only at the raw size
    plic("export", tmp_path / "astronaut.plic", "-o", tmp_path / "parts")
    kept = np.asarray(Image.open(tmp_path / "parts" / "salient_pixels.png"))
    original = np.asarray(Image.open(image_path("astronaut.png")).convert("RGB"))
    np.testing.assert_array_equal(kept[50:120, 180:300], original[50:120, 180:300])
    bad = plic("encode", image_path("chelsea.png"), "-o", tmp_path, "--salient-mask",
               tmp_path / "mask.png", check=False)
    assert bad.returncode == 1 and "mask.png: the mask is 512x512, which is not the image's shape (working size 451x300)" in bad.stderr
    assert not (tmp_path / "chelsea.plic").exists()


def test_bench_prints_a_table_and_csv(tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for name in ("rocket.jpg", "page.png"):
        (folder / name).write_bytes((image_path(name)).read_bytes())
    result = plic("bench", folder, "--csv", tmp_path / "t.csv")
    assert result.stdout.split()[:12] == ["image", "width", "height", "paper", "paper_bpp", "target",
                                          "target_bpp", "edges_kept", "jpeg_q1", "webp_q0", "avif_q0",
                                          "ratio_to_file"]
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [r["image"] for r in rows] == ["page.png", "rocket.jpg"]
    for row in rows:  # both are over 0.05 bpp at the paper's settings
        target = int(0.05 * int(row["width"]) * int(row["height"]) / 8)
        assert int(row["paper"]) > target >= int(row["target"]) > 0
        assert 0 < float(row["edges_kept"]) < 1
        assert int(row["jpeg_q1"]) > 0 and int(row["webp_q0"]) > 0
        assert row["avif_q0"] == "" if "without AVIF" in result.stdout else int(row["avif_q0"]) > 0


def damaged(folder, kind):
    """A bad .plic file next to ``good.plic`` in ``folder``."""
    good = (folder / "good.plic").read_bytes()
    contents = {"missing": None, "not_plic": b"hello", "truncated": good[:-3],
                "bit_flip": good[:40] + bytes([good[40] ^ 1]) + good[41:]}[kind]
    path = folder / f"{kind}.plic"
    if contents is not None:
        path.write_bytes(contents)
    return path


@pytest.mark.parametrize("kind, expected", [
    ("missing", "cannot be read"), ("not_plic", "signature"), ("truncated", "truncated"),
    ("bit_flip", "checksum"),
])
@pytest.mark.parametrize("command", ["info", "export", "preview"])
def test_bad_plic_files_fail_with_one_line_and_write_nothing(tmp_path, kind, expected, command):
    plic("encode", image_path("rocket.jpg"), "-o", tmp_path)
    (tmp_path / "rocket.plic").rename(tmp_path / "good.plic")
    path = damaged(tmp_path, kind)
    before = sorted(p.name for p in tmp_path.iterdir())
    args = [command, path] + ({"info": [], "export": ["-o", tmp_path / "parts"],
                               "preview": ["-o", tmp_path / "p.png"]}[command])
    result = plic(*args, check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"plic: {path}: ")
    assert expected in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_unreadable_images_are_reported_and_the_rest_encoded(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = plic("encode", tmp_path / "broken.png", image_path("rocket.jpg"), tmp_path / "nope.jpg",
                  "-o", tmp_path / "out", check=False)
    assert result.returncode == 1
    assert "broken.png: cannot read this image" in result.stderr
    assert "nope.jpg: no such file" in result.stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["rocket.plic"]


def test_an_image_too_wide_for_the_format_is_named(tmp_path):
    Image.new("RGB", (70000, 2), "white").save(tmp_path / "wide.png")
    result = plic("encode", tmp_path / "wide.png", "-o", tmp_path / "out", check=False)
    assert result.returncode == 1
    assert result.stderr == (f"plic: {tmp_path / 'wide.png'}: the image is 70000x2; PLIC stores images of "
                             "at most 65535 pixels a side: scale it down first\n")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_existing_output_is_kept_unless_overwrite(tmp_path):
    plic("encode", image_path("rocket.jpg"), "-o", tmp_path, "--prompt", "first")
    result = plic("encode", image_path("rocket.jpg"), "-o", tmp_path, "--prompt", "second", check=False)
    assert result.returncode == 1 and "already exists" in result.stderr
    assert "first" in plic("info", tmp_path / "rocket.plic").stdout
    plic("encode", image_path("rocket.jpg"), "-o", tmp_path, "--prompt", "second", "--overwrite")
    assert "second" in plic("info", tmp_path / "rocket.plic").stdout


def test_encode_path_imports_no_torch(tmp_path):
    code = ("import sys; from plic.cli.main import main; "
            f"rc = main(['encode', {str(image_path('rocket.jpg'))!r}, '-o', {str(tmp_path)!r}]); "
            "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
            "assert rc == 0 and not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_unwritable_outputs_fail_with_one_line(encoded, tmp_path, capsys):
    out, _ = encoded
    (tmp_path / "p.png").write_bytes(b"keep")
    assert cli.main(["preview", str(out / "rocket.plic"), "-o", str(tmp_path / "p.png")]) == 1
    err = capsys.readouterr().err
    assert err == f"plic: {tmp_path / 'p.png'}: already exists; choose another name or allow replacing it " \
                  "(plic: --overwrite)\n"
    assert (tmp_path / "p.png").read_bytes() == b"keep"
    (tmp_path / "a-file").write_bytes(b"")
    assert cli.main(["export", str(out / "rocket.plic"), "-o", str(tmp_path / "a-file" / "parts")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"plic: {tmp_path / 'a-file' / 'parts'}/")
    assert "cannot be written" in err


def test_inputs_with_the_same_name_fail_once_and_the_rest_are_encoded(tmp_path, capsys):
    """Issue 11 item 7: a name clash (or a file given twice) is one failure, not the batch's."""
    folder = tmp_path / "in"
    folder.mkdir()
    for suffix in (".jpg", ".png"):
        (folder / f"rocket{suffix}").write_bytes((image_path("rocket.jpg")).read_bytes())
    page = image_path("page.png")
    assert cli.main(["encode", str(folder), str(page), str(page), "-o", str(tmp_path / "out"),
                     "--overwrite", "--prompt", ""]) == 1
    err = capsys.readouterr().err
    assert err == (f"plic: {folder / 'rocket.png'}: would be written to {tmp_path / 'out' / 'rocket.plic'} "
                   f"like {folder / 'rocket.jpg'}; rename one of them or run them separately\n"
                   f"plic: {page}: given twice; it is done once\n")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["page.plic", "rocket.plic"]


def test_decode_reports_two_files_for_one_output_as_one_failure(tmp_path, capsys):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.plic").write_bytes(b"")
    jobs = cli_decode.targets([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    done = []
    assert batch.run_each(jobs, lambda source, target: done.append(source)) == 1
    assert done == [tmp_path / "a" / "x.plic"]
    assert capsys.readouterr().err == (f"plic: {tmp_path / 'b' / 'x.plic'}: would be written to "
                                       f"{tmp_path / 'out' / 'x.png'} like {tmp_path / 'a' / 'x.plic'}; "
                                       "rename one of them or run them separately\n")
    assert [t.name for _, t in cli_decode.targets([tmp_path / "a"], tmp_path / "out")] == ["x.png"]


def test_a_mask_alone_is_kept_losslessly_beyond_the_default_budget(tmp_path, capsys):
    """Issue 11 item 6: --salient none --salient-mask keeps the mask's pixels as PNG although
    they take far more than the 0.5 bpp detectors get (as the README says)."""
    mask = np.zeros((512, 512), np.uint8)
    mask[40:400, 60:460] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    args = ["encode", str(image_path("astronaut.png")), "-o", str(tmp_path), "--prompt", "x",
            "--salient", "none", "--salient-mask", str(tmp_path / "mask.png")]
    assert cli.main(args) == 0
    assert "instead of png" not in capsys.readouterr().out
    plic = fileformat.load(tmp_path / "astronaut.plic")
    assert {r.codec for r in plic.salient_regions} == {"png"}
    assert plic.section_sizes()["salient_pixels"] * 8 / (512 * 512) > 0.5
    assert cli.main(args + ["--overwrite", "--salient-budget", "0.5"]) == 0  # asked for: applied
    assert "stored as webp" in capsys.readouterr().out


def test_encode_stores_decode_settings_only_when_asked(tmp_path):
    image = image_path("chelsea.png")
    plic("encode", image, "-o", tmp_path / "default", "--prompt", "a cat", "--salient", "none")
    plic("encode", image, "-o", tmp_path / "cpu", "--prompt", "a cat", "--salient", "none",
         "--decode-steps", "3", "--decode-seed", "7")
    default = fileformat.load(tmp_path / "default" / "chelsea.plic")
    cpu = fileformat.load(tmp_path / "cpu" / "chelsea.plic")
    assert default.decode_settings == {}  # the reference's settings cost no bytes
    assert cpu.decode_settings == {"steps": 3, "seed": 7}
    bad = plic("encode", image, "-o", tmp_path / "bad", "--decode-steps", "0", check=False)
    assert bad.returncode == 2 and "argument --decode-steps: 0 is outside 1..1000" in bad.stderr
