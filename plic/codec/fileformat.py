"""The ``.plic`` container, version 1 (specified in docs/format.md).

A 32-byte header with its own CRC-32, then typed sections, each ``type(4) length(4) payload
crc32(4)``. All integers are big-endian. Unknown section types are skipped on reading and kept
in :attr:`PlicFile.extra_sections`, so a newer writer's additions survive a load/save round trip.
The known sections are the records of :data:`SECTIONS`: a new section is one record there.

:func:`loads` raises :class:`~plic.errors.PlicFormatError` (and nothing else) for bad data; its
limits bound the memory and time a hostile file can cost before any section is decoded.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from plic.atomic import write_atomic
from plic.errors import PlicFormatError
from plic.safefs import read_regular

MAGIC = b"\x89PLIC\r\n\x1a"
#: The ending of a .plic file's name.
SUFFIX = ".plic"
#: The version this PLIC writes; it reads MIN_READABLE_VERSION..VERSION (docs/format.md, "Versions").
VERSION = 1
MIN_READABLE_VERSION = 1
HEADER = struct.Struct(">8sBBHIIII")  # magic, version, flags, section count, 4 sizes
SECTION_HEAD = struct.Struct(">4sI")  # type, payload length
CRC = struct.Struct(">I")

# Strict limits (docs/format.md, "Limits").
MAX_ORIGINAL_SIDE = 65535
MAX_WORKING_SIDE = 16384
MAX_SECTIONS = 64
MAX_SECTION_BYTES = 64 << 20
MAX_FILE_BYTES = 256 << 20
MAX_REGIONS = 4096
#: A working image beyond FREE_PIXELS (2048x2048) needs at least one byte of known sections
#: per PIXELS_PER_BYTE pixels (real photos' edges alone take one byte per ~400), so what a
#: reader allocates for the working image is bounded by what the file holds; unknown sections,
#: which a reader skips, buy no pixels.
FREE_PIXELS = 1 << 22
PIXELS_PER_BYTE = 4096
#: The most working pixels a reader accepts and an encoder writes unless told otherwise
#: (4096x4096): decoding a file costs about 30 bytes of memory per working pixel.
MAX_WORKING_PIXELS = 1 << 24

#: Decode settings a version-1 decoder understands (docs/format.md, ``HINT``): what each must be.
#: Other keys are kept and may be ignored. Seeds are those torch takes; steps at most the
#: diffusion schedule's 1000; the ControlNet scale 0..10 as ComfyUI's strength.
MAX_SEED = 2**64 - 1
MAX_STEPS = 1000
MAX_CONTROLNET_SCALE = 10.0
#: Samplers a decoder offers: the reference's UniPC, DPM-Solver++ (2M), and the few-step
#: samplers of consistency LoRAs: LCM (LCM-LoRA) and TCD (TCD and Hyper-SD LoRAs).
SCHEDULERS = ("unipc", "dpmpp_2m", "lcm", "tcd")

#: Codecs for the stored pixels of a salient region (SPIX ``codec`` byte).
REGION_CODECS = {1: "png", 2: "webp", 3: "webp-lossless"}
_REGION_CODEC_IDS = {name: code for code, name in REGION_CODECS.items()}
_REGION_HEAD = struct.Struct(">HHHHBI")  # x, y, width, height, codec, data length


@dataclass(frozen=True)
class SalientRegion:
    """One stored box of the working image; ``data`` is an image file in ``codec``."""

    x: int
    y: int
    width: int
    height: int
    codec: str
    data: bytes


@dataclass
class PlicFile:
    """Everything a ``.plic`` file holds. Sizes are (width, height)."""

    original_size: tuple[int, int]
    working_size: tuple[int, int]
    prompt: str = ""
    edges: bytes | None = None  # JBIG2 embedded stream, working size, 1 = edge
    palette: bytes | None = None  # WebP
    salient_mask: bytes | None = None  # JBIG2 embedded stream, working size, 1 = kept
    salient_regions: list[SalientRegion] = field(default_factory=list)
    decode_settings: dict = field(default_factory=dict)
    extra_sections: list[tuple[bytes, bytes]] = field(default_factory=list)

    def section_sizes(self) -> dict[str, int]:
        """Payload bytes of each section present, keyed by a readable name."""
        return {_BY_TAG[kind].name: len(payload) for kind, payload in _sections(self) if kind in _BY_TAG}


def _sections(plic: PlicFile) -> list[tuple[bytes, bytes]]:
    """(type, payload) of every section ``plic`` has, the known ones in the order of SECTIONS;
    ValueError for one the reader would reject."""
    out = [(section.tag, section.payload(plic)) for section in SECTIONS
           if getattr(plic, section.field) != getattr(_BLANK, section.field)]
    for kind, payload in plic.extra_sections:
        if len(kind) != 4 or kind in KNOWN_SECTIONS:
            raise ValueError(f"extra section type {kind!r} must be four bytes and not one of "
                             f"{[k.decode() for k in KNOWN_SECTIONS]}")
        out.append((kind, payload))
    return out


def _settings_json(values: dict, _working_size=None) -> bytes:
    try:
        return json.dumps(check_decode_settings(values), sort_keys=True, separators=(",", ":"),
                          allow_nan=False).encode("utf-8")
    except TypeError as exc:
        raise ValueError(f"decode settings must be JSON values: {exc}") from None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_unicode(text: str) -> bool:
    """Whether ``text`` can be written as UTF-8: JSON's escapes can spell a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


