"""Check ComfyUI workflows against node schemas, without running ComfyUI.

Schemas are ``GET /object_info`` entries: ComfyUI's own (a saved object_info.json) merged with
ours (built from NODE_CLASS_MAPPINGS). Two workflow formats are understood:

* UI format (what the editor saves): ``nodes`` with ``inputs``/``outputs``/``widgets_values``
  and ``links`` as ``[id, from_node, from_slot, to_node, to_slot, type]``;
* API format (what ``POST /prompt`` takes): ``{id: {"class_type", "inputs"}}`` where a linked
  input is ``[from_id, from_slot]``.

Each ``validate_*`` returns a list of readable problems; an empty list means valid.
"""

from __future__ import annotations

import json
from pathlib import Path

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
#: Values of the extra widget the editor adds after an INT with control_after_generate.
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}
#: Input options after which the editor adds an upload widget (its value is saved too).
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload")
#: Editor-only nodes that never reach the server.
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}


def schemas_from_mappings(mappings: dict) -> dict:
    """object_info-like entries for node classes given as NODE_CLASS_MAPPINGS."""
    out = {}
    for name, cls in mappings.items():
        inputs = cls.INPUT_TYPES()
        out[name] = {
            "input": inputs,
            "input_order": {section: list(items) for section, items in inputs.items()},
            "output": list(cls.RETURN_TYPES),
            "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
            "output_node": bool(getattr(cls, "OUTPUT_NODE", False)),
        }
    return out


def load_schemas(object_info: Path, mappings: dict) -> dict:
    """ComfyUI's schemas from ``object_info`` (JSON) with ours added on top; Load Image also
    lists the example images the pack puts into ComfyUI's input folder (nodes/files.py)."""
    from nodes.files import EXAMPLE_INPUTS

    schemas = {**json.loads(object_info.read_text()), **schemas_from_mappings(mappings)}
    image = schemas["LoadImage"]["input"]["required"]["image"]
    examples = {name for name in EXAMPLE_INPUTS if Path(name).suffix in (".png", ".jpg")}
    image[0] = sorted(set(image[0]) | examples)
    return schemas


# --- input specs ------------------------------------------------------------------------------

def _options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def input_type(spec) -> str:
    """The socket type of an input spec; combos are "COMBO"."""
    return "COMBO" if isinstance(spec[0], (list, tuple)) else spec[0]


def combo_choices(spec) -> list:
    return list(spec[0]) if isinstance(spec[0], (list, tuple)) else list(_options(spec).get("options", []))


def is_widget(spec) -> bool:
    return input_type(spec) in WIDGET_TYPES and not _options(spec).get("forceInput", False)


def ordered_inputs(schema: dict, sections=("required", "optional")) -> list[tuple[str, list, bool]]:
    """(name, spec, required) for every input, in the order ComfyUI shows them."""
    out = []
    for section in sections:
        specs = schema["input"].get(section, {})
        order = schema.get("input_order", {}).get(section, list(specs))
        out.extend((name, specs[name], section == "required") for name in order)
    return out


def check_value(where: str, spec, value) -> list[str]:
    """Problems with ``value`` for an input of ``spec``."""
    kind = input_type(spec)
    options = _options(spec)
    if kind == "COMBO":
        choices = combo_choices(spec)
        if not isinstance(value, str) and not choices:
            return [f"{where}: {value!r} is not a string"]
        if choices and value not in choices:  # an empty list is a model-file list: any name
            return [f"{where}: {value!r} is not one of {choices[:8]}"]
        return []
    if kind == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {value!r} is not a boolean"]
    if kind == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {value!r} is not a string"]
    if kind in ("INT", "FLOAT"):
        number_types = (int,) if kind == "INT" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number_types):
            return [f"{where}: {value!r} is not an {kind}"]
        low, high = options.get("min"), options.get("max")
        if (low is not None and value < low) or (high is not None and value > high):
            return [f"{where}: {value} is outside {low}..{high}"]
    return []


def types_match(output_type: str, input_type_: str) -> bool:
    """ComfyUI's rule: equal types, "*" on either side, or one of comma-separated types."""
    if "*" in (output_type, input_type_):
        return True
    return bool(set(output_type.split(",")) & set(input_type_.split(",")))


