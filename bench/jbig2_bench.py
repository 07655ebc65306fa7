"""Benchmark plic.codec.jbig2 on the Canny edge maps of the shared images.

For every image (longest side LANCZOS-scaled to 1024 px, cv2.Canny 100/200):
our embedded-stream bytes and bpp for each effort ("fast", "default", "max")
and for template 0 + TPGDON, encode speed per effort (parameter choice
included) and decode speed (best of --runs, after a numba warm-up), then a
table of peers: JBIG1 (`pbmtojbg`), `jbig2dec` decoding our file and, when a
`jbig2` (jbig2enc) binary is on PATH, its generic-region coder (standalone
file, `jbig2 in.pbm` and `jbig2 -d in.pbm`, i.e. template 0, nominal AT
pixels, TPGDON off / on) and its symbol coder (`jbig2 -s -p`, page + symbol
dictionary).  Tools are timed as whole processes (start included); the
start cost of each, measured on an 8x8 blank PBM, is printed so it can be taken
off.  Every tool's output is decoded back with jbig2dec and compared.

    python -m bench.jbig2_bench [--runs 5] [--images DIR]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from bench.timing import best_time
from plic.codec import jbig2

REPO = Path(__file__).resolve().parents[1]

EFFORTS = jbig2.EFFORTS
JBIG2ENC_LIKE = dict(template=0, tpgdon=True)  # what `jbig2 -d` (jbig2enc) codes


def edge_map(path: Path) -> np.ndarray:
    import cv2
    from PIL import Image
    img = Image.open(path).convert("RGB")
    scale = 1024 / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    return (cv2.Canny(np.asarray(img), 100, 200) > 0).astype(np.uint8)


def write_pbm(path: Path, bitmap: np.ndarray) -> None:
    h, w = bitmap.shape
    path.write_bytes(b"P4\n%d %d\n" % (w, h) + np.packbits(bitmap, axis=1).tobytes())


def read_pbm(path: Path) -> np.ndarray:
    """Bitmap of a raw (P4) PBM as written by jbig2dec: 1 = black."""
    data = path.read_bytes()
    magic, width, height, pixels = data.split(maxsplit=3)
    if magic != b"P4":
        raise ValueError(f"{path}: not a raw PBM")
    width, height = int(width), int(height)
    rows = np.frombuffer(pixels, np.uint8).reshape(height, -1)
    return np.unpackbits(rows, axis=1)[:, :width]


def run_tool(cmd, runs: int) -> float:
    """Best wall time of `runs` runs of a process, its start included."""
    return best_time(lambda: subprocess.run(cmd, check=True, capture_output=True), runs)[1]


def start_seconds(tool: str, tmp: Path, runs: int) -> float:
    """Wall time of `tool` on an 8x8 blank PBM: the process start cost
    (leptonica cannot read a file under 12 bytes, so not 1x1)."""
    blank = np.zeros((8, 8), np.uint8)
    src, coded = tmp / "tiny.pbm", tmp / "tiny.jb2"
    write_pbm(src, blank)
    coded.write_bytes(jbig2.encode_file(blank))
    cmd = {"pbmtojbg": ["pbmtojbg", str(src), str(tmp / "tiny.jbg")],
           "jbig2": ["jbig2", str(src)],
           "jbig2dec": ["jbig2dec", "-t", "pbm", "-o", str(tmp / "tiny-out.pbm"), str(coded)]}
    return run_tool(cmd[tool], runs)


def jbig2dec_pixels(tmp: Path, *streams: Path) -> np.ndarray:
    """Decode a file (or a global + page stream pair) with jbig2dec."""
    out = tmp / "jbig2dec.pbm"
    subprocess.run(["jbig2dec", "-t", "pbm", "-o", str(out), *map(str, streams)],
                   check=True, capture_output=True)
    return read_pbm(out)


def jbig1(src: Path, tmp: Path, runs: int):
    """(bytes, encode seconds) of pbmtojbg on the PBM `src`, process start included."""
    dst = tmp / "out.jbg"
    seconds = run_tool(["pbmtojbg", str(src), str(dst)], runs)
    return dst.stat().st_size, seconds


def jbig2dec_seconds(stream: bytes, bitmap, tmp: Path, runs: int) -> float:
    """jbig2dec's wall time (process start included) decoding our file."""
    src = tmp / "ours.jb2"
    src.write_bytes(jbig2.embedded_to_file(stream))
    assert np.array_equal(jbig2dec_pixels(tmp, src), bitmap)
    return run_tool(["jbig2dec", "-t", "pbm", "-o", str(tmp / "ours.pbm"), str(src)], runs)