_SETTING_RULES = {
    "seed": (lambda v: _is_int(v) and 0 <= v <= MAX_SEED, f"an integer in 0..{MAX_SEED}"),
    "steps": (lambda v: _is_int(v) and 1 <= v <= MAX_STEPS, f"an integer in 1..{MAX_STEPS}"),
    "negative_prompt": (lambda v: isinstance(v, str) and _is_unicode(v), "a string of valid Unicode"),
    "controlnet_scale": (lambda v: (_is_int(v) or isinstance(v, float)) and math.isfinite(v)
                         and 0 <= v <= MAX_CONTROLNET_SCALE, f"a number in 0..{MAX_CONTROLNET_SCALE:g}"),
    "scheduler": (lambda v: v in SCHEDULERS, f"one of {list(SCHEDULERS)}"),
    "family": (lambda v: isinstance(v, str), "a string (a decoder family's name)"),
}


def check_decode_settings(values: dict, name: str = "decode setting") -> dict:
    """``values`` unless a key a version-1 decoder understands has a value it cannot use
    (ValueError naming the ``name`` and what it must be); other keys pass as they are."""
    if not isinstance(values, dict):
        raise ValueError("decode settings must be a JSON object")
    for key, (valid, what) in _SETTING_RULES.items():
        if key in values and not valid(values[key]):
            raise ValueError(f"{name} {key!r} is {_shown(values[key])}; it must be {what}")
    return values


def _shown(value) -> str:
    """A setting's value for an error message, cut short."""
    text = json.dumps(value) if not isinstance(value, float) or math.isfinite(value) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _settings_from_json(payload: bytes, _working_size=None) -> dict:
    return check_decode_settings(json.loads(payload.decode("utf-8"), parse_constant=_no_constant))


def _no_constant(name: str):
    raise ValueError(f"decode settings hold {name}, which is not JSON")


# Checks of section contents, shared by the writer and the reader (docs/format.md, "Limits").

def _check_region_count(count: int) -> None:
    if count > MAX_REGIONS:
        raise ValueError(f"{count} regions, at most {MAX_REGIONS} allowed")


def _check_region(x: int, y: int, w: int, h: int, working_size: tuple[int, int]) -> None:
    width, height = working_size
    if min(x, y) < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
        raise ValueError(f"region {w}x{h} at ({x}, {y}) lies outside the {width}x{height} image")


def _check_region_area(area: int, working_size: tuple[int, int]) -> None:
    """The boxes of SPIX never overlap, so together they cover at most the image: this bounds
    the pixels a reader decodes for them by the image's own."""
    width, height = working_size
    if area > width * height:
        raise ValueError(f"the regions cover {area} pixels together, more than the "
                         f"{width}x{height} image holds")


