"""Benchmark plic.jbig2 on the Canny edge maps of the shared images.

For every image (longest side LANCZOS-scaled to 1024 px, cv2.Canny 100/200):
our embedded-stream bytes and bpp for each effort ("fast", "default", "max")
and for template 0 + TPGDON, encode speed per effort (parameter choice
included) and decode speed (best of --runs, after a numba warm-up),
next to JBIG1 (`pbmtojbg`, timed including process start) and, when a
`jbig2` (jbig2enc) binary is on PATH, its generic-region coder.

    python bench/jbig2_bench.py [--runs 5] [--images DIR]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from plic import jbig2  # noqa: E402

EFFORTS = jbig2.EFFORTS
JBIG2ENC_LIKE = dict(template=0, tpgdon=True)  # what jbig2enc's generic coder uses


def edge_map(path: Path) -> np.ndarray:
    import cv2
    from PIL import Image
    img = Image.open(path).convert("RGB")
    scale = 1024 / max(img.size)
    if scale < 1:
        img = img.resize((round(img.width * scale), round(img.height * scale)), Image.LANCZOS)
    return (cv2.Canny(np.asarray(img), 100, 200) > 0).astype(np.uint8)


def best_time(func, runs: int) -> float:
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        func()
        best = min(best, time.perf_counter() - start)
    return best


def write_pbm(path: Path, bitmap: np.ndarray) -> None:
    h, w = bitmap.shape
    path.write_bytes(b"P4\n%d %d\n" % (w, h) + np.packbits(bitmap, axis=1).tobytes())


def run_tool(cmd, runs: int) -> float:
    return best_time(lambda: subprocess.run(cmd, check=True, capture_output=True), runs)


def jbig1(bitmap, tmp: Path, runs: int):
    """(bytes, encode seconds) of pbmtojbg, process start included."""
    src, dst = tmp / "in.pbm", tmp / "out.jbg"
    write_pbm(src, bitmap)
    seconds = run_tool(["pbmtojbg", str(src), str(dst)], runs)
    return dst.stat().st_size, seconds


def jbig2enc(bitmap, tmp: Path, runs: int):
    """(bytes, encode seconds) of `jbig2` generic-region coding with TPGDON."""
    src, dst = tmp / "in.pbm", tmp / "out.jb2"
    write_pbm(src, bitmap)
    cmd = ["jbig2", "-d", "-p", str(src)]
    seconds = run_tool(cmd, runs)
    dst.write_bytes(subprocess.run(cmd, check=True, capture_output=True).stdout)
    return dst.stat().st_size, seconds


def measure(path: Path, tmp: Path, runs: int) -> dict:
    bitmap = edge_map(path)
    mp = bitmap.size / 1e6
    region = jbig2.encode_generic_region(bitmap)
    stream = jbig2.encode_embedded(bitmap)
    row = dict(name=path.name, shape=f"{bitmap.shape[1]}x{bitmap.shape[0]}",
               pixels=bitmap.size, template=region.template, tpgdon=region.tpgdon,
               t0tp=len(jbig2.encode_embedded(bitmap, **JBIG2ENC_LIKE)),
               dec=mp / best_time(lambda: jbig2.decode(stream), runs))
    for effort in EFFORTS:
        row[effort] = len(jbig2.encode_embedded(bitmap, effort=effort))
        row[effort + "_mps"] = mp / best_time(
            lambda: jbig2.encode_embedded(bitmap, effort=effort), 1 if effort == "max" else runs)
    assert np.array_equal(jbig2.decode(stream), bitmap)
    row["jbig1"], seconds = jbig1(bitmap, tmp, runs)
    row["jbig1_mps"] = mp / seconds
    if shutil.which("jbig2"):
        row["jbig2enc"], seconds = jbig2enc(bitmap, tmp, runs)
        row["jbig2enc_mps"] = mp / seconds
    return row


def print_table(rows: list) -> None:
    has_enc = "jbig2enc" in rows[0]
    head = (f"{'image':<20} {'size':>9} {'T':>2} {'fast B':>6} {'def B':>6} {'max B':>6} "
            f"{'bpp':>5} {'T0+TP':>6} {'JBIG1 B':>7} {'d/J1':>5} {'d/T0':>5} "
            f"{'fast':>5} {'def':>5} {'max':>4} {'dec':>5} {'J1':>5}")
    if has_enc:
        head += f" {'jbig2 B':>7} {'d/j2':>5} {'j2 MP/s':>7}"
    print(head)
    for r in rows:
        line = (f"{r['name']:<20} {r['shape']:>9} {r['template']:>1}{'T' if r['tpgdon'] else '-'} "
                f"{r['fast']:>6} {r['default']:>6} {r['max']:>6} "
                f"{8 * r['default'] / r['pixels']:>5.3f} {r['t0tp']:>6} {r['jbig1']:>7} "
                f"{r['default'] / r['jbig1']:>5.3f} {r['default'] / r['t0tp']:>5.3f} "
                f"{r['fast_mps']:>5.1f} {r['default_mps']:>5.1f} {r['max_mps']:>4.1f} "
                f"{r['dec']:>5.1f} {r['jbig1_mps']:>5.1f}")
        if has_enc:
            line += (f" {r['jbig2enc']:>7} {r['default'] / r['jbig2enc']:>5.3f} "
                     f"{r['jbig2enc_mps']:>7.1f}")
        print(line)

    def med(f):
        return statistics.median(f(r) for r in rows)

    print()
    print("median bpp: " + ", ".join(
        f"{k} {med(lambda r: 8 * r[k] / r['pixels']):.3f}"
        for k in (*EFFORTS, "t0tp", "jbig1")))
    for effort in EFFORTS:
        print(f"{effort:>7}: median MP/s {med(lambda r: r[effort + '_mps']):6.1f}, "
              f"median bytes / JBIG1 {med(lambda r: r[effort] / r['jbig1']):.3f}, "
              f"/ T0+TPGDON {med(lambda r: r[effort] / r['t0tp']):.3f} "
              f"(worst {max(r[effort] / r['t0tp'] for r in rows):.3f})")
    print(f"median MP/s: decode {med(lambda r: r['dec']):.1f}, "
          f"JBIG1 (pbmtojbg incl. process start) {med(lambda r: r['jbig1_mps']):.1f}")
    if has_enc:
        print(f"median default/jbig2enc bytes {med(lambda r: r['default'] / r['jbig2enc']):.3f}")
    totals = {k: sum(r[k] for r in rows) for k in (*EFFORTS, "t0tp", "jbig1")}
    print(f"total bytes: {totals}")
    picks = {t: sum(r["template"] == t for r in rows) for t in range(4)}
    print(f"templates picked by default: {picks}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--images", type=Path, default=REPO.parent / "shared" / "images")
    args = parser.parse_args()
    paths = sorted(p for p in args.images.glob("*") if p.suffix in (".png", ".jpg"))
    warm = np.eye(64, dtype=np.uint8)
    jbig2.decode(jbig2.encode_embedded(warm))               # numba compile / cache load
    print(f"numba: {jbig2.NUMBA}; jbig2enc on PATH: {bool(shutil.which('jbig2'))}")
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(p, Path(tmp), args.runs) for p in paths]
    print_table(rows)


if __name__ == "__main__":
    main()
