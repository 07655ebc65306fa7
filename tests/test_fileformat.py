"""The .plic container: round trips, every kind of damage, limits, and a fuzz test of the reader."""

import dataclasses
import hashlib
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plic.atomic import write_atomic
from plic.codec import fileformat, pack
from plic.codec.fileformat import PlicFile, SalientRegion
from plic.errors import OutputExistsError, PlicError, PlicFormatError, PlicOutputError


def sample() -> PlicFile:
    return PlicFile(
        original_size=(1200, 800), working_size=(600, 400), prompt="a red boat at dusk, ünïcode",
        edges=b"\x00\x01edges", palette=b"RIFFpalette",
        salient_mask=b"mask", salient_regions=[SalientRegion(10, 20, 30, 40, "png", b"png-bytes"),
                                               SalientRegion(0, 100, 600, 300, "webp", b"")],
        decode_settings={"seed": 7, "base_model": "epicrealism"},
    )


def test_round_trip_keeps_every_field():
    plic = sample()
    assert fileformat.loads(fileformat.dumps(plic)) == plic


def test_empty_file_has_header_only():
    data = fileformat.dumps(PlicFile((1, 1), (1, 1)))
    assert len(data) == 32
    assert fileformat.loads(data) == PlicFile((1, 1), (1, 1))


def test_unknown_sections_are_skipped_and_preserved():
    data = bytearray(fileformat.dumps(sample()))
    extra = b"XTRA" + struct.pack(">I", 3) + b"abc" + struct.pack(">I", zlib.crc32(b"abc", zlib.crc32(b"XTRA")))
    data += extra
    struct.pack_into(">H", data, 10, struct.unpack_from(">H", data, 10)[0] + 1)
    struct.pack_into(">I", data, 28, zlib.crc32(bytes(data[:28])))
    plic = fileformat.loads(bytes(data))
    assert plic.extra_sections == [(b"XTRA", b"abc")]
    assert fileformat.dumps(plic) == bytes(data)


@pytest.mark.parametrize("position", [0, 9, 12, 27, 28, 33, 40, -5, -1])
def test_any_damaged_byte_is_detected(position):
    data = bytearray(fileformat.dumps(sample()))
    data[position] ^= 0x40
    with pytest.raises(PlicFormatError):
        fileformat.loads(bytes(data))


def test_every_single_bit_flip_is_detected():
    data = fileformat.dumps(sample())
    for i in range(len(data)):
        for bit in (0, 3, 7):
            damaged = bytearray(data)
            damaged[i] ^= 1 << bit
            with pytest.raises(PlicFormatError):
                fileformat.loads(bytes(damaged))


def test_every_truncation_is_detected():
    data = fileformat.dumps(sample())
    for n in range(len(data)):
        with pytest.raises(PlicFormatError):
            fileformat.loads(data[:n], "cut.plic")


def test_trailing_bytes_are_rejected():
    with pytest.raises(PlicFormatError, match="after the last section"):
        fileformat.loads(fileformat.dumps(sample()) + b"\x00")


def test_error_names_the_file_and_the_problem():
    with pytest.raises(PlicFormatError) as info:
        fileformat.loads(b"GIF89a not a plic file", "holiday.plic")
    assert str(info.value).startswith("holiday.plic: not a valid .plic file")
    assert "signature" in str(info.value)


def rebuilt(header_fields=None, sections=()):
    """A syntactically valid file with the given header fields and raw sections."""
    fields = {"version": 1, "count": len(sections), "sizes": (10, 10, 10, 10)}
    fields.update(header_fields or {})
    header = fileformat.HEADER.pack(fileformat.MAGIC, fields["version"], 0, fields["count"], *fields["sizes"])
    out = header + struct.pack(">I", zlib.crc32(header))
    for kind, payload in sections:
        out += kind + struct.pack(">I", len(payload)) + payload + struct.pack(">I", zlib.crc32(payload, zlib.crc32(kind)))
    return out


@pytest.mark.parametrize("fields, problem", [
    ({"version": 2}, "version 2"),
    ({"sizes": (0, 10, 10, 10)}, "original size"),
    ({"sizes": (10, 10, 20000, 10)}, "working size"),
    ({"count": 65}, "sections"),
])
def test_header_limits(fields, problem):
    with pytest.raises(PlicFormatError, match=problem):
        fileformat.loads(rebuilt(fields))


def test_files_keep_their_bytes():
    """The layout of version 1 is fixed: what PLIC writes today, every reader reads the same."""
    data = fileformat.dumps(sample())
    assert len(data) == 229
    assert hashlib.sha256(data).hexdigest() == "17d01e5c53e022d5e3ca9c502342fc0424d19b1c99b8d01886949f36aa9dbf1a"


