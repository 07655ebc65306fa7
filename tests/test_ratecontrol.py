"""Rate control (plic.codec.ratecontrol, `plic encode --target-bpp`, PLIC Pack's target): the file
reaches its target or says why, long lines go last, and the result is a normal .plic."""

import subprocess
import sys

import numpy as np
import pytest

from conftest import EVERY_IMAGE, read_pbm
from plic.codec import edges, fileformat, jbig2, pack, ratecontrol, salient
from plic.errors import PlicInputError
from tests.support.images import REPO, image_path, load_shared

#: Photos and a drawing of the core set, all well over 0.05 bpp at the paper's settings.
HEAVY = ("chelsea.png", "coffee.png", "rocket.jpg", "page.png")


def fit_shared(name: str, bpp: float = 0.05, **kwargs):
    work = load_shared(name)
    size = (work.shape[1], work.shape[0])
    return work, ratecontrol.fit(work, size, ratecontrol.target_bytes(size, bpp), **kwargs)


@pytest.mark.parametrize("name", HEAVY)
def test_the_target_is_met_and_the_file_decodes_as_a_normal_plic(name, tmp_path):
    work, result = fit_shared(name, prompt="a test prompt")
    assert result.start_bytes > result.target >= len(result.data)
    assert result.met and result.reason is None and 0 < result.kept_share < 1
    parts = pack.unpack(fileformat.loads(result.data), name)  # the ordinary reader
    np.testing.assert_array_equal(parts.edges, result.after)
    assert parts.prompt == "a test prompt"
    # the edges are a standard JBIG2 stream: jbig2dec reads exactly the stored map
    (tmp_path / "e.jb2").write_bytes(jbig2.embedded_to_file(result.plic.edges))
    subprocess.run(["jbig2dec", "-t", "pbm", "-o", str(tmp_path / "e.pbm"), str(tmp_path / "e.jb2")], check=True)
    np.testing.assert_array_equal(read_pbm((tmp_path / "e.pbm").read_bytes()), result.after)
    assert "kept" in result.summary() and "longest fragment removed" in result.summary()


@pytest.mark.parametrize("name", EVERY_IMAGE)
def test_every_shared_image_meets_the_target_or_says_why(name):
    _, result = fit_shared(name)
    if result.start_bytes <= result.target:
        assert not result.searched and result.data and result.kept_share == 1.0
    assert len(result.data) <= result.target or result.reason
    assert len(result.data) <= 1.05 * result.target  # no salient regions here: always reachable


def test_a_file_already_small_enough_is_left_at_the_paper_settings():
    work, result = fit_shared("rocket.jpg", bpp=0.2)  # 0.150 bpp at the paper's settings
    plain = fileformat.dumps(pack.encode_working(work, (work.shape[1], work.shape[0])))
    assert result.data == plain and not result.searched and result.kept_share == 1.0
    assert result.changes() == [] and "already fit" in result.summary()


def test_fragments_are_8_connected_components_with_their_length():
    bitmap = np.zeros((6, 8), np.uint8)
    bitmap[0, 0:5] = 1  # 5 px line
    bitmap[1, 5] = 1  # diagonal neighbour: same fragment
    bitmap[4, 1] = bitmap[5, 6] = 1  # two single pixels
    labels, lengths = edges.fragments(bitmap)
    assert sorted(lengths[1:]) == [1, 1, 6]
    np.testing.assert_array_equal(edges.keep_long(labels, lengths, 2), (labels == labels[0, 0]).astype(np.uint8))


def long_lines_and_speckle(seed=3):
    """A grey picture with three long strong lines and many small blobs of texture."""
    rng = np.random.default_rng(seed)
    image = np.full((512, 512, 3), 128, np.uint8)
    for y in (100, 250, 400):
        image[y:y + 40, 40:470] = 250
    for x, y in rng.integers(0, 500, size=(400, 2)):
        if not any(y0 - 6 <= y <= y0 + 46 for y0 in (100, 250, 400)):
            image[y:y + 3, x:x + 3] = rng.integers(160, 255)
    return image


def test_long_lines_survive_and_short_fragments_go_first():
    image = long_lines_and_speckle()
    size = (512, 512)
    before = edges.canny(image)
    labels, lengths = edges.fragments(before)
    long_ones = np.isin(labels, np.nonzero(lengths >= 400)[0])
    assert long_ones.sum() > 2000 and (before & ~long_ones).sum() > 2000
    plain = pack.encode_working(image, size)
    target = len(fileformat.dumps(plain)) // 2
    result = ratecontrol.fit(image, size, target)
    assert result.met and result.canny == (100, 200)  # dropping texture was enough
    assert result.after[long_ones].all()  # every pixel of the long lines is kept
    assert 0 < result.longest_removed < result.min_length <= 400
    assert result.changes() == [f"dropped edge fragments shorter than {result.min_length} px"]


def test_on_a_real_photo_every_kept_fragment_is_longer_than_every_removed_one():
    _, result = fit_shared("rocket.jpg", bpp=0.12)
    assert result.met
    at_final = edges.canny(load_shared("rocket.jpg"), *result.canny)
    labels, lengths = edges.fragments(at_final)
    kept = np.unique(labels[result.after.astype(bool)])
    removed = np.setdiff1d(np.unique(labels[at_final.astype(bool)]), kept)
    assert lengths[kept].min() >= result.min_length > lengths[removed].max()


