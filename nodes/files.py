"""PLIC Save and PLIC Load: ``.plic`` files in ComfyUI's output and input folders."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from plic.atomic import write_atomic
from plic.codec import fileformat, pack
from plic.errors import PlicError, PlicInputError

from .common import CATEGORY, PAYLOAD, comfy_directory

EXTENSION = fileformat.SUFFIX
PACK = Path(__file__).resolve().parents[1]
#: The inputs the shipped workflows name, copied into ComfyUI's input folder so that every
#: template queues as it is: input file name -> the pack's file.
EXAMPLE_INPUTS = {"plic_example.png": PACK / "plic" / "data" / "example.png",
                  "plic_example.plic": PACK / "workflows" / "input" / "plic_example.plic"}


class PlicSave:
    DESCRIPTION = ("Writes each payload as a .plic file to ComfyUI's output folder, named after "
                   "filename_prefix with a counter (PLIC_00001_.plic, PLIC_00002_.plic, never "
                   "overwriting), and shows size, bpp and compression ratio on the node.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = ()

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "plic": (PAYLOAD, {"tooltip": "The payload from PLIC Pack (or PLIC Load)."}),
            "filename_prefix": ("STRING", {"default": "PLIC",
                                           "tooltip": "Start of the file names; may hold sub-folders "
                                                      "of the output folder, e.g. 'plic/photos'."}),
        }}

    def run(self, plic, filename_prefix):
        output = comfy_directory("output")
        saved = []
        for payload in plic:
            data = fileformat.dumps(payload)
            path = write_numbered(output, filename_prefix, data)
            subfolder = path.parent.relative_to(output.resolve()).as_posix()
            saved.append({"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                          "type": "output", **pack.size_breakdown(len(data), payload)})
        return {"ui": {"plic": saved}}


def write_numbered(output: Path, prefix: str, data: bytes) -> Path:
    """Write ``data`` to ``output``/<prefix>_NNNNN_.plic with the first counter above every
    existing one; never replaces a file. The prefix may not leave ``output``."""
    root = output.resolve()
    prefix = os.path.normpath(prefix.strip() or "PLIC")
    folder = (root / os.path.dirname(prefix)).resolve()
    name = os.path.basename(prefix)
    if (folder != root and root not in folder.parents) or name in ("", ".", ".."):
        raise PlicInputError(f"PLIC Save: filename_prefix {prefix!r} must name a file inside "
                             f"the output folder {root}")
    folder.mkdir(parents=True, exist_ok=True)
    pattern = re.compile(re.escape(name) + r"_(\d+)_" + re.escape(EXTENSION) + "$")
    counters = [int(m.group(1)) for m in map(pattern.match, os.listdir(folder)) if m]
    counter = max(counters, default=0) + 1
    while True:
        path = folder / f"{name}_{counter:05}_{EXTENSION}"
        try:
            return write_atomic(path, data)
        except FileExistsError:  # another run took this number meanwhile
            counter += 1


class PlicLoad:
    DESCRIPTION = ("Reads a .plic file from ComfyUI's input folder (upload one with the button). "
                   "A damaged file is reported before the workflow runs.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = (PAYLOAD,)
    RETURN_NAMES = ("plic",)
    OUTPUT_TOOLTIPS = ("The file's payload, for PLIC Unpack.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "file": (input_files(), {"tooltip": "A .plic file in ComfyUI's input folder. Use the "
                                                "'upload .plic' button to add one from your computer."}),
        }}

    @classmethod
    def IS_CHANGED(cls, file):
        try:
            return hashlib.sha256(input_path(file).read_bytes()).hexdigest()
        except (PlicError, OSError) as exc:
            return f"unreadable: {exc}"

    @classmethod
    def VALIDATE_INPUTS(cls, file):
        try:
            read_checked(file)
        except PlicError as exc:
            return str(exc)
        return True

    def run(self, file):
        return ([read_checked(file)],)


def read_checked(name: str) -> fileformat.PlicFile:
    """The file ``name`` of the input folder, with every section decoded once as a check, so
    that a damaged payload behind right checksums is reported here, not by a later node."""
    path = input_path(name)
    plic = fileformat.load(path)
    pack.unpack(plic, str(path))
    return plic


def input_files() -> list[str]:
    """The .plic files under the input folder, as paths relative to it with '/'. (Not a
    folder_paths model folder: that would list the user's files as models.)"""
    root = comfy_directory("input")
    return sorted(path.relative_to(root).as_posix() for path in root.rglob(f"*{EXTENSION}")
                  if path.is_file())


def install_example_inputs(folder: Path) -> list[Path]:
    """Copy the shipped workflows' inputs into ``folder`` where no file of that name is; a
    user's file of the same name is never replaced. Returns the files written."""
    written = []
    for name, source in EXAMPLE_INPUTS.items():
        target = folder / name
        if target.exists():
            continue
        try:
            written.append(write_atomic(target, source.read_bytes()))
        except FileExistsError:  # another process wrote it meanwhile
            continue
    return written


def input_path(name: str) -> Path:
    """The file ``name`` of the input folder; PlicInputError if it is missing, is not a .plic
    file or lies outside the folder."""
    if not isinstance(name, str):
        raise PlicInputError(f"PLIC Load: file must be the name of a {EXTENSION} file in the "
                             f"input folder, not {type(name).__name__} {name!r}")
    root = comfy_directory("input").resolve()
    path = (root / name).resolve()
    if root not in path.parents:
        raise PlicInputError(f"PLIC Load: {name!r} is outside the input folder {root}; "
                             "pick a file from the list")
    if path.suffix.lower() != EXTENSION:
        raise PlicInputError(f"PLIC Load: {name!r} is not a {EXTENSION} file")
    if not path.is_file():
        raise PlicInputError(f"PLIC Load: {name!r} is not in the input folder {root}; upload it "
                             "with the 'upload .plic' button")
    return path


NODE_CLASS_MAPPINGS = {"PlicSave": PlicSave, "PlicLoad": PlicLoad}
NODE_DISPLAY_NAME_MAPPINGS = {"PlicSave": "PLIC Save",
                              "PlicLoad": "PLIC Load"}
