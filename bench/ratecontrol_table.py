"""Rate control on every shared image: the file at the paper's settings and at a target, what
share of the edge pixels was kept, the longest fragment removed, and how long the search took
next to encoding the image, all in the same run.

    python -m bench.ratecontrol_table [--target-bpp 0.05] [--repeats 3]

"encode" is what `plic encode --salient auto` does for one image without writing it: load,
working image, salient detection (faces; text where Tesseract is installed), encode at the
paper's settings. "codec" is only the last step (Canny, JBIG2, palette, file). "search" is
plic.ratecontrol.fit given the same working image and salient part. Times are the best of
--repeats runs (detection runs once). Prints a Markdown table; bpp counts the whole file.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from bench.timing import best_time
from plic.codec import fileformat, pack, ratecontrol
from plic.image import load_rgb
from plic.salient import detect

REPO = Path(__file__).resolve().parents[1]

IMAGES = REPO.parent / "shared" / "images"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-bpp", type=float, default=ratecontrol.SUGGESTED_BPP)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"target {args.target_bpp} bpp; times in ms, best of {args.repeats}\n")
    print("| image | size | paper B (bpp) | target B | result B (bpp) | result/target | edges kept | "
          "longest removed px | changed | encode ms | codec ms | search ms | search/encode | search/codec |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for path in sorted(p for p in IMAGES.iterdir() if p.suffix in (".png", ".jpg")):
        start = time.perf_counter()
        original_size, work = pack.working_image(load_rgb(path))
        stored = detect.run_salient(work, detect.SalientSettings(detect.DEFAULT_SOURCES), strict=False)
        part = stored.part
        fileformat.dumps(pack.encode_working(work, original_size, salient=part))
        encode_s = time.perf_counter() - start
        _, codec_s = best_time(lambda: fileformat.dumps(pack.encode_working(work, original_size, salient=part)),
                               args.repeats)
        size = (work.shape[1], work.shape[0])
        target = ratecontrol.target_bytes(size, args.target_bpp)
        result, search_s = best_time(lambda: ratecontrol.fit(work, original_size, target, salient=part),
                                     args.repeats)
        bpp = pack.bits_per_pixel(len(result.data), size)
        changed = "; ".join(result.changes()) or "nothing (fits)"
        if result.reason:
            changed += f"; NOT met: {result.reason}"
        print(f"| {path.name} | {size[0]}x{size[1]} | {result.start_bytes} "
              f"({pack.bits_per_pixel(result.start_bytes, size):.3f}) | {target} | {len(result.data)} "
              f"({bpp:.4f}) | {len(result.data) / target:.2f} | {result.kept_share:.1%} | "
              f"{result.longest_removed} | {changed} | {encode_s * 1e3:.0f} | {codec_s * 1e3:.0f} | "
              f"{search_s * 1e3:.0f} | {search_s / encode_s:.0%} | {search_s / codec_s:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
