"""The images BRISQUE is hardest to reproduce on, and the authors' BRISQUE and CPBD of each.

Writes tests/data/metric_reference/: flat graphics (hard-edged shapes, an anti-aliased logo, the
logo at JPEG quality 10), rendered text, and JPEG quality 5/10/15 copies of four photos of
tests/data, then ``reference.json`` with the values of the packages the paper's authors used,
computed from the files just written, as ../shared/images/metric_reference.json was made.

Those packages need numpy 1.x, so this runs in a Python of its own, not PLIC's:

  python3.11 -m venv /tmp/brisque-ref
  /tmp/brisque-ref/bin/pip install "numpy==1.26.*" "scipy==1.13.*" brisque==0.2.0 cpbd==1.0.7 \\
      libsvm-official "opencv-python-headless<4.12" "scikit-image<0.25"
  /tmp/brisque-ref/bin/python scripts/make_metric_reference.py

The images depend on Pillow's JPEG coder and FreeType, so tests read the committed files; the
values follow the files whichever Pillow wrote them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import scipy.ndimage
from PIL import Image, ImageDraw, ImageFont

scipy.ndimage.imread = None  # cpbd imports it (gone since SciPy 1.2) for its command line only
import cpbd  # noqa: E402
from brisque import BRISQUE  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
OUT = DATA / "metric_reference"
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
JPEG_QUALITIES = (5, 10, 15)
SIZE = (512, 320)
TEXT = ("Extreme image compression keeps a\nfew hundred bytes of an image: a caption,\n"
        "an edge map and the salient regions.\nThe decoder paints the rest with a\n"
        "diffusion model. Quality is judged by\nBRISQUE, CPBD, DINOv2 and LPIPS.")


def flat_shapes() -> Image.Image:
    """Hard-edged shapes in three colours on white: no pixel between two colours."""
    image = Image.new("RGB", SIZE, (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.ellipse((40, 60, 220, 240), fill=(200, 30, 40))
    draw.rectangle((270, 90, 470, 230), fill=(20, 60, 160))
    draw.polygon([(150, 80), (210, 220), (90, 220)], fill=(250, 200, 0))
    return image


def flat_logo() -> Image.Image:
    """A badge with a word and a disc on a plain background, drawn at 4x and scaled down with
    Lanczos, so its edges are anti-aliased as a real logo's are."""
    scale = 4
    image = Image.new("RGB", (SIZE[0] * scale, SIZE[1] * scale), (245, 243, 238))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((100 * scale, 95 * scale, 412 * scale, 225 * scale), radius=30 * scale,
                           fill=(25, 50, 110))
    draw.ellipse((130 * scale, 120 * scale, 210 * scale, 200 * scale), fill=(240, 140, 30))
    font = ImageFont.truetype(FONT, 64 * scale)
    draw.text((230 * scale, 118 * scale), "PLIC", fill=(255, 255, 255), font=font)
    return image.resize(SIZE, Image.LANCZOS)


def rendered_text() -> Image.Image:
    """Black anti-aliased text on white, as a screenshot of a page."""
    image = Image.new("RGB", SIZE, (255, 255, 255))
    ImageDraw.Draw(image).multiline_text((20, 30), TEXT, fill=(0, 0, 0),
                                         font=ImageFont.truetype(FONT, 21), spacing=14)
    return image


def write_images() -> list[Path]:
    OUT.mkdir(exist_ok=True)
    paths = []

    def save(image: Image.Image, name: str, **options) -> None:
        image.save(OUT / name, **options)
        paths.append(OUT / name)

    save(flat_shapes(), "flat-shapes.png", optimize=True)
    logo = flat_logo()
    save(logo, "flat-logo.png", optimize=True)
    save(logo, "flat-logo-q10.jpg", quality=10)
    save(rendered_text(), "text.png", optimize=True)
    for name in PHOTOS:
        photo = Image.open(DATA / name).convert("RGB")
        for quality in JPEG_QUALITIES:
            save(photo, f"{Path(name).stem}-q{quality}.jpg", quality=quality)
    return paths


def authors_values(path: Path) -> dict:
    """BRISQUE and CPBD as ../shared/images/metric_reference.json has them (every image here is
    under 1024 px, so there is nothing to scale)."""
    image = Image.open(path).convert("RGB")
    assert max(image.size) <= 1024, path
    rgb = np.asarray(image)
    return {"width": image.width, "height": image.height,
            "brisque": round(float(BRISQUE(url=False).score(rgb)), 4),
            "cpbd": round(float(cpbd.compute(np.asarray(image.convert("L")))), 4)}


def main() -> None:
    from importlib.metadata import version

    images = {path.name: authors_values(path) for path in write_images()}
    about = (f"BRISQUE (brisque {version('brisque')}, BRISQUE(url=False).score on the RGB uint8 "
             f"array) and CPBD (cpbd {version('cpbd')}, cpbd.compute on PIL's 'L' grayscale) of "
             f"each image, computed with numpy {version('numpy')} and scipy {version('scipy')} by "
             "scripts/make_metric_reference.py, which also made the images.")
    text = json.dumps({"about": about, "images": images}, indent=1) + "\n"
    (OUT / "reference.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