def _pack_regions(regions: list[SalientRegion], working_size: tuple[int, int]) -> bytes:
    _check_region_count(len(regions))
    _check_region_area(sum(r.width * r.height for r in regions), working_size)
    parts = [struct.pack(">H", len(regions))]
    for r in regions:
        if r.codec not in _REGION_CODEC_IDS:
            raise ValueError(f"salient region codec {r.codec!r} is not one of {sorted(_REGION_CODEC_IDS)}")
        _check_region(r.x, r.y, r.width, r.height, working_size)
        parts.append(_REGION_HEAD.pack(r.x, r.y, r.width, r.height,
                                       _REGION_CODEC_IDS[r.codec], len(r.data)))
        parts.append(r.data)
    return b"".join(parts)


def dumps(plic: PlicFile) -> bytes:
    """Serialise ``plic``. Raises ValueError if it breaks a limit of the format (the reader
    would reject it; the reader's pixel limit, a setting, is the encoder's to check:
    :func:`check_working_pixels`)."""
    _check_sizes(plic.original_size, plic.working_size, ValueError)
    sections = _sections(plic)
    if len(sections) > MAX_SECTIONS:
        raise ValueError(f"{len(sections)} sections, at most {MAX_SECTIONS} allowed")
    header = HEADER.pack(MAGIC, VERSION, 0, len(sections), *plic.original_size, *plic.working_size)
    parts = [header, CRC.pack(zlib.crc32(header))]
    for kind, payload in sections:
        if len(payload) > MAX_SECTION_BYTES:
            raise ValueError(f"section {kind.decode()} is {len(payload)} bytes, "
                             f"at most {MAX_SECTION_BYTES} allowed")
        parts.append(SECTION_HEAD.pack(kind, len(payload)))
        parts.append(payload)
        parts.append(CRC.pack(zlib.crc32(payload, zlib.crc32(kind))))
    data = b"".join(parts)
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"the file would be {len(data)} bytes, at most {MAX_FILE_BYTES} allowed")
    _check_pixels_held(plic.working_size, _known_bytes(sections), lambda problem: ValueError(
        f"{problem}: the image has too little detail for this working size; use a smaller max side"))
    return data


def _known_bytes(sections) -> int:
    """The bytes the header and the known sections among ``sections`` ((type, payload)) take
    in a file: what the pixels-held rule counts."""
    return HEADER.size + CRC.size + sum(SECTION_HEAD.size + len(payload) + CRC.size
                                        for kind, payload in sections if kind in KNOWN_SECTIONS)


def _check_pixels_held(working, n_bytes: int, error) -> None:
    """Raise ``error(problem)`` when ``n_bytes`` of header and known sections declare more
    working pixels than FREE_PIXELS and PIXELS_PER_BYTE allow."""
    width, height = working
    if width * height > max(FREE_PIXELS, PIXELS_PER_BYTE * n_bytes):
        raise error(f"a {width}x{height} working image needs at least "
                    f"{-(-width * height // PIXELS_PER_BYTE)} bytes of known sections, this file "
                    f"has {n_bytes}")


def _check_sizes(original, working, error):
    (ow, oh), (ww, wh) = original, working
    if not (1 <= ow <= MAX_ORIGINAL_SIDE and 1 <= oh <= MAX_ORIGINAL_SIDE):
        raise error(f"original size {ow}x{oh} is outside 1..{MAX_ORIGINAL_SIDE}")
    if not (1 <= ww <= MAX_WORKING_SIDE and 1 <= wh <= MAX_WORKING_SIDE):
        raise error(f"working size {ww}x{wh} is outside 1..{MAX_WORKING_SIDE}")


def check_working_pixels(working: tuple[int, int], max_working_pixels: int, error=ValueError) -> None:
    """Raise ``error(problem)`` for a working image of more than ``max_working_pixels`` pixels:
    the reader's limit, which an encoder keeps too so that its files read back."""
    width, height = working
    if width * height > max_working_pixels:
        raise error(f"working size {width}x{height} is more than the {max_working_pixels} pixels "
                    "allowed (plic: --max-working-pixels raises the limit)")