def jbig2enc_generic(src: Path, bitmap, tmp: Path, runs: int, flags=()):
    """(bytes, seconds) of jbig2enc's generic coder on the PBM `src` as a
    standalone file, checked to decode to `bitmap`.

    Without -s and -p `jbig2` writes file header, page information,
    immediate generic region (template 0, nominal AT pixels; TPGDON only
    with -d), end of page and end of file: the same segments as ours.
    """
    dst = tmp / "enc.jb2"
    cmd = ["jbig2", *flags, str(src)]
    seconds = run_tool(cmd, runs)
    dst.write_bytes(subprocess.run(cmd, check=True, capture_output=True).stdout)
    assert np.array_equal(jbig2dec_pixels(tmp, dst), bitmap), "jbig2enc generic not lossless"
    assert np.array_equal(jbig2.decode(dst.read_bytes()), bitmap)
    return dst.stat().st_size, seconds


def jbig2enc_symbol(src: Path, bitmap, tmp: Path):
    """(bytes, wrong pixels) of `jbig2 -s -p`: symbol dictionary + page.

    The symbol coder substitutes similar symbols (classification threshold
    0.92), so its page may differ from the input: count the pixels that do.
    """
    base = tmp / "sym"
    subprocess.run(["jbig2", "-s", "-p", "-b", str(base), str(src)], check=True,
                   capture_output=True)
    sym, page = tmp / "sym.sym", tmp / "sym.0000"
    wrong = int(np.count_nonzero(jbig2dec_pixels(tmp, sym, page) != bitmap))
    return sym.stat().st_size + page.stat().st_size, wrong


def measure(path: Path, tmp: Path, runs: int) -> dict:
    bitmap = edge_map(path)
    mp = bitmap.size / 1e6
    region = jbig2.encode_generic_region(bitmap)
    stream = jbig2.encode_embedded(bitmap)
    row = dict(name=path.name, shape=f"{bitmap.shape[1]}x{bitmap.shape[0]}",
               pixels=bitmap.size, template=region.template, tpgdon=region.tpgdon,
               t0tp=len(jbig2.encode_embedded(bitmap, **JBIG2ENC_LIKE)),
               dec=mp / best_time(lambda: jbig2.decode(stream), runs)[1])
    for effort in EFFORTS:
        row[effort] = len(jbig2.encode_embedded(bitmap, effort=effort))
        row[effort + "_mps"] = mp / best_time(
            lambda: jbig2.encode_embedded(bitmap, effort=effort), 1 if effort == "max" else runs)[1]
    assert np.array_equal(jbig2.decode(stream), bitmap)
    row["file"] = len(jbig2.embedded_to_file(stream))
    pbm = tmp / "in.pbm"
    write_pbm(pbm, bitmap)
    row["jbig1"], row["jbig1_s"] = jbig1(pbm, tmp, runs)
    row["j2dec_s"] = jbig2dec_seconds(stream, bitmap, tmp, runs)
    if shutil.which("jbig2"):
        row["j2"], row["j2_s"] = jbig2enc_generic(pbm, bitmap, tmp, runs)
        row["j2d"], row["j2d_s"] = jbig2enc_generic(pbm, bitmap, tmp, runs, ["-d"])
        row["j2s"], row["j2s_wrong"] = jbig2enc_symbol(pbm, bitmap, tmp)
    return row


def median(rows: list, value) -> float:
    return statistics.median(value(r) for r in rows)


def net_mps(r: dict, seconds: str, starts: dict, tool: str) -> float:
    """MP/s with the tool's process start cost taken off its wall time."""
    return r["pixels"] / 1e6 / max(r[seconds] - starts[tool], 1e-9)


def print_ours(rows: list) -> None:
    print(f"{'image':<20} {'size':>9} {'T':>2} {'fast B':>6} {'def B':>6} {'max B':>6} "
          f"{'bpp':>5} {'T0+TP':>6} {'d/T0':>5} {'fast':>5} {'def':>5} {'max':>4} {'dec':>5}")
    for r in rows:
        print(f"{r['name']:<20} {r['shape']:>9} {r['template']:>1}{'T' if r['tpgdon'] else '-'} "
              f"{r['fast']:>6} {r['default']:>6} {r['max']:>6} "
              f"{8 * r['default'] / r['pixels']:>5.3f} {r['t0tp']:>6} "
              f"{r['default'] / r['t0tp']:>5.3f} "
              f"{r['fast_mps']:>5.1f} {r['default_mps']:>5.1f} {r['max_mps']:>4.1f} "
              f"{r['dec']:>5.1f}")
    print()
    print("median bpp: " + ", ".join(
        f"{k} {median(rows, lambda r: 8 * r[k] / r['pixels']):.3f}"
        for k in (*EFFORTS, "t0tp", "jbig1")))
    for effort in EFFORTS:
        print(f"{effort:>7}: median MP/s {median(rows, lambda r: r[effort + '_mps']):6.1f}, "
              f"median bytes / JBIG1 {median(rows, lambda r: r[effort] / r['jbig1']):.3f}, "
              f"/ T0+TPGDON {median(rows, lambda r: r[effort] / r['t0tp']):.3f} "
              f"(worst {max(r[effort] / r['t0tp'] for r in rows):.3f})")
    print(f"median decode MP/s {median(rows, lambda r: r['dec']):.1f}")
    totals = {k: sum(r[k] for r in rows) for k in (*EFFORTS, "t0tp", "jbig1")}
    print(f"total bytes: {totals}")
    picks = {t: sum(r["template"] == t for r in rows) for t in range(4)}
    print(f"templates picked by default: {picks}")


