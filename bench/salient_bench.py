"""Salient detectors on a labelled set: precision, recall, box coverage, salient bytes, time.

    python -m bench.salient_bench [--cache DIR] [--peers] [--face-threshold S] [--word-threshold S]
                                  [--min-face PX]

The set is built at run time, nothing of it is in the repository:

* photos with no face and no text: ../shared/images (the nature and still-life ones) and the
  ``nature`` folder of Debian's ``mate-backgrounds`` (GPL-2+; fetched with ``apt-get download``
  into ``--cache`` when not installed);
* real faces: ``astronaut.png`` (../shared/images) and ``messi5.jpg`` from Debian's
  ``opencv-doc`` examples (the package's `Files: *` entry: Apache-2.0 AND BSD-3-Clause; not
  shipped here), each face box labelled by hand;
* composites with known boxes: those two faces pasted at 24-160 px onto the face-free photos,
  and words drawn in DejaVu Sans (Debian ``fonts-dejavu-core``) at x-heights of 12-32 px, dark
  on a light sign or white with a dark outline.

Per detector (``faces``, ``text``) over its labelled images and all face- and text-free
photos: precision (kept candidates that lie on a labelled box of their kind / all kept),
recall (labelled boxes of which the stored mask keeps >= 60 %), mean box coverage, and ms per
image. Then, for the photos with neither, the salient bytes of ``auto`` (default budget) as a
share of the .plic files' bytes, and the wall time of `plic encode` over them (one process per
run, the prompt given so no caption model runs) with ``--salient none`` and ``auto``, twice
each, alternating. ``--peers`` adds the
detectors PLIC used before (OpenCV's Haar cascades, frontal + profile both ways; pytesseract on
the whole image) measured on the same images in the same run.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from plic.codec import fileformat, pack, salient
from plic.codec.salient import Candidate
from plic.deps import require
from plic.image import load_rgb, to_working
from plic.salient import detect, faces, text

REPO = Path(__file__).resolve().parents[1]

SHARED = REPO.parent / "shared" / "images"
#: ../shared/images with neither a face nor text (motorcycle and rocket carry lettering).
SHARED_PLAIN = ["autumn-painting.jpg", "chelsea.png", "coffee.png", "colorful-cups.jpg", "dandelion.jpg",
                "evening-boats.jpg", "foggy-pier.jpg", "forest-path.jpg", "kleiber-bird.jpg", "ladybird.jpg"]
#: mate-backgrounds' nature photos not already in ../shared/images (TwoWings, LadyBird).
MATE_PLAIN = ["Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg",
              "RainDrops.jpg", "Storm.jpg", "Wood.jpg", "YellowFlower.jpg"]
#: Hand-labelled faces (x, y, w, h) in the original images: forehead to chin, ear to ear.
FACES = {"astronaut.png": (170, 55, 106, 126), "messi5.jpg": (220, 86, 39, 49)}
WORDS = ["Harbour", "OPEN 24h", "Bakery", "Exit 12", "Station", "Museum", "No parking", "Hotel"]
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
DEJAVU_X_HEIGHT = 0.547  # of the em
KEPT_SHARE = 0.6  # a labelled box counts as found when this share of it is kept


@dataclass
class Sample:
    name: str
    rgb: np.ndarray  # working image
    labels: dict[str, list[tuple[int, int, int, int]]]  # source -> boxes; a missing source: not judged
    original_bytes: int = 0
    sizes: dict[str, list[int]] = field(default_factory=dict)  # face height / x-height of each box

    @property
    def plain(self) -> bool:
        return self.labels == {"faces": [], "text": []}


# --- the set -----------------------------------------------------------------------------------

def debian_files(package: str, folder: str, cache: Path) -> Path:
    """``folder`` of an installed Debian package, else of its .deb fetched into ``cache``."""
    if Path(folder).is_dir():
        return Path(folder)
    root = cache / package
    if not (root / folder.lstrip("/")).is_dir():
        root.mkdir(parents=True, exist_ok=True)
        subprocess.run(["apt-get", "download", package], cwd=root, check=True, capture_output=True)
        (deb,) = root.glob(f"{package}_*.deb")
        subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
        deb.unlink()
    return root / folder.lstrip("/")


def working(path: Path) -> tuple[np.ndarray, float]:
    """The working image of ``path`` and its scale from the original."""
    original = load_rgb(path)
    rgb = to_working(original)
    return rgb, rgb.shape[1] / original.shape[1]


def scaled(box, scale: float) -> tuple[int, int, int, int]:
    return tuple(int(round(v * scale)) for v in box)


def paste_face(base: np.ndarray, face: np.ndarray, height: int, at: tuple[int, int]) -> tuple:
    """``face`` (a crop that is all face) scaled to ``height`` and pasted at ``at``; its box."""
    width = max(1, round(face.shape[1] * height / face.shape[0]))
    small = np.asarray(Image.fromarray(face).resize((width, height), Image.LANCZOS))
    x, y = at
    base[y:y + height, x:x + width] = small
    return x, y, width, height


def draw_word(base: np.ndarray, word: str, x_height: int, at: tuple[int, int], sign: bool) -> tuple:
    """``word`` drawn at ``at`` with the given x-height, on a light sign or outlined; its box."""
    image = Image.fromarray(base)
    draw = ImageDraw.Draw(image)
    font = ImageFont.truetype(FONT, round(x_height / DEJAVU_X_HEIGHT))
    if sign:
        left, top, right, bottom = draw.textbbox(at, word, font=font)
        pad = x_height // 2
        draw.rectangle((left - pad, top - pad, right + pad, bottom + pad), fill=(236, 232, 220))
        draw.text(at, word, font=font, fill=(25, 25, 30))
    else:
        draw.text(at, word, font=font, fill=(255, 255, 255), stroke_width=max(1, x_height // 8),
                  stroke_fill=(0, 0, 0))
    left, top, right, bottom = draw.textbbox(at, word, font=font)
    base[:] = np.asarray(image)
    return left, top, right - left, bottom - top


def build_set(cache: Path) -> list[Sample]:
    opencv = debian_files("opencv-doc", "/usr/share/doc/opencv-doc/examples/data", cache)
    samples = []
    for path in plain_paths(cache):
        rgb, _ = working(path)
        samples.append(Sample(path.name, rgb, {"faces": [], "text": []}, path.stat().st_size))
    faces = []
    for name, path in (("astronaut.png", SHARED / "astronaut.png"), ("messi5.jpg", opencv / "messi5.jpg")):
        rgb, scale = working(path)
        box = scaled(FACES[name], scale)
        samples.append(Sample(name, rgb, {"faces": [box]}, path.stat().st_size, {"faces": [box[3]]}))
        x, y, w, h = box
        faces.append(rgb[y:y + h, x:x + w])
    rng = np.random.default_rng(9)
    backgrounds = [s for s in samples if s.plain][::2]
    for i, background in enumerate(backgrounds):
        rgb = background.rgb.copy()
        height, width = rgb.shape[:2]
        face_boxes, face_sizes = [], (24, 40, 64, 100, 160)[i % 2::2]
        for j, size in enumerate(face_sizes):
            face = faces[(i + j) % 2]
            x = int(rng.integers(0, width - 2 * size)) if j % 2 == 0 else width // 2 + int(rng.integers(0, width // 2 - 2 * size))
            face_boxes.append(paste_face(rgb, face, size, (x, int(rng.integers(0, height - size)))))
        samples.append(Sample(f"faces on {background.name}", rgb, {"faces": face_boxes}, background.original_bytes,
                              {"faces": list(face_sizes)}))
        rgb = background.rgb.copy()
        text_boxes = []
        for j, x_height in enumerate((12, 16, 24, 32)):
            y = 20 + j * (height - 60) // 4
            x = int(rng.integers(10, width // 3))
            word = WORDS[(i + j) % len(WORDS)]
            text_boxes.append(draw_word(rgb, word, x_height, (x, y), sign=(i + j) % 2 == 0))
        samples.append(Sample(f"text on {background.name}", rgb, {"text": text_boxes}, background.original_bytes,
                              {"text": [12, 16, 24, 32]}))
    return samples


# --- the detectors -----------------------------------------------------------------------------

@functools.cache
def _haar_cascade(name: str):
    """One cascade classifier, read once (PLIC's earlier detector kept them the same way)."""
    import cv2

    return cv2.CascadeClassifier(os.path.join(cv2.data.haarcascades, f"haarcascade_{name}.xml"))


def haar_faces(rgb: np.ndarray) -> list[Candidate]:
    """PLIC's earlier face detector, for comparison: frontal + profile cascades, profile also on
    the mirrored image, minimum side 5 % of the image, minNeighbors 5, boxes grown by the same
    margin the current detector uses (faces.FACE_MARGIN)."""
    import cv2

    gray = cv2.equalizeHist(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    height, width = gray.shape
    side = max(20, int(min(height, width) * 0.05))
    found = []
    for name, flipped in (("frontalface_default", False), ("profileface", False), ("profileface", True)):
        image = gray[:, ::-1].copy() if flipped else gray
        rects, _, weights = _haar_cascade(name).detectMultiScale3(image, scaleFactor=1.1, minNeighbors=5,
                                                                  minSize=(side, side), outputRejectLevels=True)
        for (x, y, w, h), weight in zip(np.asarray(rects).reshape(-1, 4), np.asarray(weights).ravel()):
            x, y, w, h = int(width - x - w if flipped else x), int(y), int(w), int(h)
            box = salient.grow_box((x, y, w, h), round(w * faces.FACE_MARGIN), round(h * faces.FACE_MARGIN),
                                width, height)
            found.append(Candidate("faces", "face", box, 1 - float(np.exp(-max(float(weight), 0) / 3))))
    return found


def pytesseract_text(rgb: np.ndarray) -> list[Candidate]:
    """PLIC's earlier text detector, for comparison: pytesseract on the whole image (it writes a
    temporary PNG per call), words of confidence >= 60."""
    pytesseract = require("pytesseract", package="pytesseract", purpose="The --peers text baseline")

    data = pytesseract.image_to_data(rgb, output_type=pytesseract.Output.DICT)
    return [Candidate("text", t.strip(), (x, y, w, h), float(c) / 100)
            for t, c, x, y, w, h in zip(data["text"], data["conf"], data["left"], data["top"],
                                        data["width"], data["height"])
            if str(t).strip() and float(c) >= 60 and w > 0 and h > 0]


@dataclass
class Tally:
    kept: int = 0
    true: int = 0
    labelled: int = 0
    found: int = 0
    coverage: list[float] = field(default_factory=list)
    by_size: dict[int, list[float]] = field(default_factory=dict)  # label size -> coverages
    seconds: list[float] = field(default_factory=list)
    plain_bytes: int = 0

    def row(self, name: str) -> str:
        precision = self.true / self.kept if self.kept else float("nan")
        recall = self.found / self.labelled if self.labelled else float("nan")
        return (f"| {name} | {self.kept} | {precision:.2f} | {self.found}/{self.labelled} = {recall:.2f} | "
                f"{np.mean(self.coverage):.2f} | {self.plain_bytes} | {1000 * np.mean(self.seconds):.0f} | "
                + ", ".join(f"{size}: {sum(s >= KEPT_SHARE for s in shares)}/{len(shares)}"
                            for size, shares in sorted(self.by_size.items())) + " |")


def on_label(candidate: Candidate, boxes) -> bool:
    """Whether half of ``candidate``'s box or more lies on one of ``boxes``."""
    x, y, w, h = candidate.box
    for bx, by, bw, bh in boxes:
        overlap = max(0, min(x + w, bx + bw) - max(x, bx)) * max(0, min(y + h, by + bh) - max(y, by))
        if overlap >= 0.5 * min(w * h, bw * bh):
            return True
    return False


def judge(tally: Tally, sample: Sample, source: str, kept: list[Candidate], mask: np.ndarray,
          salient_bytes: int) -> None:
    boxes = sample.labels.get(source)
    if boxes is None:
        return
    mine = [c for c in kept if c.source == source]
    tally.kept += len(mine)
    tally.true += sum(on_label(c, boxes) for c in mine)
    for (x, y, w, h), size in zip(boxes, sample.sizes.get(source, [0] * len(boxes))):
        share = float(mask[y:y + h, x:x + w].mean())
        tally.by_size.setdefault(size, []).append(share)
        tally.labelled += 1
        tally.found += share >= KEPT_SHARE
        tally.coverage.append(share)
    if sample.plain:
        tally.plain_bytes += salient_bytes


def run_detector(name: str, detector, samples: list[Sample], threshold: float) -> Tally:
    source = "faces" if "face" in name else "text"
    tally = Tally()
    for sample in samples:
        if source not in sample.labels:
            continue
        started = time.perf_counter()
        found = detector(sample.rgb)
        tally.seconds.append(time.perf_counter() - started)
        kept = [c for c in found if detect.rejection(c, threshold) is None]
        stored = salient.store(sample.rgb, kept)
        judge(tally, sample, source, stored.report.kept, stored.mask, stored.report.salient_bytes)
    return tally


def cli_seconds(paths: list[Path], salient_option: str, work: Path, min_face: int) -> float:
    """Wall time of one `plic encode` process over a folder holding ``paths`` (Python start,
    loading, encoding, writing; the prompt given, so no caption model)."""
    images, out = work / "images", work / f"out{salient_option}"
    if not images.is_dir():
        images.mkdir(parents=True)
        for path in paths:
            (images / path.name).symlink_to(path)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "plic", "encode", str(images), "-o", str(out), "--overwrite",
                    "--prompt", "a photo", "--salient", salient_option, "--min-face", str(min_face)],
                   cwd=REPO, check=True,
                   capture_output=True)
    return time.perf_counter() - started