def loads(data: bytes, source: str = "<bytes>", *,
          max_working_pixels: int = MAX_WORKING_PIXELS) -> PlicFile:
    """Parse a ``.plic`` file. Raises :class:`PlicFormatError` naming ``source`` on any problem,
    a working image of more than ``max_working_pixels`` pixels included."""

    def fail(problem: str):
        raise PlicFormatError(source, problem)

    if len(data) > MAX_FILE_BYTES:
        fail(f"{len(data)} bytes is more than the {MAX_FILE_BYTES} allowed")
    if len(data) < len(MAGIC) or data[:len(MAGIC)] != MAGIC:
        fail("it does not start with the PLIC signature")
    if len(data) < HEADER.size + CRC.size:
        fail("truncated header")
    magic, version, _flags, count, ow, oh, ww, wh = HEADER.unpack_from(data)
    (header_crc,) = CRC.unpack_from(data, HEADER.size)
    if zlib.crc32(data[:HEADER.size]) != header_crc:
        fail("header checksum mismatch (the file is damaged)")
    if version > VERSION:
        fail(f"format version {version} is not supported (this PLIC reads {_readable()}); "
             "update PLIC")
    if version < MIN_READABLE_VERSION:
        fail(f"format version {version} is no longer read (this PLIC reads {_readable()}); "
             "read it with an older PLIC")
    if count > MAX_SECTIONS:
        fail(f"{count} sections, at most {MAX_SECTIONS} allowed")
    refuse = lambda problem: PlicFormatError(source, problem)  # noqa: E731
    _check_sizes((ow, oh), (ww, wh), refuse)
    check_working_pixels((ww, wh), max_working_pixels, refuse)
    _check_pixels_held((ww, wh), len(data), refuse)  # the file's every byte: a cheap first look

    plic = PlicFile(original_size=(ow, oh), working_size=(ww, wh))
    seen = set()
    pos = known = HEADER.size + CRC.size
    for index in range(count):
        if pos + SECTION_HEAD.size > len(data):
            fail(f"truncated: section {index + 1} of {count} is missing")
        kind, length = SECTION_HEAD.unpack_from(data, pos)
        name = kind.decode("latin-1")
        if length > MAX_SECTION_BYTES:
            fail(f"section {name!r} claims {length} bytes, at most {MAX_SECTION_BYTES} allowed")
        start = pos + SECTION_HEAD.size
        end = start + length
        if end + CRC.size > len(data):
            fail(f"truncated inside section {name!r}")
        payload = data[start:end]
        if zlib.crc32(payload, zlib.crc32(kind)) != CRC.unpack_from(data, end)[0]:
            fail(f"section {name!r} checksum mismatch (the file is damaged)")
        if kind in KNOWN_SECTIONS:
            known += end + CRC.size - pos
        pos = end + CRC.size
        if kind in KNOWN_SECTIONS:
            if kind in seen:
                fail(f"section {name!r} appears twice")
            seen.add(kind)
            section = _BY_TAG[kind]
            try:
                setattr(plic, section.field, section.value(payload, plic.working_size))
            except (ValueError, struct.error, UnicodeDecodeError, RecursionError) as exc:
                fail(f"section {name!r}: {exc}")
        else:
            plic.extra_sections.append((kind, payload))
    if pos != len(data):
        fail(f"{len(data) - pos} unexpected bytes after the last section")
    _check_pixels_held((ww, wh), known, refuse)
    return plic


def _unpack_regions(payload: bytes, working_size: tuple[int, int]) -> list[SalientRegion]:
    (count,) = struct.unpack_from(">H", payload)
    _check_region_count(count)
    regions, pos, area = [], 2, 0
    for _ in range(count):
        x, y, w, h, codec, length = _REGION_HEAD.unpack_from(payload, pos)
        pos += _REGION_HEAD.size
        if codec not in REGION_CODECS:
            raise ValueError(f"unknown region codec {codec}")
        _check_region(x, y, w, h, working_size)
        area += w * h
        _check_region_area(area, working_size)
        if pos + length > len(payload):
            raise ValueError("truncated region data")
        regions.append(SalientRegion(x, y, w, h, REGION_CODECS[codec], payload[pos:pos + length]))
        pos += length
    if pos != len(payload):
        raise ValueError(f"{len(payload) - pos} unexpected bytes after the regions")
    return regions


