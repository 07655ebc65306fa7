"""Encoding pipeline pieces on real images: working size, edges, palette, control images, salient storage."""

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from conftest import EVERY_IMAGE, large_image
from plic.codec import control_images, edges, fileformat, pack, palette, prompt, salient
from plic.errors import PlicFormatError, PlicInputError
from plic.image import load_rgb, to_working, working_size
from tests.support.images import load_shared


@pytest.mark.parametrize("size, max_side, expected", [
    ((2560, 1600), 1024, (1024, 640)),
    ((1600, 2560), 1024, (640, 1024)),
    ((512, 512), 1024, (512, 512)),  # never up
    ((3000, 1), 1024, (1024, 1)),  # never to zero
])
def test_working_size(size, max_side, expected):
    assert working_size(*size, max_side) == expected


def test_working_image_is_lanczos_downscale():
    rgb = large_image()
    expected = np.asarray(Image.fromarray(rgb).resize(working_size(rgb.shape[1], rgb.shape[0]), Image.LANCZOS))
    np.testing.assert_array_equal(to_working(rgb), expected)


def test_canny_matches_opencv_reference_call():
    rgb = load_shared("chelsea.png")
    np.testing.assert_array_equal(edges.canny(rgb), cv2.Canny(rgb, 100, 200) // 255)


@pytest.mark.parametrize("name", EVERY_IMAGE)
def test_edges_round_trip_losslessly(name):
    bitmap = edges.canny(load_shared(name))
    assert bitmap.any()
    np.testing.assert_array_equal(edges.unpack(edges.pack(bitmap)), bitmap)


def test_palette_is_a_small_webp_decoded_to_full_size():
    rgb = load_shared("coffee.png")
    data = palette.encode(rgb)
    assert data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    small = palette.decode(data)
    assert small.shape == (32, 32, 3)
    reference = np.asarray(Image.fromarray(rgb).resize((32, 32), Image.BICUBIC), dtype=np.float32)
    assert np.abs(small.astype(np.float32) - reference).mean() < 8  # WebP q80 stays close
    full = palette.upscale(small, (rgb.shape[1], rgb.shape[0]))
    assert full.shape == rgb.shape
    np.testing.assert_array_equal(full[::20, ::20][0, 0], small[0, 0])


def test_palette_parameters_are_checked():
    rgb = load_shared("coffee.png")
    assert palette.decode(palette.encode(rgb, size=8, quality=50)).shape == (8, 8, 3)
    with pytest.raises(PlicInputError, match="quality"):
        palette.encode(rgb, quality=101)


def test_color_canny_hint_paints_edges_white():
    full = np.full((4, 5, 3), 9, np.uint8)
    edge_map = np.zeros((4, 5), np.uint8)
    edge_map[1, 2] = 1
    hint = control_images.color_canny(full, edge_map)
    assert (hint[1, 2] == 255).all() and (hint[0, 0] == 9).all()
    with pytest.raises(PlicInputError, match="edges are"):
        control_images.color_canny(full, edge_map[:3])


def test_inpaint_hint_marks_pixels_to_regenerate():
    kept = np.full((2, 3, 3), 255, np.uint8)
    keep = np.array([[1, 0, 0], [0, 0, 1]], bool)
    hint = control_images.inpaint(kept, keep)
    assert hint.dtype == np.float32
    assert (hint[keep] == 1.0).all() and (hint[~keep] == -1.0).all()
    assert (control_images.inpaint(kept, None) == -1.0).all()
    with pytest.raises(PlicInputError, match="salient mask"):
        control_images.inpaint(kept, keep[:1])


def test_encode_and_unpack_a_large_image():
    rgb = large_image()
    plic = pack.encode_image(rgb, prompt="cups of coffee")
    assert plic.original_size == (rgb.shape[1], rgb.shape[0])
    assert max(plic.working_size) == 1024
    assert plic.decode_settings == {}  # defaults are not stored
    parts = pack.unpack(fileformat.loads(fileformat.dumps(plic)))
    work = to_working(rgb)
    np.testing.assert_array_equal(parts.edges, edges.canny(work))
    assert parts.color_canny_hint.shape == work.shape
    assert parts.salient_mask is None
    assert parts.decode_settings["seed"] == 786 and parts.decode_settings["steps"] == 60
    assert (parts.inpaint_hint() == -1).all()


def test_non_default_decode_settings_are_stored():
    plic = pack.encode_image(load_shared("rocket.jpg"), decode_settings={"seed": 1, "steps": 60})
    assert plic.decode_settings == {"seed": 1}
    assert pack.unpack(plic).decode_settings["seed"] == 1


def test_salient_pixels_are_kept_exactly():
    rgb = load_shared("astronaut.png")
    mask = np.zeros(rgb.shape[:2], bool)
    mask[100:180, 200:260] = True
    mask[400:410, 20:30] = True
    plic = fileformat.loads(fileformat.dumps(pack.encode_image(rgb, salient_mask=mask)))
    assert len(plic.salient_regions) == 2
    parts = pack.unpack(plic)
    np.testing.assert_array_equal(parts.salient_mask, mask)
    np.testing.assert_array_equal(parts.salient_pixels[mask], rgb[mask])
    assert (parts.salient_pixels[~mask] == 0).all()
    hint = parts.inpaint_hint()
    assert (hint[~mask] == -1).all()
    np.testing.assert_allclose(hint[mask], rgb[mask] / 255.0, atol=1e-6)


def test_salient_mask_of_wrong_size_is_refused():
    rgb = load_shared("astronaut.png")
    with pytest.raises(PlicInputError, match="working image is 512x512"):
        pack.encode_image(rgb, salient_mask=np.ones((10, 10), bool))


def test_empty_salient_mask_stores_nothing():
    rgb = load_shared("astronaut.png")
    plic = pack.encode_image(rgb, salient_mask=np.zeros(rgb.shape[:2], bool))
    assert plic.salient_mask is None and plic.salient_regions == []


def test_region_boxes_merge_overlaps():
    mask = np.zeros((50, 50), bool)
    mask[10:12, 10:12] = mask[13:15, 13:15] = mask[40:42, 40:42] = True
    boxes = salient.region_boxes(mask, pad=2)
    assert sorted(boxes) == [(8, 8, 9, 9), (38, 38, 6, 6)]


def test_damaged_sections_raise_the_format_error():
    plic = pack.encode_image(load_shared("rocket.jpg"))
    plic.palette = b"RIFF\x00\x00\x00\x00WEBPgarbage"
    with pytest.raises(PlicFormatError, match="rocket.plic"):
        pack.unpack(plic, "rocket.plic")
    plic = pack.encode_image(load_shared("rocket.jpg"))
    plic.working_size = (plic.working_size[0] - 1, plic.working_size[1])
    with pytest.raises(PlicFormatError, match="rocket.plic: .*640x427"):
        pack.unpack(plic, "rocket.plic")


def test_oversized_palette_is_refused_before_it_is_decoded():
    buffer = io.BytesIO()
    Image.new("RGB", (257, 257), (10, 20, 30)).save(buffer, format="WEBP", quality=0)
    plic = fileformat.PlicFile((64, 64), (64, 64), palette=buffer.getvalue())
    with pytest.raises(PlicFormatError, match="big.plic: .*palette is 257x257, at most 256x256"):
        pack.unpack(plic, "big.plic")


def test_decompression_bombs_raise_the_format_error(monkeypatch):
    """PIL refuses an image header over twice MAX_IMAGE_PIXELS with its own exception, which is
    no OSError; lowering the limit lets small images stand in for huge ones."""
    rgb = load_shared("astronaut.png")
    plic = pack.encode_image(rgb, salient_mask=np.ones((512, 512), bool))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1500)  # the 32x32 palette stays below
    with pytest.raises(PlicFormatError, match="astronaut.plic: .*decompression bomb"):
        pack.unpack(plic, "astronaut.plic")  # the 512x512 region image
    plic.salient_mask = None
    plic.palette = palette.encode(rgb, size=64)
    with pytest.raises(PlicFormatError, match="astronaut.plic: .*decompression bomb"):
        pack.unpack(plic, "astronaut.plic")  # a 64x64 palette