def plain_paths(cache: Path) -> list[Path]:
    mate = debian_files("mate-backgrounds", "/usr/share/backgrounds/mate/nature", cache)
    return [SHARED / n for n in SHARED_PLAIN] + [mate / n for n in MATE_PLAIN]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "plic-bench",
                        help="where Debian packages that are not installed are unpacked")
    parser.add_argument("--peers", action="store_true", help="also measure the earlier detectors")
    parser.add_argument("--face-threshold", type=float, default=faces.DEFAULT_FACE_THRESHOLD)
    parser.add_argument("--min-face", type=int, default=faces.DEFAULT_MIN_FACE)
    parser.add_argument("--word-threshold", type=float, default=text.DEFAULT_WORD_THRESHOLD)
    args = parser.parse_args(argv)
    if shutil.which("apt-get") is None and not Path("/usr/share/backgrounds/mate/nature").is_dir():
        sys.exit("salient_bench: needs Debian's opencv-doc and mate-backgrounds (apt-get)")
    samples = build_set(args.cache)
    plain = [s for s in samples if s.plain]
    print(f"{len(samples)} images: {len(plain)} with neither face nor text, "
          f"{sum(len(s.labels.get('faces', [])) for s in samples)} labelled faces, "
          f"{sum(len(s.labels.get('text', [])) for s in samples)} labelled words\n")
    detectors = [("faces: libfacedetection", functools.partial(faces.detect_faces, min_face=args.min_face),
                  args.face_threshold),
                 ("text: text_lines + Tesseract", text.detect_text, args.word_threshold)]
    if args.peers:
        detectors += [("faces: Haar cascades (before)", haar_faces, 0.0),
                      ("text: pytesseract, whole image (before)", pytesseract_text, 0.6)]
    print("| detector | kept | precision | recall (>= 60 % kept) | mean coverage | salient B on plain photos "
          "| ms/image | found by size (face height / x-height, px) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, detector, threshold in detectors:
        print(run_detector(name, detector, samples, threshold).row(name), flush=True)

    print("\n| photos with neither face nor text | salient B | file B | salient share |")
    print("|---|---|---|---|")
    settings = detect.SalientSettings.from_options({"min_face": args.min_face})  # auto sources
    stored = [detect.run_salient(s.rgb, settings, max_bytes=s.original_bytes) for s in plain]
    salient_bytes = sum(st.report.salient_bytes for st in stored)
    file_bytes = sum(len(fileformat.dumps(pack.encode_working(s.rgb, (s.rgb.shape[1], s.rgb.shape[0]),
                                                               prompt="a photo", salient=st.part)))
                     for s, st in zip(plain, stored))
    print(f"| {len(plain)} | {salient_bytes} | {file_bytes} | {salient_bytes / file_bytes:.2%} |")

    print(f"\n| `plic encode` of the {len(plain)} photos, one process | s |")
    print("|---|---|")
    with tempfile.TemporaryDirectory() as work:
        times = {}
        for option in ("none", "auto", "none", "auto"):
            times.setdefault(option, []).append(cli_seconds(plain_paths(args.cache), option, Path(work),
                                                            args.min_face))
            print(f"| --salient {option} | {times[option][-1]:.1f} |", flush=True)
    print(f"\nauto / none (best of 2 each): {min(times['auto']) / min(times['none']):.2f}x")


if __name__ == "__main__":
    main()