def _as_is(data: bytes, _working_size=None) -> bytes:
    """The payload of a section whose contents the codec checks (plic.codec.pack.unpack)."""
    return data


@dataclass(frozen=True)
class Section:
    """A known section type (docs/format.md, "Section types"): the :class:`PlicFile` field it
    holds and how that field becomes its payload and back.

    A field at its PlicFile default writes no section. ``write(value, working_size)`` and
    ``read(payload, working_size)`` raise ValueError for contents the format rejects; a payload
    of more than ``max_bytes`` is refused by both before anything else (None: MAX_SECTION_BYTES
    is the only bound)."""

    tag: bytes
    name: str  # readable, as section_sizes() and `plic info` show it
    field: str
    write: Callable[[object, tuple[int, int]], bytes]
    read: Callable[[bytes, tuple[int, int]], object]
    max_bytes: int | None = None

    def payload(self, plic: PlicFile) -> bytes:
        """The payload for ``plic``'s field; ValueError if the reader would reject it."""
        return self._bounded(self.write(getattr(plic, self.field), plic.working_size))

    def value(self, payload: bytes, working_size: tuple[int, int]):
        """The field's value read from ``payload``; ValueError (or struct.error,
        UnicodeDecodeError, RecursionError) for a payload the format rejects."""
        return self.read(self._bounded(payload), working_size)

    def _bounded(self, payload: bytes) -> bytes:
        if self.max_bytes is not None and len(payload) > self.max_bytes:
            raise ValueError(f"{self.name.replace('_', ' ')} of {len(payload)} bytes, "
                             f"at most {self.max_bytes} allowed")
        return payload


#: The known sections, in the order a writer writes them. Adding a section: a PlicFile field,
#: one record here and its row in docs/format.md (docs/where-to-change-what.md).
SECTIONS = (
    Section(b"PRMT", "prompt", "prompt", lambda text, _: text.encode("utf-8"),
            lambda payload, _: payload.decode("utf-8"), max_bytes=4096),
    Section(b"EDGE", "edges", "edges", _as_is, _as_is),
    Section(b"PALT", "palette", "palette", _as_is, _as_is),
    Section(b"SMSK", "salient_mask", "salient_mask", _as_is, _as_is),
    Section(b"SPIX", "salient_pixels", "salient_regions", _pack_regions, _unpack_regions),
    Section(b"HINT", "decode_settings", "decode_settings", _settings_json, _settings_from_json, max_bytes=16384),
)
KNOWN_SECTIONS = tuple(section.tag for section in SECTIONS)
_BY_TAG = {section.tag: section for section in SECTIONS}
_BLANK = PlicFile((1, 1), (1, 1))  # every field that a section holds at its default


def _readable() -> str:
    """The versions a reader accepts, in words."""
    if MIN_READABLE_VERSION == VERSION:
        return f"version {VERSION}"
    return f"versions {MIN_READABLE_VERSION} to {VERSION}"


def load(path: str | os.PathLike, *, max_working_pixels: int = MAX_WORKING_PIXELS) -> PlicFile:
    """Read a ``.plic`` file from disk (a regular file only, never past MAX_FILE_BYTES); any
    problem raises :class:`PlicFormatError`."""
    path = Path(path)
    try:
        data = read_regular(path, MAX_FILE_BYTES)
    except OSError as exc:
        raise PlicFormatError(str(path), f"cannot be read ({exc.strerror or exc})") from None
    return loads(data, str(path), max_working_pixels=max_working_pixels)


def save(plic: PlicFile, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``plic`` atomically (temporary file, then rename). Refuses to replace an existing
    file unless ``overwrite``; raises FileExistsError (:class:`~plic.errors.OutputExistsError`) then."""
    return write_atomic(Path(path), dumps(plic), overwrite=overwrite)