# --- UI format --------------------------------------------------------------------------------

def widget_slots(schema: dict) -> list[tuple[str, list | None, bool]]:
    """The entries of a node's ``widgets_values``: (name, spec, optional_entry). Extra entries
    the editor adds (control_after_generate, upload buttons) have spec None."""
    slots = []
    for name, spec, _required in ordered_inputs(schema):
        if not is_widget(spec):
            continue
        slots.append((name, spec, False))
        options = _options(spec)
        if input_type(spec) == "INT" and (options.get("control_after_generate")
                                          or name in ("seed", "noise_seed")):
            slots.append((f"{name} control_after_generate", None, False))
        if any(options.get(flag) for flag in UPLOAD_FLAGS):
            slots.append((f"{name} upload", None, True))
    return slots


def widget_entries(schema: dict, values) -> list[tuple[str, list | None, object]] | None:
    """(name, spec, value) for each entry of a node's ``widgets_values`` (a list in the order of
    :func:`widget_slots`, or a name -> value mapping), or None when the list's length fits
    neither all the slots nor those without the optional entries."""
    slots = widget_slots(schema)
    if isinstance(values, dict):  # some nodes save a name -> value mapping
        return [(name, spec, values[name]) for name, spec, _ in slots if spec is not None and name in values]
    values = list(values or [])
    if len(values) != len(slots):  # the editor may leave out the optional entries
        slots = [slot for slot in slots if not slot[2]]
    if len(values) != len(slots):
        return None
    return [(name, spec, value) for (name, spec, _optional), value in zip(slots, values)]


def _check_widgets(where: str, schema: dict, values) -> list[str]:
    entries = widget_entries(schema, values)
    if entries is None:
        names = [name for name, _, optional in widget_slots(schema) if not optional]
        return [f"{where}: {len(values or [])} widget values for the widgets {names}"]
    problems = []
    for name, spec, value in entries:
        if spec is not None:
            problems += check_value(f"{where} {name}", spec, value)
        elif name.endswith("control_after_generate") and value not in CONTROL_VALUES:
            problems.append(f"{where} {name}: {value!r} is not one of {sorted(CONTROL_VALUES)}")
    return problems


def validate_ui(workflow: dict, schemas: dict) -> list[str]:
    """Problems of a UI-format workflow (see the module docstring)."""
    problems = []
    nodes = {node["id"]: node for node in workflow.get("nodes", [])}
    links = {link[0]: link for link in workflow.get("links", [])}
    for node in nodes.values():
        where = f"node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            continue
        schema = schemas.get(node["type"])
        if schema is None:
            problems.append(f"{where}: no such node type")
            continue
        problems += _check_widgets(where, schema, node.get("widgets_values"))
        linked = {i["name"]: i.get("link") for i in node.get("inputs", []) if i.get("link") is not None}
        for name, spec, required in ordered_inputs(schema):
            if required and not is_widget(spec) and name not in linked:
                problems.append(f"{where}: required input {name!r} is not connected")
        known = {name for name, _, _ in ordered_inputs(schema)}
        problems += [f"{where}: unknown input {i['name']!r}" for i in node.get("inputs", [])
                     if i["name"] not in known]
    for link_id, (_, source, source_slot, target, target_slot, link_type) in links.items():
        problems += _check_ui_link(link_id, nodes, schemas, source, source_slot, target,
                                   target_slot, link_type)
    return problems


def _ui_output_type(node: dict, slot: int, schemas: dict) -> str | None:
    if node["type"] in FRONTEND_ONLY:
        outputs = node.get("outputs", [])
        return outputs[slot]["type"] if slot < len(outputs) else None
    outputs = schemas[node["type"]]["output"]
    return outputs[slot] if slot < len(outputs) else None


