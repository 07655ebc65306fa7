"""The `plic` command line, run as a user runs it (a subprocess), on the shared images."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import IMAGE_NAMES, REPO, SHARED_IMAGES, load_shared, read_pbm
from plic import cli, cli_decode, edges
from plic.errors import PlicError


def plic(*args, check=True):
    result = subprocess.run([sys.executable, "-m", "plic", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    out = tmp_path_factory.mktemp("encoded")
    result = plic("encode", SHARED_IMAGES, "-o", out, "--prompt", "a test prompt")
    return out, result.stdout


def test_encode_a_folder_prints_bytes_bpp_and_ratio(encoded):
    out, stdout = encoded
    lines = [line for line in stdout.strip().splitlines() if not line.startswith("  salient: ")]
    assert len(lines) == len(IMAGE_NAMES)
    for name, line in zip(IMAGE_NAMES, lines):
        stem = name.rsplit(".", 1)[0]
        assert line.startswith(f"{out / stem}.plic: ")
        size = (out / f"{stem}.plic").stat().st_size
        assert f"{size} bytes" in line and " bpp at " in line and f"smaller than {name}" in line


def test_exported_edges_decode_bit_exactly_with_jbig2dec(encoded, tmp_path):
    out, _ = encoded
    for name in IMAGE_NAMES:
        stem = name.rsplit(".", 1)[0]
        folder = tmp_path / stem
        assert cli.main(["export", str(out / f"{stem}.plic"), "-o", str(folder)]) == 0  # in-process: 14 files
        pbm = tmp_path / f"{stem}.pbm"
        subprocess.run(["jbig2dec", "-t", "pbm", "-o", str(pbm), str(folder / "edges.jb2")], check=True)
        np.testing.assert_array_equal(read_pbm(pbm.read_bytes()), edges.canny(load_shared(name)), err_msg=name)


def test_export_writes_standard_files(encoded, tmp_path):
    out, _ = encoded
    plic("export", out / "astronaut.plic", "-o", tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    # the face the default salient step finds is stored as one region
    assert names == ["decode_hints.json", "edges.jb2", "edges.png", "hint.png", "palette.webp", "prompt.txt",
                     "salient_000_167_50.webp", "salient_mask.png", "salient_pixels.png"]
    assert (tmp_path / "prompt.txt").read_text() == "a test prompt\n"
    with Image.open(tmp_path / "palette.webp") as im:
        assert im.size == (32, 32)
    with Image.open(tmp_path / "hint.png") as im:
        assert im.size == (512, 512)
    again = plic("export", out / "astronaut.plic", "-o", tmp_path, check=False)
    assert again.returncode == 1 and "already exists; pass --overwrite" in again.stderr


def test_info_json_accounts_for_every_byte(encoded):
    out, _ = encoded
    info = json.loads(plic("info", out / "kleiber-bird.plic", "--json").stdout)
    size = (out / "kleiber-bird.plic").stat().st_size
    assert info["total_bytes"] == size
    sections = info["sections"]
    assert set(sections) == {"prompt", "edges", "palette"}
    overhead = 32 + 12 * len(sections)
    assert sum(s["bytes"] for s in sections.values()) + overhead == size
    w, h = info["working_size"]
    assert max(w, h) == 1024
    assert info["total_bpp"] == pytest.approx(size * 8 / (w * h))
    assert "edges" in plic("info", out / "kleiber-bird.plic").stdout


def test_preview_is_one_png(encoded, tmp_path):
    out, _ = encoded
    plic("preview", out / "page.plic", "-o", tmp_path / "p.png")
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG" and im.width > 4 * 100


def test_salient_mask_from_a_png(tmp_path):
    mask = np.zeros((512, 512), np.uint8)
    mask[50:120, 180:300] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    plic("encode", SHARED_IMAGES / "astronaut.png", "-o", tmp_path, "--salient-mask", tmp_path / "mask.png",
         "--salient", "none")  # the mask alone: lossless, capped only at the raw size
    plic("export", tmp_path / "astronaut.plic", "-o", tmp_path / "parts")
    kept = np.asarray(Image.open(tmp_path / "parts" / "salient_pixels.png"))
    original = np.asarray(Image.open(SHARED_IMAGES / "astronaut.png").convert("RGB"))
    np.testing.assert_array_equal(kept[50:120, 180:300], original[50:120, 180:300])
    bad = plic("encode", SHARED_IMAGES / "chelsea.png", "-o", tmp_path, "--salient-mask",
               tmp_path / "mask.png", check=False)
    assert bad.returncode == 1 and "mask.png: the mask is 512x512, which is not the image's shape (working size 451x300)" in bad.stderr
    assert not (tmp_path / "chelsea.plic").exists()


def test_bench_prints_a_table_and_csv(tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for name in ("rocket.jpg", "page.png"):
        (folder / name).write_bytes((SHARED_IMAGES / name).read_bytes())
    result = plic("bench", folder, "--csv", tmp_path / "t.csv")
    assert "jpeg_q1" in result.stdout.splitlines()[0]
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert [r["image"] for r in rows] == ["page.png", "rocket.jpg"]
    for row in rows:
        assert int(row["total"]) > int(row["edges"]) > 0
        assert int(row["jpeg_q1"]) > 0 and int(row["webp_q0"]) > 0


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
    plic("encode", SHARED_IMAGES / "rocket.jpg", "-o", tmp_path)
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
    result = plic("encode", tmp_path / "broken.png", SHARED_IMAGES / "rocket.jpg", tmp_path / "nope.jpg",
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
    plic("encode", SHARED_IMAGES / "rocket.jpg", "-o", tmp_path, "--prompt", "first")
    result = plic("encode", SHARED_IMAGES / "rocket.jpg", "-o", tmp_path, "--prompt", "second", check=False)
    assert result.returncode == 1 and "already exists" in result.stderr
    assert "first" in plic("info", tmp_path / "rocket.plic").stdout
    plic("encode", SHARED_IMAGES / "rocket.jpg", "-o", tmp_path, "--prompt", "second", "--overwrite")
    assert "second" in plic("info", tmp_path / "rocket.plic").stdout


def test_encode_path_imports_no_torch(tmp_path):
    code = ("import sys; from plic.cli import main; "
            f"rc = main(['encode', {str(SHARED_IMAGES / 'rocket.jpg')!r}, '-o', {str(tmp_path)!r}]); "
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


def test_inputs_with_the_same_name_are_refused_before_anything_is_written(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for suffix in (".jpg", ".png"):
        (folder / f"rocket{suffix}").write_bytes((SHARED_IMAGES / "rocket.jpg").read_bytes())
    assert cli.main(["encode", str(folder), "-o", str(tmp_path / "out"), "--overwrite", "--prompt", ""]) == 1
    err = capsys.readouterr().err
    assert err == (f"plic: {folder / 'rocket.png'}: would be written to {tmp_path / 'out' / 'rocket.plic'} "
                   f"like {folder / 'rocket.jpg'}; rename one of them or run them separately\n")
    assert not (tmp_path / "out").exists()


def test_decode_refuses_two_files_for_one_output(tmp_path):
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "x.plic").write_bytes(b"")
    with pytest.raises(PlicError, match=r"b/x.plic: would be written to .*out/x.png like .*a/x.plic"):
        cli_decode.targets([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
    assert [t.name for _, t in cli_decode.targets([tmp_path / "a"], tmp_path / "out")] == ["x.png"]