def test_a_version_bump_keeps_older_files_readable(monkeypatch):
    """A writer of version 2 (the next VERSION, with a section version 1 does not know) is
    refused by today's reader with the advice to update; a reader of 1..2 reads both."""
    old = fileformat.dumps(sample())
    future = dataclasses.replace(sample(), extra_sections=[(b"DPTH", b"a depth map")])
    with monkeypatch.context() as bumped:
        bumped.setattr(fileformat, "VERSION", 2)
        new = fileformat.dumps(future)
    assert new[8] == 2 and old[8] == 1 and new[9:] != old[9:]
    with pytest.raises(PlicFormatError, match=r"new\.plic: .*format version 2 is not supported "
                                              r"\(this PLIC reads version 1\); update PLIC"):
        fileformat.loads(new, "new.plic")
    monkeypatch.setattr(fileformat, "VERSION", 2)
    assert fileformat.loads(old) == sample()
    assert fileformat.loads(new) == future
    with pytest.raises(PlicFormatError, match=r"version 3 is not supported \(this PLIC reads "
                                              r"versions 1 to 2\); update PLIC"):
        fileformat.loads(rebuilt({"version": 3}))
    monkeypatch.setattr(fileformat, "MIN_READABLE_VERSION", 2)
    with pytest.raises(PlicFormatError, match="version 1 is no longer read .*older PLIC"):
        fileformat.loads(old)


def test_every_known_section_is_written_read_and_named_from_one_table():
    plic = sample()
    sizes = plic.section_sizes()
    assert list(sizes) == [section.name for section in fileformat.SECTIONS]
    written = fileformat.dumps(plic)
    for section in fileformat.SECTIONS:
        assert section.tag in written
        without = dataclasses.replace(plic, **{section.field: getattr(PlicFile((1, 1), (1, 1)), section.field)})
        assert section.name not in without.section_sizes()
        assert fileformat.loads(fileformat.dumps(without)) == without


@pytest.mark.parametrize("sections, problem", [
    ([(b"PRMT", b"a"), (b"PRMT", b"b")], "twice"),
    ([(b"PRMT", b"\xff\xfe")], "PRMT"),
    ([(b"PRMT", b"x" * 5000)], "prompt of 5000 bytes"),
    ([(b"HINT", b"[1, 2]")], "JSON object"),
    ([(b"HINT", b"{not json")], "HINT"),
    ([(b"SPIX", struct.pack(">HHHHHBI", 1, 5, 5, 10, 10, 1, 0))], "outside"),
    ([(b"SPIX", struct.pack(">HHHHHBI", 1, 0, 0, 1, 1, 9, 0))], "codec"),
    ([(b"SPIX", struct.pack(">HHHHHBI", 1, 0, 0, 1, 1, 1, 50))], "truncated"),
    ([(b"SPIX", struct.pack(">H", 5000))], "5000 regions"),
])
def test_section_contents_are_validated(sections, problem):
    with pytest.raises(PlicFormatError, match=problem):
        fileformat.loads(rebuilt(sections=sections))


def test_huge_declared_section_is_rejected_before_reading():
    header = fileformat.HEADER.pack(fileformat.MAGIC, 1, 0, 1, 10, 10, 10, 10)
    data = header + struct.pack(">I", zlib.crc32(header)) + b"EDGE" + struct.pack(">I", 0xFFFFFFFF)
    with pytest.raises(PlicFormatError, match="claims"):
        fileformat.loads(data)


def test_writer_refuses_what_the_reader_would_reject():
    with pytest.raises(ValueError):
        fileformat.dumps(PlicFile((70000, 10), (10, 10)))


@pytest.mark.parametrize("change, problem", [
    ({"prompt": "x" * 5000}, "prompt of 5000 bytes"),
    ({"decode_settings": {"note": "x" * 20000}}, "decode settings of"),
    ({"decode_settings": {"seeds": {1, 2}}}, "JSON"),
    ({"salient_regions": [SalientRegion(5, 5, 10, 10, "png", b"")]}, "outside"),
    ({"salient_regions": [SalientRegion(0, 0, 0, 1, "png", b"")]}, "outside"),
    ({"salient_regions": [SalientRegion(0, 0, 1, 1, "png", b"")] * 5000}, "5000 regions"),
    ({"salient_regions": [SalientRegion(0, 0, 1, 1, "png", b"")] * 70000}, "70000 regions"),
    ({"extra_sections": [(b"PRMT", b"x")]}, "extra section type"),
    ({"extra_sections": [(b"XY", b"x")]}, "extra section type"),
])
def test_writer_refuses_every_section_the_reader_would_reject(change, problem):
    plic = PlicFile((10, 10), (10, 10), **change)
    with pytest.raises(ValueError, match=problem):
        fileformat.dumps(plic)