def _check_ui_link(link_id, nodes, schemas, source, source_slot, target, target_slot, link_type):
    where = f"link {link_id}"
    if source not in nodes or target not in nodes:
        return [f"{where}: joins a missing node ({source} -> {target})"]
    src, dst = nodes[source], nodes[target]
    if src["type"] not in FRONTEND_ONLY and src["type"] not in schemas:
        return []  # reported with the node
    out_type = _ui_output_type(src, source_slot, schemas)
    if out_type is None:
        return [f"{where}: node {source} has no output {source_slot}"]
    inputs = dst.get("inputs", [])
    if target_slot >= len(inputs) or inputs[target_slot].get("link") != link_id:
        return [f"{where}: node {target} input {target_slot} does not hold this link"]
    problems = []
    if not types_match(out_type, link_type):
        problems.append(f"{where}: typed {link_type} but node {source} output {source_slot} is {out_type}")
    if dst["type"] in FRONTEND_ONLY:
        return problems
    schema = schemas.get(dst["type"])
    if schema is None:
        return problems
    name = inputs[target_slot]["name"]
    spec = next((s for n, s, _ in ordered_inputs(schema) if n == name), None)
    if spec is not None and not types_match(out_type, input_type(spec)):
        problems.append(f"{where}: {out_type} from node {source} into {dst['type']}.{name} "
                        f"({input_type(spec)})")
    if spec is not None and src["type"] == "PrimitiveNode":
        problems += check_value(f"node {source} (PrimitiveNode)", spec, (src.get("widgets_values") or [None])[0])
    return problems


# --- API format -------------------------------------------------------------------------------

def validate_api(prompt: dict, schemas: dict) -> list[str]:
    """Problems of an API-format workflow (see the module docstring)."""
    problems = []
    for node_id, node in prompt.items():
        where = f"node {node_id} ({node.get('class_type')})"
        schema = schemas.get(node.get("class_type"))
        if schema is None:
            problems.append(f"{where}: no such node type")
            continue
        specs = {name: (spec, required) for name, spec, required in ordered_inputs(schema)}
        given = node.get("inputs", {})
        problems += [f"{where}: unknown input {name!r}" for name in given if name not in specs]
        for name, (spec, required) in specs.items():
            if name not in given:
                if required:
                    problems.append(f"{where}: required input {name!r} is missing")
                continue
            value = given[name]
            if isinstance(value, list) and len(value) == 2 and isinstance(value[0], str):
                problems += _check_api_link(f"{where} {name}", prompt, schemas, value, spec)
            elif is_widget(spec):
                problems += check_value(f"{where} {name}", spec, value)
            else:
                problems.append(f"{where}: input {name!r} ({input_type(spec)}) must be a link")
    return problems


def _check_api_link(where, prompt, schemas, link, spec) -> list[str]:
    source, slot = link
    if source not in prompt:
        return [f"{where}: links to missing node {source}"]
    schema = schemas.get(prompt[source].get("class_type"))
    if schema is None:
        return []  # reported with that node
    outputs = schema["output"]
    if not isinstance(slot, int) or not 0 <= slot < len(outputs):
        return [f"{where}: node {source} has no output {slot}"]
    if not types_match(outputs[slot], input_type(spec)):
        return [f"{where}: {outputs[slot]} from node {source} into a {input_type(spec)} input"]
    return []


# --- the trimmed copy of ComfyUI's schemas in tests/data -----------------------------------------

#: ComfyUI's node classes the tests use beyond those in the shipped workflows.
TEST_CLASS_TYPES = {"KSampler", "CheckpointLoaderSimple", "LoadImage"}


def class_types(workflow: dict) -> set[str]:
    """The node class names a UI or API workflow uses."""
    if "nodes" in workflow:
        return {node["type"] for node in workflow["nodes"]}
    return {node["class_type"] for node in workflow.values()}


def trim(object_info: dict, workflows: list[dict]) -> dict:
    """The entries of ``object_info`` that ``workflows`` and the tests use, in its order."""
    wanted = TEST_CLASS_TYPES.union(*map(class_types, workflows))
    return {name: schema for name, schema in object_info.items() if name in wanted}


def main() -> None:
    """Write the trimmed schemas: ``python -m tests.support.workflow_schema FULL_OBJECT_INFO OUT``."""
    import sys

    full, out = map(Path, sys.argv[1:3])
    repo = Path(__file__).resolve().parents[1]
    workflows = [json.loads(p.read_text()) for p in sorted(repo.glob("workflows/**/*.json"))]
    out.write_text(json.dumps(trim(json.loads(full.read_text()), workflows), indent=1) + "\n")


if __name__ == "__main__":
    main()
