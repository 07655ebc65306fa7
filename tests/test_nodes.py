"""The ComfyUI nodes run through their functions on the test images, without ComfyUI."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import nodes
from nodes.edges import PlicCannyEdges
from nodes.files import PlicLoad, PlicSave, input_files
from nodes.pack import PlicPack
from nodes.palette import PlicPalette
from nodes.unpack import PlicUnpack
from plic.codec import fileformat, pack
from plic.codec.prompt import MAX_PROMPT_CHARS
from plic.errors import PlicError, PlicInputError
from plic.image import resize
from tests.support.images import REPO, load_shared


def as_image(*arrays) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).float() / 255.0


@pytest.fixture
def folders(tmp_path, monkeypatch):
    """Separate input and output folders given the way CI gives them (environment)."""
    monkeypatch.setenv("PLIC_INPUT_DIR", str(tmp_path / "in"))
    monkeypatch.setenv("PLIC_OUTPUT_DIR", str(tmp_path / "out"))
    (tmp_path / "in").mkdir()
    return tmp_path / "in", tmp_path / "out"


@pytest.fixture(scope="module")
def astronaut():
    return load_shared("astronaut.png", 256)


@pytest.fixture(scope="module")
def batch(astronaut):
    cat = resize(load_shared("chelsea.png"), (astronaut.shape[1], astronaut.shape[0]))
    return as_image(astronaut, cat)


def compress(image, prompt="an astronaut", max_side=256):
    edges, edge_preview = PlicCannyEdges().run(image, max_side, 100, 200)
    palette, palette_preview = PlicPalette().run(image, max_side, 32, 80)
    packed = PlicPack().run(prompt, edges, palette)
    return edges, edge_preview, palette, palette_preview, packed


def test_every_node_is_documented():
    assert set(nodes.NODE_CLASS_MAPPINGS) == set(nodes.NODE_DISPLAY_NAME_MAPPINGS)
    assert len(nodes.NODE_CLASS_MAPPINGS) >= 6
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "PLIC" and cls.DESCRIPTION
        assert nodes.NODE_DISPLAY_NAME_MAPPINGS[name].startswith("PLIC ")
        for section in cls.INPUT_TYPES().values():
            for input_name, spec in section.items():
                assert spec[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        names = getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)
        assert len(names) == len(cls.RETURN_TYPES)


def test_names_fit_the_node_library_and_descriptions_read_as_plain_text():
    """The node library (1.27's sidebar is narrow) shows the names whole; it renders a
    description as Markdown, where <word> is an HTML tag and _word_ after a space or a
    punctuation mark is emphasis."""
    for name, cls in nodes.NODE_CLASS_MAPPINGS.items():
        assert len(nodes.NODE_DISPLAY_NAME_MAPPINGS[name]) <= 24, name
        assert not re.search(r"<\w|(^|[\s\W])_\w[^_\s]*_", cls.DESCRIPTION), name


COMFYUI_LOADS_THE_PACK = """
import importlib.util, sys
pack = sys.argv[1]
path_before = list(sys.path)
# ComfyUI 0.3.64, nodes.py load_custom_node: the folder's path is the module's name
name = pack.replace(".", "_x_")
spec = importlib.util.spec_from_file_location(name, pack + "/__init__.py")
module = importlib.util.module_from_spec(spec)
sys.modules[name] = module
spec.loader.exec_module(module)
assert importlib.util.find_spec("folder_paths") is None
assert sys.path == path_before, "importing the pack changed sys.path"
print(sorted(module.NODE_CLASS_MAPPINGS), module.WEB_DIRECTORY, sys.modules["plic"].__file__)
"""


def load_like_comfyui(tmp_path, *, pythonpath=""):
    """Import the pack from custom_nodes/comfyui-plic as ComfyUI does, in a fresh interpreter
    started away from the repository."""
    pack = tmp_path / "custom_nodes" / "comfyui-plic"
    pack.parent.mkdir()
    pack.symlink_to(REPO, target_is_directory=True)
    return subprocess.run([sys.executable, "-c", COMFYUI_LOADS_THE_PACK, str(pack)], capture_output=True,
                          text=True, cwd=tmp_path, timeout=120, env={**os.environ, "PYTHONPATH": pythonpath})


def test_the_pack_imports_inside_comfyuis_layout_with_its_own_plic(tmp_path):
    result = load_like_comfyui(tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("PlicCannyEdges", "PlicLoad", "PlicPack", "PlicPalette", "PlicSave", "PlicUnpack"):
        assert name in result.stdout
    assert Path(result.stdout.split()[-1]).resolve() == REPO / "plic" / "__init__.py"
    assert (REPO / "web").is_dir()


def test_the_pack_refuses_another_plic_imported_before_it(tmp_path):
    other = tmp_path / "elsewhere" / "plic"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("")
    result = load_like_comfyui(tmp_path, pythonpath=str(other.parent))
    assert result.returncode == 0, result.stderr  # nothing imported that plic: the pack's own wins
    assert Path(result.stdout.split()[-1]).resolve() == REPO / "plic" / "__init__.py"
    preload = COMFYUI_LOADS_THE_PACK.replace("path_before = ", "import plic; path_before = ", 1)
    result = subprocess.run([sys.executable, "-c", preload, str(tmp_path / "custom_nodes" / "comfyui-plic")],
                            capture_output=True, text=True, cwd=tmp_path, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(other.parent)})
    assert result.returncode == 1
    assert "another one is already imported from " + str(other) in result.stderr


def test_edges_node_matches_the_codec_for_a_batch(batch, astronaut):
    edges, preview = PlicCannyEdges().run(batch, 128, 100, 200)
    assert len(edges) == 2 and preview.shape == (2, 128, 128, 3)
    expected = pack.edges_part(pack.working_image(astronaut, 128)[1], (256, 256))
    assert edges[0].stream == expected.stream and edges[0].original_size == (256, 256)
    assert set(np.unique(preview.numpy())) <= {0.0, 1.0}
    assert np.array_equal(preview[0, ..., 0].numpy() > 0.5, expected.bitmap.astype(bool))


def test_edges_node_rejects_crossed_thresholds(batch):
    with pytest.raises(PlicInputError, match="low <= high"):
        PlicCannyEdges().run(batch, 128, 200, 100)


def test_palette_node_stores_the_reference_palette(batch, astronaut):
    palettes, preview = PlicPalette().run(batch, 1024, 32, 80)
    assert len(palettes) == 2 and preview.shape == batch.shape
    assert palettes[0].data == pack.palette_part(astronaut).data
    assert palettes[0].small.shape == (32, 32, 3)


def test_pack_reports_size_and_matches_encode_image(astronaut):
    *_, packed = compress(as_image(astronaut))
    (payload,) = packed["result"][0]
    (report,) = packed["ui"]["plic"]
    assert fileformat.dumps(payload) == fileformat.dumps(
        pack.encode_image(astronaut, prompt="an astronaut", settings=pack.EncodeSettings(max_side=256)))
    assert report["bytes"] == len(fileformat.dumps(payload))
    assert report["bpp"] == pytest.approx(report["bytes"] * 8 / (256 * 256))
    assert report["ratio"] == pytest.approx(256 * 256 * 3 / report["bytes"])


def test_pack_takes_salient_parts_and_checks_their_size(astronaut):
    image = as_image(astronaut)
    edges, _, palette, _, _ = compress(image)
    mask = np.zeros((256, 256), bool)
    mask[60:120, 80:150] = True
    salient = [pack.salient_part(astronaut, mask)]
    (payload,) = PlicPack().run("an astronaut", edges, palette, salient)["result"][0]
    unpacked = pack.unpack(payload)
    assert np.array_equal(unpacked.salient_mask, mask)
    assert np.array_equal(unpacked.salient_pixels[mask], astronaut[mask])
    wrong = [pack.salient_part(load_shared("astronaut.png", 128), mask[:128, :128])]
    with pytest.raises(PlicInputError, match="salient mask is 128x128"):
        PlicPack().run("an astronaut", edges, palette, wrong)


@pytest.mark.parametrize("prompt", ["", "   \n "])
def test_pack_rejects_an_empty_prompt(astronaut, prompt):
    edges, _, palette, _, _ = compress(as_image(astronaut))
    with pytest.raises(PlicInputError, match="prompt for image 1 is empty"):
        PlicPack().run(prompt, edges, palette)


def test_pack_rejects_parts_of_different_batches(batch, astronaut):
    edges, *_ = compress(batch)
    _, _, palette, _, _ = compress(as_image(astronaut, astronaut, astronaut))
    with pytest.raises(PlicInputError, match="3 palettes for 2 images"):
        PlicPack().run("x", edges, palette)


def test_save_load_unpack_round_trip_is_bit_exact(folders, batch):
    inputs, outputs = folders
    *_, packed = compress(batch)
    payloads = packed["result"][0]
    saved = PlicSave().run(payloads, "plic/test")["ui"]["plic"]
    assert [s["filename"] for s in saved] == ["test_00001_.plic", "test_00002_.plic"]
    assert all(s["subfolder"] == "plic" and s["type"] == "output" for s in saved)
    again = PlicSave().run(payloads[:1], "plic/test")["ui"]["plic"]
    assert again[0]["filename"] == "test_00003_.plic"  # never overwrites
    for item, payload in zip(saved, payloads):
        data = (outputs / "plic" / item["filename"]).read_bytes()
        assert data == fileformat.dumps(payload) and item["bytes"] == len(data)
        (inputs / item["filename"]).write_bytes(data)
    assert input_files() == ["test_00001_.plic", "test_00002_.plic"]
    assert PlicLoad.VALIDATE_INPUTS("test_00002_.plic") is True
    (loaded,) = PlicLoad().run("test_00002_.plic")
    assert fileformat.dumps(loaded[0]) == fileformat.dumps(payloads[1])
    prompt, hint, edges, palette, pixels, mask, width, height, regenerate = PlicUnpack().run(loaded)
    expected = pack.unpack(payloads[1])
    assert (prompt, width, height) == ("an astronaut", 256, 256)
    assert torch.equal(hint, torch.from_numpy(expected.color_canny_hint[None]).float() / 255)
    assert torch.equal(edges[0, ..., 0], torch.from_numpy(expected.edges).float())
    assert palette.shape == (1, 256, 256, 3) and pixels.abs().sum() == 0
    assert mask.shape == (1, 256, 256) and mask.sum() == 0 and regenerate.min() == 1


def test_unpack_a_batch(batch):
    *_, packed = compress(batch)
    outputs = PlicUnpack().run(packed["result"][0])
    assert outputs[1].shape == (2, 256, 256, 3) and outputs[5].shape == (2, 256, 256)


def test_load_rejects_corrupt_truncated_and_outside_files(folders, astronaut):
    inputs, _ = folders
    data = fileformat.dumps(compress(as_image(astronaut))[-1]["result"][0][0])
    (inputs / "truncated.plic").write_bytes(data[:-7])
    damaged = bytearray(data)
    damaged[-10] ^= 0xFF  # inside the last section's payload
    (inputs / "damaged.plic").write_bytes(bytes(damaged))
    (inputs.parent / "outside.plic").write_bytes(data)
    for name, needle in [("truncated.plic", "truncated"), ("damaged.plic", "checksum mismatch"),
                         ("../outside.plic", "outside the input folder"),
                         ("missing.plic", "is not in the input folder")]:
        message = PlicLoad.VALIDATE_INPUTS(name)
        assert isinstance(message, str) and needle in message, message
        with pytest.raises(PlicError, match=needle):
            PlicLoad().run(name)
    assert "../outside.plic" not in input_files()


def test_load_reports_a_damaged_payload_behind_right_checksums(folders, astronaut):
    """Issue 24 item 7: a CRC-valid file with a broken edge payload passed PLIC Load and failed
    later in PLIC Unpack naming <plic>; a file that is not a name gave a TypeError."""
    inputs, _ = folders
    plic = compress(as_image(astronaut))[-1]["result"][0][0]
    plic.edges = plic.edges[:20]  # the JBIG2 stream cut inside its region: CRCs are recomputed
    fileformat.save(plic, inputs / "broken.plic")
    message = PlicLoad.VALIDATE_INPUTS("broken.plic")
    assert isinstance(message, str) and message.startswith(str(inputs / "broken.plic"))
    assert "section edges (EDGE)" in message
    with pytest.raises(PlicInputError, match="PLIC Load: file must be the name of a .plic file in "
                                             "the input folder, not int 7"):
        PlicLoad().run(7)


@pytest.mark.parametrize("node, inputs, refused", [
    ("PlicSalientRegions", {"budget_bpp": float("nan")}, "PLIC Salient Regions: input 'budget_bpp' is nan; it must be a number in 0..24"),
    ("PlicSalientRegions", {"face_threshold": float("nan")}, "input 'face_threshold' is nan; it must be a number in 0..1"),
    ("PlicReconstruct", {"guidance_scale": float("nan")}, "PLIC Reconstruct: input 'guidance_scale' is nan"),
    ("PlicCaption", {"timeout": float("inf")}, "input 'timeout' is inf; it must be a number in 1..3600"),
    ("PlicSave", {"filename_prefix": "a\0b"}, "PLIC Save: input 'filename_prefix' holds a NUL character"),
    ("PlicPack", {"prompt": "bad \ud800"}, "PLIC Pack: input 'prompt' holds text that is not valid Unicode"),
])
def test_every_node_refuses_non_finite_numbers_and_unwritable_text(node, inputs, refused):
    """Issue 23 item 6: NaN passes ComfyUI's range check (each comparison with it is false); a NUL
    in filename_prefix and a lone surrogate in a prompt raised raw errors. Each node checks what
    reaches it before it runs."""
    node_class = nodes.NODE_CLASS_MAPPINGS[node]
    declared = {**node_class.INPUT_TYPES()["required"], **node_class.INPUT_TYPES().get("optional", {})}
    assert set(inputs) <= set(declared), f"{node} has no input {set(inputs) - set(declared)}"
    with pytest.raises(PlicInputError, match=refused.replace("(", ".").replace(")", ".")):
        getattr(node_class(), node_class.FUNCTION)(**inputs)


def test_load_reruns_when_the_file_content_changes(folders, astronaut):
    inputs, _ = folders
    data = fileformat.dumps(compress(as_image(astronaut))[-1]["result"][0][0])
    (inputs / "a.plic").write_bytes(data)
    first = PlicLoad.IS_CHANGED("a.plic")
    assert PlicLoad.IS_CHANGED("a.plic") == first
    (inputs / "a.plic").write_bytes(fileformat.dumps(
        compress(as_image(astronaut), prompt="another prompt")[-1]["result"][0][0]))
    assert PlicLoad.IS_CHANGED("a.plic") != first


def test_save_refuses_a_prefix_outside_the_output_folder(folders, astronaut):
    payloads = compress(as_image(astronaut))[-1]["result"][0]
    with pytest.raises(PlicInputError, match="inside the output folder"):
        PlicSave().run(payloads, "../escape")


def test_folders_default_to_the_current_directory(tmp_path, monkeypatch):
    from nodes.common import comfy_directory

    monkeypatch.delenv("PLIC_OUTPUT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert comfy_directory("output") == tmp_path / "output"
    assert importlib.util.find_spec("folder_paths") is None


def test_unpack_refuses_a_batch_of_two_sizes(astronaut):
    small = compress(as_image(load_shared("astronaut.png", 128)), max_side=128)[-1]["result"][0]
    large = compress(as_image(astronaut))[-1]["result"][0]
    with pytest.raises(PlicInputError, match=r"PLIC Unpack: the batch mixes sizes \(128x128, 256x256\)"):
        PlicUnpack().run(large + small)


def test_mask_to_list_repeats_one_mask_and_refuses_a_batch_that_fits_no_image():
    from nodes.common import mask_to_list

    mask = torch.zeros(1, 4, 5)
    mask[0, 1, 2] = 1
    masks = mask_to_list(mask, 3)
    assert len(masks) == 3 and all(m.dtype == bool and m.sum() == 1 and m[1, 2] for m in masks)
    with pytest.raises(PlicInputError, match="2 masks for 3 images"):
        mask_to_list(torch.zeros(2, 4, 5), 3)


def test_an_empty_payload_is_refused_by_name():
    from nodes.unpack import PlicUnpack

    with pytest.raises(PlicInputError, match="PLIC Unpack: the payload is empty"):
        PlicUnpack().run([])


def test_palette_node_uses_the_working_image_of_every_other_part(batch, astronaut):
    """Issue 11 item 3: with a max side below the image's, the graph writes the CLI's file, and
    PLIC Pack refuses a palette made from another working size."""
    edges, _, palette, _, packed = compress(batch, max_side=128)
    (payload, _) = packed["result"][0]
    expected = pack.encode_image(astronaut, prompt="an astronaut",
                                  settings=pack.EncodeSettings(max_side=128))
    assert fileformat.dumps(payload) == fileformat.dumps(expected)
    other, _ = PlicPalette().run(batch, 256, 32, 80)
    with pytest.raises(PlicInputError, match="palette was made from a 256x256 working image but "
                                             "the edges from a 128x128 one"):
        PlicPack().run("x", edges, other)


def test_caption_node_offers_no_limit_beyond_the_prompts():
    """Issue 11 item 4: max_chars stops at the limit PLIC Pack cuts prompts to."""
    from nodes.caption import PlicCaption

    max_chars = PlicCaption.INPUT_TYPES()["required"]["max_chars"][1]
    assert max_chars["max"] == MAX_PROMPT_CHARS == max_chars["default"]


def test_example_inputs_are_installed_once_and_never_over_a_users_file(tmp_path):
    from nodes.files import EXAMPLE_INPUTS, install_example_inputs

    (tmp_path / "plic_example.png").write_bytes(b"the user's own file")
    written = install_example_inputs(tmp_path)
    assert [p.name for p in written] == ["plic_example.plic"]
    assert (tmp_path / "plic_example.png").read_bytes() == b"the user's own file"
    assert (tmp_path / "plic_example.plic").read_bytes() == EXAMPLE_INPUTS["plic_example.plic"].read_bytes()
    assert install_example_inputs(tmp_path) == []


def test_preview_parts_shows_each_file_on_the_node_and_as_an_image(tmp_path, monkeypatch, batch, astronaut):
    from nodes.preview import PlicPreviewParts
    from plic.codec.export import preview_image

    monkeypatch.setenv("PLIC_TEMP_DIR", str(tmp_path))
    two = compress(batch)[-1]["result"][0]
    small = compress(as_image(astronaut), max_side=128)[-1]["result"][0]
    out = PlicPreviewParts().run(two + small)
    (pictures,) = out["result"]
    shown = [np.asarray(Image.open(tmp_path / entry["filename"])) for entry in out["ui"]["images"]]
    assert [entry["type"] for entry in out["ui"]["images"]] == ["temp"] * 3
    expected = np.asarray(preview_image(two[1], "x", len(fileformat.dumps(two[1]))))
    np.testing.assert_array_equal(shown[1], expected)
    assert pictures.shape == (3, *expected.shape) and shown[2].shape[0] < expected.shape[0]
    np.testing.assert_array_equal(np.rint(pictures[1].numpy() * 255).astype(np.uint8), expected)
    assert (pictures[2, shown[2].shape[0]:] == 1).all()  # the smaller file's picture, padded white