def test_empty_image_is_refused():
    with pytest.raises(PlicInputError, match="empty"):
        pack.encode_image(np.zeros((0, 10, 3), np.uint8))


@pytest.mark.parametrize("text, limit, expected", [
    ("  a   red\nboat ", 240, "a red boat"),
    ("one two three", 8, "one two"),
    ("abcdefghij", 4, "abcd"),
    ("", 240, ""),
])
def test_clean_prompt(text, limit, expected):
    assert prompt.clean_prompt(text, limit) == expected


def test_images_beyond_the_format_are_refused_before_encoding():
    with pytest.raises(PlicInputError, match="at most 65535 pixels a side"):
        pack.encode_image(np.zeros((2, 70000, 3), np.uint8))
    with pytest.raises(PlicInputError, match="max side 20000"):
        pack.encode_image(np.zeros((8, 8, 3), np.uint8), settings=pack.EncodeSettings(max_side=20000))


def test_no_prompt_stores_no_prompt():
    """Issue 11 item 1: None (``plic encode`` without --prompt) is no prompt, not "None"."""
    assert prompt.clean_prompt(None) == ""
    plic = pack.encode_image(np.full((32, 48, 3), 128, np.uint8), prompt=None)
    assert plic.prompt == "" and "prompt" not in plic.section_sizes()


