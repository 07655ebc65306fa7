"""Fuzzing what a stranger sends (issues 23 and 24): mutated .plic files whose checksums are made
right again, so that the damage reaches the JBIG2 edge and mask streams, the palette and the
salient regions behind them, and damaged images of every format PLIC reads. Each file is read in
a process with an address-space limit and a CPU-time alarm per file: every one must be read or
refused with PLIC's own error, inside both bounds."""

import io
import json
import random
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image, features

from plic.codec import fileformat, pack
from tests.support.images import REPO, load_shared

#: What one file may cost: CPU seconds (an alarm, far above the milliseconds these take) and
#: bytes of address space for the whole reading process.
SECONDS_PER_FILE = 5
MEMORY = 3 << 30

#: Reads each file named on the command line with FUNCTION under the bounds; prints one JSON
#: line per file: "ok", "refused: <PLIC's message>", or what went wrong.
DRIVER = """
import json, resource, signal, sys
resource.setrlimit(resource.RLIMIT_AS, ({memory}, {memory}))
class Slow(Exception):
    pass
def alarm(*_):
    raise Slow()
signal.signal(signal.SIGPROF, alarm)
from plic.codec import pack, fileformat
from plic import image
from plic.errors import PlicError
read = {{"plic": lambda p: pack.unpack(fileformat.load(p), p), "image": image.load_rgb}}["{kind}"]
for path in sys.argv[1:]:
    signal.setitimer(signal.ITIMER_PROF, {seconds})
    try:
        read(path)
        outcome = "ok"
    except PlicError as exc:
        outcome = "refused: " + str(exc)
    except Slow:
        outcome = "over the time bound"
    except BaseException as exc:
        outcome = "raised " + type(exc).__name__ + ": " + str(exc)
    signal.setitimer(signal.ITIMER_PROF, 0)
    print(json.dumps([path, outcome]), flush=True)
"""


def read_all(kind: str, paths) -> dict:
    """path -> outcome for every file, read by DRIVER in one bounded process."""
    driver = DRIVER.format(memory=MEMORY, seconds=SECONDS_PER_FILE, kind=kind)
    result = subprocess.run([sys.executable, "-c", driver, *map(str, paths)], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return dict(json.loads(line) for line in result.stdout.splitlines())


def bad_outcomes(outcomes: dict) -> dict:
    return {path: outcome for path, outcome in outcomes.items()
            if outcome != "ok" and not outcome.startswith("refused: ")}


# -- .plic files ----------------------------------------------------------------------------------

def sections_of(data: bytes) -> tuple[bytes, list[list]]:
    """The header and the [type, payload] of each section of a well-formed file."""
    pos, sections = fileformat.HEADER.size + 4, []
    while pos < len(data):
        kind, length = fileformat.SECTION_HEAD.unpack_from(data, pos)
        start = pos + fileformat.SECTION_HEAD.size
        sections.append([kind, data[start:start + length]])
        pos = start + length + 4
    return data[:fileformat.HEADER.size], sections


def sealed(header: bytes, sections) -> bytes:
    """A file of ``header`` and ``sections`` whose every checksum is right."""
    out = header + struct.pack(">I", zlib.crc32(header))
    for kind, payload in sections:
        out += kind + struct.pack(">I", len(payload)) + payload + struct.pack(
            ">I", zlib.crc32(payload, zlib.crc32(kind)))
    return out


def mutate(payload: bytes, rng: random.Random) -> bytes:
    """One of: flipped bits, bytes set to 0x00 / 0xFF (JBIG2's sizes and offsets live near the
    start), a cut, a copy of a stretch appended (a repeated segment), a stretch dropped."""
    data = bytearray(payload)
    if not data:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40)))
    choice = rng.randrange(5)
    if choice == 0:
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif choice == 1:
        head = min(len(data), 64)
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(head)] = rng.choice((0x00, 0xFF, 0x7F, 0x80))
    elif choice == 2:
        del data[rng.randrange(len(data)):]
    elif choice == 3:
        start = rng.randrange(len(data))
        data += data[start:start + rng.randrange(1, 200)] * rng.randrange(1, 30)
    else:
        start = rng.randrange(len(data))
        del data[start:start + rng.randrange(1, 50)]
    return bytes(data)


@pytest.fixture(scope="module")
def full_plic() -> bytes:
    """A file with every section: edges, palette, salient mask and regions (two codecs), a
    prompt and decode settings."""
    rgb = load_shared("astronaut.png", 192)
    mask = np.zeros(rgb.shape[:2], bool)
    mask[20:60, 40:90] = True
    mask[120:150, 10:40] = True
    plic = pack.encode_image(rgb, prompt="an astronaut", salient_mask=mask,
                              decode_settings={"seed": 5, "negative_prompt": "blur"})
    regions = plic.salient_regions
    buffer = io.BytesIO()
    Image.fromarray(rgb[regions[-1].y:regions[-1].y + regions[-1].height,
                        regions[-1].x:regions[-1].x + regions[-1].width]).save(buffer, "WEBP", quality=60)
    regions[-1] = fileformat.SalientRegion(regions[-1].x, regions[-1].y, regions[-1].width,
                                           regions[-1].height, "webp", buffer.getvalue())
    assert {kind for kind, _ in sections_of(fileformat.dumps(plic))[1]} == set(fileformat.KNOWN_SECTIONS)
    return fileformat.dumps(plic)