def print_peers(rows: list, starts: dict) -> None:
    """Ours (default effort, standalone file) next to the external tools."""
    has_enc = "j2" in rows[0]
    head = f"{'image':<20} {'ours B':>6} {'JBIG1 B':>7} {'o/J1':>5}"
    if has_enc:
        head += (f" {'j2 B':>6} {'j2-d B':>6} {'o/j2':>5} {'j2 -s B':>7} {'wrong':>5}"
                 f" {'o/j2s':>5} {'j2':>5} {'j2net':>5}")
    print(head + f" {'J1':>5} {'j2dec':>5}")
    for r in rows:
        mp = r["pixels"] / 1e6
        line = f"{r['name']:<20} {r['file']:>6} {r['jbig1']:>7} {r['file'] / r['jbig1']:>5.3f}"
        if has_enc:
            line += (f" {r['j2']:>6} {r['j2d']:>6} {r['file'] / min(r['j2'], r['j2d']):>5.3f}"
                     f" {r['j2s']:>7} {r['j2s_wrong']:>5} {r['file'] / r['j2s']:>5.3f}"
                     f" {mp / r['j2_s']:>5.1f} {net_mps(r, 'j2_s', starts, 'jbig2'):>5.1f}")
        print(line + f" {mp / r['jbig1_s']:>5.1f} {mp / r['j2dec_s']:>5.1f}")
    print()
    print("process start (8x8 blank PBM), ms: " + ", ".join(
        f"{tool} {1000 * seconds:.1f}" for tool, seconds in starts.items()))
    for key, tool, label in (("jbig1_s", "pbmtojbg", "JBIG1 encode (pbmtojbg)"),
                             ("j2dec_s", "jbig2dec", "jbig2dec decode of our file"),
                             ("j2_s", "jbig2", "jbig2enc generic encode"),
                             ("j2d_s", "jbig2", "jbig2enc -d generic encode")):
        if key in rows[0]:
            print(f"median MP/s {label}: wall {median(rows, lambda r: r['pixels'] / 1e6 / r[key]):.1f}"
                  f", start taken off {median(rows, lambda r: net_mps(r, key, starts, tool)):.1f}")
    print(f"median ours/JBIG1 bytes {median(rows, lambda r: r['file'] / r['jbig1']):.3f}")
    if has_enc:
        best = [r["file"] / min(r["j2"], r["j2d"]) for r in rows]
        print(f"ours / best jbig2enc generic bytes: median {statistics.median(best):.3f}, "
              f"worst {max(best):.3f}; images larger than jbig2enc: "
              f"{sum(b > 1 for b in best)} of {len(rows)}")
        print(f"median ours / jbig2enc -s -p bytes {median(rows, lambda r: r['file'] / r['j2s']):.3f}"
              f"; images -s -p decodes wrong: {sum(r['j2s_wrong'] > 0 for r in rows)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "images")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.glob("*") if p.suffix in (".png", ".jpg"))
    if not paths:
        parser.error(f"no .png or .jpg images in {args.images}: pass --images DIR (bench/README.md's "
                     "tables are of ../shared/images; tests/data holds five small ones)")
    warm = np.eye(64, dtype=np.uint8)
    jbig2.decode(jbig2.encode_embedded(warm))               # numba compile / cache load
    print(f"numba: {jbig2.NUMBA}; jbig2enc on PATH: {bool(shutil.which('jbig2'))}")
    tools = ["pbmtojbg", "jbig2dec"] + (["jbig2"] if shutil.which("jbig2") else [])
    with tempfile.TemporaryDirectory() as tmp:
        starts = {tool: start_seconds(tool, Path(tmp), 2 * args.runs) for tool in tools}
        rows = [measure(p, Path(tmp), args.runs) for p in paths]
    print_ours(rows)
    print()
    print_peers(rows, starts)


if __name__ == "__main__":
    main()