def test_save_is_atomic_and_never_overwrites_unless_asked(tmp_path):
    target = tmp_path / "sub" / "a.plic"
    fileformat.save(sample(), target)
    first = target.read_bytes()
    other = sample()
    other.prompt = "something else"
    with pytest.raises(FileExistsError):
        fileformat.save(other, target)
    assert target.read_bytes() == first
    fileformat.save(other, target, overwrite=True)
    assert fileformat.load(target).prompt == "something else"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.plic"]  # no temporary left


def test_failed_write_leaves_nothing(tmp_path):
    bad = sample()
    bad.salient_regions = [SalientRegion(0, 0, 1, 1, "gif", b"")]  # unknown codec: dumps fails
    with pytest.raises(ValueError, match="codec 'gif'"):
        fileformat.save(bad, tmp_path / "bad.plic")
    assert list(tmp_path.iterdir()) == []


def test_write_failures_name_the_file_and_what_to_do(tmp_path):
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(PlicOutputError, match="a-file/sub/x.plic: cannot be written: .*a-file is a file, not a folder"):
        write_atomic(tmp_path / "a-file" / "sub" / "x.plic", b"data")
    write_atomic(tmp_path / "x.plic", b"first")
    with pytest.raises(OutputExistsError, match="x.plic: already exists; choose another name") as info:
        write_atomic(tmp_path / "x.plic", b"second")
    assert isinstance(info.value, FileExistsError) and isinstance(info.value, PlicError)
    assert (tmp_path / "x.plic").read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file", "x.plic"]  # no temporary left


def test_load_names_a_missing_file(tmp_path):
    with pytest.raises(PlicFormatError, match="missing.plic: not a valid .plic file: cannot be read"):
        fileformat.load(tmp_path / "missing.plic")


VALID = fileformat.dumps(sample())


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=200),
    st.binary(max_size=64).map(lambda tail: fileformat.MAGIC + tail),
    st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255), st.integers(0, len(VALID))).map(
        lambda t: (VALID[:t[0]] + bytes([t[1]]) + VALID[t[0] + 1:])[:t[2]]),
))
def test_reader_only_ever_raises_the_documented_error(data):
    try:
        plic = fileformat.loads(data)
    except PlicFormatError as exc:
        assert str(exc).startswith("<bytes>: not a valid .plic file: ")
    else:  # whatever parses must serialise back to the same bytes
        assert fileformat.dumps(plic) == data


def test_writing_never_changes_the_process_umask(tmp_path):
    """Issue 11 item 13: ComfyUI's server writes from threads; a umask changed for a moment
    races every other thread's file creation. The written file still gets the usual mode."""
    import os
    import sys

    calls = []

    def watch(frame, event, arg):
        if event == "c_call" and arg is os.umask:
            calls.append(event)

    sys.setprofile(watch)
    try:
        write_atomic(tmp_path / "x.plic", b"data")
        fileformat.save(sample(), tmp_path / "y.plic")
    finally:
        sys.setprofile(None)
    assert calls == []
    mask = os.umask(0o022)
    os.umask(mask)
    assert (tmp_path / "x.plic").stat().st_mode & 0o777 == 0o666 & ~mask


