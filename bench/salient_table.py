"""Salient regions on every shared image: what each detector found, and the salient bytes and
total bpp of the .plic file without a budget (only the raw-size cap) and with the default one.

    python -m bench.salient_table [--sources faces,text] [--models-dir DIR] [--budget BPP]

Prints a Markdown table. bpp counts the whole file over the working image's pixels.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from plic.codec import fileformat, pack, salient
from plic.image import load_rgb, to_working
from plic.salient import detect

REPO = Path(__file__).resolve().parents[1]

IMAGES = REPO.parent / "shared" / "images"


def file_bytes(base: fileformat.PlicFile, stored: salient.Stored) -> int:
    """Size of ``base`` with the stored salient pixels added."""
    base.salient_mask, base.salient_regions = stored.mask_stream, stored.regions
    return len(fileformat.dumps(base))


def found_text(result: detect.SalientResult) -> str:
    counts = result.counts()
    found = ", ".join(f"{n} {source}" for source, n in counts.items()) or "nothing"
    return found + ("" if not result.notes else " (" + "; ".join(n.split(":")[0] for n in result.notes) + ")")


def stored_text(stored: salient.Stored, total: int, pixels: int) -> list[str]:
    report = stored.report
    codec_name = report.codec if report.codec in salient.LOSSLESS_CODECS else f"webp q{report.quality}"
    kept = f"{len(report.kept)}/{len(report.kept) + len(report.dropped)}"
    return [str(report.salient_bytes), f"{total * 8 / pixels:.3f}", kept if report.kept or report.dropped else "-",
            codec_name if report.kept else "-"]


def row(path: Path, sources, budget_bpp: float, models_dir) -> list[str]:
    original = load_rgb(path)
    work = to_working(original)
    pixels = work.shape[0] * work.shape[1]
    started = time.perf_counter()
    result = detect.find_salient(work, detect.SalientSettings(sources, models_dir=models_dir), strict=False)
    seconds = time.perf_counter() - started
    base = pack.encode_image(original, prompt="a photo")
    plain = salient.store(work, result.candidates, budget=salient.UNLIMITED)
    budget = salient.Budget(max_bpp=budget_bpp, max_bytes=path.stat().st_size)
    limited = salient.store(work, result.candidates, budget=budget)
    return ([path.name, f"{work.shape[1]}x{work.shape[0]}", found_text(result), f"{seconds:.1f}"]
            + stored_text(plain, file_bytes(base, plain), pixels)
            + stored_text(limited, file_bytes(base, limited), pixels))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="faces,text")
    parser.add_argument("--budget", type=float, default=salient.DEFAULT_MAX_BPP)
    parser.add_argument("--models-dir", type=Path)
    args = parser.parse_args(argv)
    sources = detect.parse_sources(args.sources)
    header = ["image", "working size", "found", "detect s", "salient B (no budget)", "total bpp",
              "kept", "stored as", f"salient B (budget {args.budget} bpp)", "total bpp", "kept", "stored as"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for path in sorted(p for p in IMAGES.iterdir() if p.suffix in (".png", ".jpg")):
        print("| " + " | ".join(row(path, sources, args.budget, args.models_dir)) + " |", flush=True)


if __name__ == "__main__":
    main()
