"""One home for each default: every PLIC node's widget in a shipped workflow (UI format in
workflows/, API format in workflows/api/) holds the node's INPUT_TYPES default, which is read
from the library's constant, unless :data:`DELIBERATE` says why it differs. A changed default
then fails here until the workflows follow it (or the difference is given its reason)."""

import json

import pytest

from tests.support.images import OBJECT_INFO, REPO
from tests.support.workflow_schema import load_schemas, widget_entries

UI_WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
API_WORKFLOWS = sorted((REPO / "workflows" / "api").glob("*.json"))

#: (workflow file name, node type, input) -> why its value is not the node's default. The UI and
#: API copies of a workflow share their entries.
DELIBERATE = {
    ("plic_compress.json", "PlicCaption", "backend"):
        "the template runs without an API key or a model: its prompt is written by hand",
    ("plic_compress.json", "PlicCaption", "manual_text"):
        "the hand-written prompt of the example image",
    ("plic_decompress.json", "PlicLoad", "file"):
        "the example .plic the pack puts into ComfyUI's input folder (nodes/files.py)",
    ("plic_decompress_fast.json", "PlicLoad", "file"):
        "the example .plic the pack puts into ComfyUI's input folder (nodes/files.py)",
    ("plic_decompress_reference.json", "PlicLoad", "file"):
        "the example .plic the pack puts into ComfyUI's input folder (nodes/files.py)",
    ("plic_decompress_fast.json", "PlicDecodeSettings", "steps"):
        "a few-step LoRA (LCM-LoRA) runs 4 steps, not the file's",
    ("plic_decompress_fast.json", "PlicDecodeSettings", "cfg"):
        "a few-step LoRA runs at cfg 1 (no classifier-free guidance)",
    ("plic_decompress_reference.json", "PlicDiffusersLoader", "model"):
        "the name of the SD1.5 diffusers folder the template's note asks for",
    ("plic_decompress_reference.json", "PlicDiffusersLoader", "inpaint_controlnet"):
        "the name of the inpaint ControlNet the template's note asks for",
    ("plic_decompress_reference.json", "PlicDiffusersLoader", "color_canny_controlnet"):
        "the name of the color+canny ControlNet the template's note asks for",
}


@pytest.fixture(scope="module")
def schemas():
    import nodes

    return load_schemas(OBJECT_INFO, nodes.NODE_CLASS_MAPPINGS)


@pytest.fixture(scope="module")
def plic_types():
    import nodes

    return set(nodes.NODE_CLASS_MAPPINGS)


def _ui_values(workflow, schemas, plic_types):
    """(node type, input, value) for each widget of the PLIC nodes of a UI workflow."""
    for node in workflow["nodes"]:
        if node["type"] in plic_types:
            entries = widget_entries(schemas[node["type"]], node.get("widgets_values"))
            assert entries is not None, f"node {node['id']}: widget values do not fit (test_workflows.py)"
            yield from ((node["type"], name, value) for name, spec, value in entries if spec is not None)


def _api_values(prompt, schemas, plic_types):
    """(node type, input, value) for each widget input an API workflow sets on a PLIC node."""
    for node in prompt.values():
        if node["class_type"] in plic_types:
            yield from ((node["class_type"], name, value) for name, value in node["inputs"].items()
                        if not isinstance(value, list))  # a list is a link


def _default(schema: dict, name: str):
    """The default an input declares; None for one without (a list of the user's files, whose
    every value is a difference to give a reason for)."""
    spec = next(section[name] for section in schema["input"].values() if name in section)
    return spec[1].get("default") if len(spec) > 1 else None


def _differences(values, schemas) -> dict:
    """(node type, input) -> (value, default) for each value that is not its input's default."""
    out = {}
    for node_type, name, value in values:
        default = _default(schemas[node_type], name)
        if value != default:
            out[node_type, name] = (value, default)
    return out


def _deliberate(path) -> set:
    return {(node_type, name) for (file, node_type, name) in DELIBERATE if file == path.name}


@pytest.mark.parametrize("path", UI_WORKFLOWS + API_WORKFLOWS, ids=lambda p: str(p.relative_to(REPO)))
def test_workflow_widgets_hold_the_node_defaults(path, schemas, plic_types):
    workflow = json.loads(path.read_text())
    values = (_ui_values if "nodes" in workflow else _api_values)(workflow, schemas, plic_types)
    found = _differences(values, schemas)
    assert {key: found[key] for key in set(found) - _deliberate(path)} == {}
    assert _deliberate(path) - set(found) == set(), "no longer differs: remove it from DELIBERATE"


def test_every_deliberate_difference_names_a_shipped_workflow():
    assert {file for file, _, _ in DELIBERATE} <= {p.name for p in UI_WORKFLOWS}