@pytest.mark.parametrize("limit", [0, prompt.MAX_PROMPT_CHARS + 1, 4096])
def test_the_prompt_limit_is_stated_once(limit):
    """Issue 11 item 4: no limit beyond the one PLIC Pack applies is accepted."""
    with pytest.raises(PlicInputError, match=f"outside 1..{prompt.MAX_PROMPT_CHARS}"):
        prompt.clean_prompt("a red boat", limit)


def high_depth_ramp(mode: str) -> Image.Image:
    """A 64x64 horizontal ramp over the full range of ``mode`` (black to white)."""
    ramp = np.tile(np.linspace(0, 1, 64), (64, 1))
    if mode == "F":
        return Image.fromarray(ramp.astype(np.float32))
    values = np.rint(ramp * 65535)
    return Image.fromarray(values.astype(np.uint16 if mode == "I;16" else np.int32))


@pytest.mark.parametrize("mode, suffix", [("I;16", ".png"), ("I;16", ".tif"), ("I", ".tif"),
                                          ("F", ".tif")])
def test_high_bit_depth_grey_is_scaled_not_clipped(tmp_path, mode, suffix):
    """Issue 11 item 2: a 16-bit (or 32-bit, or float) grey image keeps its tones."""
    path = tmp_path / f"ramp{suffix}"
    high_depth_ramp(mode).save(path)
    with Image.open(path) as im:
        assert im.mode == mode
    rgb = load_rgb(path)
    expected = np.rint(np.linspace(0, 255, 64)).astype(np.uint8)
    assert np.abs(rgb[10, :, 1].astype(int) - expected).max() <= 1
    assert rgb.min() == 0 and rgb.max() == 255


def test_16_bit_rgb_keeps_its_tones(tmp_path):
    import cv2

    ramp = np.rint(np.tile(np.linspace(0, 65535, 64), (64, 1))).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.dstack([ramp, ramp, ramp]))
    rgb = load_rgb(tmp_path / "rgb16.png")
    assert np.abs(rgb[5, :, 0].astype(int) - np.linspace(0, 255, 64)).max() <= 1