def test_thresholds_stay_within_the_range_the_controlnets_were_used_with():
    for name in HEAVY:
        _, result = fit_shared(name, bpp=0.01)
        low, high = result.canny
        assert (low, high) in ratecontrol.THRESHOLD_LADDER and high <= 255


@pytest.mark.parametrize("name", ("chelsea.png", "astronaut.png"))
def test_higher_thresholds_keep_a_subset_of_the_edges(name):
    """What the preview draws as removed is always an edge of the starting map."""
    work = load_shared(name)
    start = edges.canny(work, 100, 200).astype(bool)
    for low, high in ratecontrol.THRESHOLD_LADDER[1:]:
        raised = edges.canny(work, low, high).astype(bool)
        assert raised.sum() < start.sum() and not (raised & ~start).any()


def test_a_target_below_what_the_salient_regions_take_is_refused_with_the_reason():
    work = load_shared("astronaut.png", 512)
    size = (512, 512)
    mask = np.zeros((512, 512), bool)
    mask[40:300, 150:360] = True  # a large region: far more than 600 bytes at any quality
    stream, regions = salient.pack(work, mask)
    result = ratecontrol.fit(work, size, 600, salient=pack.SalientPart(stream, tuple(regions), size))
    assert not result.met and "salient regions alone take" in result.reason
    assert "NOT met" in result.summary() and "cannot reach the target" in result.summary()
    # still a normal file, salient pixels stored more cheaply but all of them kept
    parts = pack.unpack(fileformat.loads(result.data))
    np.testing.assert_array_equal(parts.salient_mask, mask)
    assert result.salient_codec.startswith("webp q") and "salient pixels png -> webp" in result.summary()


@pytest.mark.parametrize("bpp, n_bytes, expected", [(0.05, None, 4096), (None, 1000, 1000), (0.05, 9000, 4096),
                                                    (None, None, None)])
def test_target_bytes(bpp, n_bytes, expected):
    assert ratecontrol.target_bytes((1024, 640), bpp, n_bytes) == expected


@pytest.mark.parametrize("bpp, n_bytes", [(0, None), (-1, None), (None, 0)])
def test_a_target_of_nothing_is_refused(bpp, n_bytes):
    with pytest.raises(PlicInputError, match="target"):
        ratecontrol.target_bytes((1024, 640), bpp, n_bytes)


def plic(*args):
    result = subprocess.run([sys.executable, "-m", "plic", *map(str, args)], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_plic_encode_target_bpp_reports_what_changed_and_preview_shows_it(tmp_path):
    image = image_path("coffee.png")
    plain = plic("encode", image, "-o", tmp_path / "plain", "--prompt", "boats", "--salient", "none")
    assert "larger than the image as WebP at quality 0" in plain and "--target-bpp 0.05" in plain
    out = plic("encode", image, "-o", tmp_path / "fit", "--prompt", "boats", "--salient", "none",
               "--target-bpp", "0.05")
    path = tmp_path / "fit" / "coffee.plic"
    assert path.stat().st_size <= 1500  # 600x400 at 0.05 bpp
    assert "rate control:" in out and "kept " in out and "dropped edge fragments shorter than" in out
    assert "WebP at quality 0" not in out
    plic("preview", path, "-o", tmp_path / "p.png")
    plic("preview", path, "-o", tmp_path / "q.png", "--image", image)
    from PIL import Image

    with Image.open(tmp_path / "p.png") as without, Image.open(tmp_path / "q.png") as with_removed:
        assert with_removed.width > without.width
        reds = np.asarray(with_removed.convert("RGB"))
        assert ((reds[..., 0] > 200) & (reds[..., 1] < 50)).sum() > 1000  # removed edges drawn red


def test_the_pack_node_takes_a_target_and_shows_the_removed_edges():
    import torch

    from nodes.edges import PlicCannyEdges
    from nodes.pack import PlicPack
    from nodes.palette import PlicPalette

    work = load_shared("coffee.png")
    image = torch.from_numpy(work.astype(np.float32) / 255)[None]
    edge_parts, _ = PlicCannyEdges().run(image, 1024, 100, 200)
    palette, _ = PlicPalette().run(image, 1024, 32, 80)
    plain = PlicPack().run("a path", edge_parts, palette)
    assert "larger than the image as WebP at quality 0" in plain["ui"]["text"][0]
    packed = PlicPack().run("a path", edge_parts, palette, target_bpp=0.05)
    (payload,), removed = packed["result"]
    assert len(fileformat.dumps(payload)) <= 1500  # 600x400 at 0.05 bpp
    assert packed["ui"]["plic"][0]["bytes"] <= 1500 and "rate control:" in packed["ui"]["text"][0]
    picture = (removed[0].numpy() * 255).round().astype(np.uint8)
    assert picture.shape == work.shape and ((picture == (230, 0, 0)).all(axis=-1)).sum() > 1000
    np.testing.assert_array_equal(pack.unpack(payload).edges, (picture == 0).all(axis=-1))