# --- the defaults the docs state ---------------------------------------------------------------

def _docs_defaults() -> dict:
    """file -> the phrases stating a default (whitespace collapsed) that it must hold, built from
    the constants: a changed default fails here until the docs say it."""
    from math import isqrt

    from plic import caption
    from plic.codec import edges, palette, ratecontrol, salient
    from plic.codec.fileformat import MAX_WORKING_PIXELS
    from plic.codec.pack import DEFAULT_DECODE_SETTINGS as HINTS
    from plic.codec.pack import EncodeSettings
    from plic.codec.prompt import MAX_PROMPT_CHARS
    from plic.image import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE
    from plic.salient import detect, dino_sam, faces, text

    side, size, quality = isqrt(MAX_WORKING_PIXELS), palette.DEFAULT_SIZE, palette.DEFAULT_QUALITY
    low, high = edges.DEFAULT_LOW, edges.DEFAULT_HIGH
    return {
        "README.md": [  # the parts, `plic encode` options, then the caption and salient tables
            f"| colour palette | the image shrunk to {size}x{size} (bicubic), WebP quality {quality} |",
            f"`--max-side N` (working size, default {DEFAULT_MAX_SIDE},",
            f"`--canny LOW HIGH` ({low} {high}), `--palette-size N` ({size}), `--palette-quality Q` ({quality})",
            f"`--max-pixels N` ({DEFAULT_MAX_PIXELS // 1_000_000} MP)",
            f"`--max-working-pixels N` ({side}x{side})",
            "raises the Canny thresholds (up to {}/{})".format(*ratecontrol.THRESHOLD_LADDER[-1]),
            f"suggesting `--target-bpp {ratecontrol.SUGGESTED_BPP}`",
            f"| `--caption-model` / model | {caption.DEFAULT_MODEL} |",
            f"| `--caption-key-env` / api_key_env | {caption.DEFAULT_KEY_ENV} |",
            f"| `--caption-timeout` / timeout | {caption.DEFAULT_TIMEOUT:g} s |",
            f"| `--caption-retries` / max_retries | {caption.DEFAULT_RETRIES} |",
            f"| `--caption-limit` / max_chars | {MAX_PROMPT_CHARS} |",
            f"The image is sent as a JPEG of at most {caption.DEFAULT_MAX_SIDE} px",
            f"| `--salient` / faces, text, dino_sam | `{detect.AUTO}` |",
            f"| `--face-threshold`, `--word-threshold` / face_threshold, word_threshold | "
            f"{faces.DEFAULT_FACE_THRESHOLD}, {text.DEFAULT_WORD_THRESHOLD} |",
            f"| `--min-face PX` / min_face | {faces.DEFAULT_MIN_FACE} |",
            f"| `--salient-budget BPP` / budget_bpp | {salient.DEFAULT_MAX_BPP} |",
            f"| `--salient-codec` / codec | {EncodeSettings.salient_codec} |",
            f'| `--dino-prompt`, `--box-threshold`, `--text-threshold` | "{dino_sam.DEFAULT_DINO_PROMPT}", '
            f"{dino_sam.DEFAULT_BOX_THRESHOLD}, {dino_sam.DEFAULT_TEXT_THRESHOLD} |",
        ],
        "docs/method.md": [
            f"`--max-side` ({DEFAULT_MAX_SIDE})",
            f"`--caption-limit` ({MAX_PROMPT_CHARS})",
            f"`--canny LOW HIGH` ({low} {high})",
            f"`--palette-size` ({size}), `--palette-quality` ({quality})",
        ],
        "docs/format.md": [
            f"`max_side` (default {DEFAULT_MAX_SIDE})",
            f"(default {size}x{size}, at most {palette.MAX_SIZE}x{palette.MAX_SIZE}, bicubic), "
            f"as a WebP file (default quality {quality})",
            f"`seed` ({HINTS['seed']};", f"`steps` ({HINTS['steps']};",
            f"`negative_prompt` (\"{HINTS['negative_prompt']}\";",
            f"`controlnet_scale` ({HINTS['controlnet_scale']};", f"`scheduler` (\"{HINTS['scheduler']}\";",
        ],
        "docs/ratecontrol.md": [
            f"By default PLIC encodes with the paper's fixed settings (Canny {low}/{high}, "
            f"palette {size}x{size} WebP q{quality})",
            "along `THRESHOLD_LADDER` = " + ", ".join(f"{lo}/{hi}" for lo, hi in ratecontrol.THRESHOLD_LADDER),
        ],
    }


def test_the_docs_state_the_current_defaults():
    missing = []
    for name, phrases in _docs_defaults().items():
        text = " ".join((REPO / name).read_text().split())
        missing += [f"{name}: {phrase}" for phrase in phrases if phrase not in text]
    assert missing == []