def test_mutated_sections_behind_right_checksums_are_read_or_refused(full_plic, tmp_path):
    rng = random.Random(24)
    header, sections = sections_of(full_plic)
    paths = []
    for i in range(400):
        mutated = [list(s) for s in sections]
        target = mutated[i % len(mutated)]  # every section in turn
        target[1] = mutate(target[1], rng)
        path = tmp_path / f"m{i:03d}-{target[0].decode()}.plic"
        path.write_bytes(sealed(header, mutated))
        paths.append(path)
    outcomes = read_all("plic", paths)
    assert len(outcomes) == len(paths)
    assert bad_outcomes(outcomes) == {}
    refused = [o for o in outcomes.values() if o.startswith("refused")]
    assert len(refused) > len(paths) // 4  # the mutations did reach the decoders
    assert all(": not a valid .plic file: " in o for o in refused)


def test_mutated_headers_and_containers_are_read_or_refused(full_plic, tmp_path):
    rng = random.Random(11)
    paths = []
    for i in range(200):
        data = mutate(full_plic, rng)
        if i % 2:  # half with the header's checksum made right, so its fields are read
            head = data[:fileformat.HEADER.size]
            data = head + struct.pack(">I", zlib.crc32(head)) + data[fileformat.HEADER.size + 4:]
        path = tmp_path / f"c{i:03d}.plic"
        path.write_bytes(data)
        paths.append(path)
    outcomes = read_all("plic", paths)
    assert bad_outcomes(outcomes) == {}


# -- images ---------------------------------------------------------------------------------------

def image_formats() -> dict[str, dict]:
    """Format -> save options, for every format PLIC reads that this Pillow writes."""
    formats = {"PNG": {}, "JPEG": {"quality": 80}, "WEBP": {"quality": 70}, "TIFF": {"compression": "tiff_lzw"},
               "GIF": {}, "BMP": {}}
    if features.check("avif"):
        formats["AVIF"] = {"quality": 60}
    return formats


@pytest.mark.parametrize("kind", sorted(image_formats()))
def test_damaged_images_are_read_or_refused(kind, tmp_path):
    """Issue 23 item 1: a PNG with a truncated IHDR raised ValueError from PIL and ended the
    whole folder run; a TIFF page without dimensions raised TypeError."""
    buffer = io.BytesIO()
    Image.fromarray(load_shared("chelsea.png", 96)).save(buffer, kind, **image_formats()[kind])
    original = buffer.getvalue()
    rng = random.Random(kind)
    paths = []
    for i in range(60):
        data = bytearray(original)
        if i < 20:  # truncations, the headers' first
            data = data[:1 + (i * i * len(original)) // 400]
        else:
            for _ in range(rng.randrange(1, 8)):
                data[rng.randrange(min(len(data), 256 if i < 40 else len(data)))] ^= 1 << rng.randrange(8)
        path = tmp_path / f"{kind.lower()}{i:02d}.{kind.lower()}"
        path.write_bytes(bytes(data))
        paths.append(path)
    outcomes = read_all("image", paths)
    assert bad_outcomes(outcomes) == {}
    refused = [o for o in outcomes.values() if o.startswith("refused")]
    assert refused and all("cannot read this image" in o or "too large" in o or "pixels" in o
                           for o in refused), refused[:3]


def test_a_damaged_image_is_one_failed_file_of_a_folder_run(tmp_path, capsys):
    from plic.cli import main as cli

    images = tmp_path / "images"
    images.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), "red").save(buffer, "PNG")
    (images / "a-damaged.png").write_bytes(buffer.getvalue()[:20])  # the IHDR chunk cut short
    Image.new("RGB", (32, 24), "blue").save(images / "b.png")
    tiff = io.BytesIO()
    Image.new("RGB", (32, 24), "green").save(tiff, "TIFF")
    data = bytearray(tiff.getvalue())
    ifd = struct.unpack_from("<I", data, 4)[0]
    for entry in range(struct.unpack_from("<H", data, ifd)[0]):
        tag_at = ifd + 2 + 12 * entry
        if struct.unpack_from("<H", data, tag_at)[0] in (256, 257):  # ImageWidth, ImageLength
            data[tag_at:tag_at + 2] = struct.pack("<H", 65000)  # an unknown tag instead
    (images / "c-no-size.tif").write_bytes(bytes(data))
    assert cli.main(["encode", str(images), "-o", str(tmp_path / "out"), "--prompt", "x",
                     "--salient", "none"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert [line.split(": cannot read this image")[0] for line in err] == [
        f"plic: {images / 'a-damaged.png'}", f"plic: {images / 'c-no-size.tif'}"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["b.plic"]