def test_a_failed_write_closes_its_file_and_leaves_nothing(tmp_path):
    """A write that fails half-way (file size limit: as a full disk) leaks no descriptor."""
    import subprocess
    import sys

    code = f"""
import os, resource, signal
from pathlib import Path
from plic.atomic import write_atomic
from plic.errors import PlicOutputError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))
before = len(os.listdir("/proc/self/fd"))
for _ in range(3):
    try:
        write_atomic(Path({str(tmp_path)!r}) / "big.plic", b"x" * 100000)
    except PlicOutputError as exc:
        assert "big.plic: cannot be written (File too large)" in str(exc), exc
    else:
        raise AssertionError("the write did not fail")
assert len(os.listdir("/proc/self/fd")) == before
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60,
                   cwd=Path(__file__).resolve().parents[1])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("payload, problem", [
    (b'{"seed": "abc"}', "decode setting 'seed' is \"abc\"; it must be an integer in 0..18446744073709551615"),
    (b'{"seed": NaN}', "decode settings hold NaN, which is not JSON"),
    (b'{"seed": -1}', "decode setting 'seed' is -1"),
    (b'{"steps": 1e9}', "decode setting 'steps' is 1000000000.0; it must be an integer in 1..1000"),
    (b'{"steps": true}', "decode setting 'steps' is true"),
    (b'{"controlnet_scale": 1e308}', "decode setting 'controlnet_scale' is 1e\\+308; it must be a number in 0..10"),
    (b'{"controlnet_scale": Infinity}', "decode settings hold Infinity, which is not JSON"),
    (b'{"negative_prompt": 5}', "decode setting 'negative_prompt' is 5; it must be a string"),
    (b'{"scheduler": "ddim"}', "decode setting 'scheduler' is \"ddim\"; it must be one of \\['unipc', 'dpmpp_2m', 'lcm', 'tcd'\\]"),
])
def test_decode_settings_are_validated_when_read(payload, problem):
    """Issue 11 item 8: a decode setting the decoder cannot use fails at read time, naming file and setting."""
    with pytest.raises(PlicFormatError, match=f"^x.plic: not a valid .plic file: section 'HINT': {problem}"):
        fileformat.loads(rebuilt(sections=[(b"HINT", payload)]), "x.plic")
    values = json.loads(payload, parse_constant=float)
    with pytest.raises(ValueError, match="decode setting"):  # the writer refuses it too
        fileformat.dumps(PlicFile((10, 10), (10, 10), decode_settings=values))


def test_a_negative_prompt_that_is_not_unicode_is_refused():
    """Issue 23 item 6: JSON's escapes spell a lone surrogate, which the tokenizer met as a TypeError."""
    with pytest.raises(PlicFormatError, match="decode setting 'negative_prompt' is .*; it must be a string of valid Unicode"):
        fileformat.loads(rebuilt(sections=[(b"HINT", b'{"negative_prompt": "bad \\ud800"}')]))


def test_usable_and_unknown_decode_settings_are_kept():
    values = {"seed": 2**64 - 1, "steps": 1000, "controlnet_scale": 0, "scheduler": "unipc",
             "negative_prompt": "", "base_model": "any value"}
    assert fileformat.loads(rebuilt(sections=[(b"HINT", json.dumps(values).encode())])).decode_settings == values


def test_a_reader_allocates_only_what_the_file_holds():
    """Issue 11 item 9: a header declaring 16384x16384 made preview take 3.5 GB."""
    def header_only(width, height):
        header = fileformat.HEADER.pack(fileformat.MAGIC, 1, 0, 0, width, height, width, height)
        return header + struct.pack(">I", zlib.crc32(header))

    with pytest.raises(PlicFormatError, match="^big.plic: not a valid .plic file: a 4096x4096 "
                                              "working image needs at least 4096 bytes of known "
                                              "sections, this file has 32"):
        fileformat.loads(header_only(4096, 4096), "big.plic")
    assert fileformat.loads(header_only(2048, 2048)).working_size == (2048, 2048)
    with pytest.raises(ValueError, match="too little detail for this working size"):
        fileformat.dumps(PlicFile((4096, 4096), (4096, 4096)))


def test_unknown_sections_buy_no_pixels_and_the_working_size_has_a_limit():
    """Issue 24 item 3: 66 KB of an unknown section let a file declare 16384x16384 (33 s and
    4.6 GB for plic info)."""
    padded = PlicFile((8192, 8192), (8192, 8192), extra_sections=[(b"PADS", bytes(70000))])
    with pytest.raises(ValueError, match="needs at least 16384 bytes of known sections"):
        fileformat.dumps(padded)
    # the same file written as it would be by a writer that ignores the rule
    header = fileformat.HEADER.pack(fileformat.MAGIC, 1, 0, 1, 8192, 8192, 8192, 8192)
    section = b"PADS" + struct.pack(">I", 70000) + bytes(70000)
    data = header + struct.pack(">I", zlib.crc32(header)) + section + struct.pack(
        ">I", zlib.crc32(bytes(70000), zlib.crc32(b"PADS")))
    with pytest.raises(PlicFormatError, match="needs at least 16384 bytes of known sections, this "
                                              "file has 32"):
        fileformat.loads(data, max_working_pixels=1 << 26)
    with pytest.raises(PlicFormatError, match="working size 8192x8192 is more than the 16777216 "
                                              "pixels allowed .plic: --max-working-pixels"):
        fileformat.loads(data)
    with pytest.raises(ValueError, match="more than the 16777216 pixels allowed"):
        pack.working_image(np.zeros((4096, 8192, 3), np.uint8), 8192)
    assert pack.working_image(np.zeros((4096, 8192, 3), np.uint8), 8192,
                               max_working_pixels=1 << 25)[1].shape == (4096, 8192, 3)
