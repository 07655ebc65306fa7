"""Running a command over many files, as ``plic encode`` and ``plic decode`` do: folders are
expanded, outputs that would clash are refused before anything is written, and each failure is
reported on one line naming its file while the other files go on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from .errors import PlicError, one_line

Job = tuple[Path, Path]  # (input file, output file)


def expand(paths: list[Path], suffixes: set[str], what: str) -> list[Path]:
    """Files as given; folders replaced by the files directly inside them whose suffix is one
    of ``suffixes``, sorted. PlicError naming ``what`` when nothing is left."""
    files = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes))
        else:
            files.append(path)
    if not files:
        raise PlicError(f"{' '.join(map(str, paths))}: no {what} found")
    return files


def distinct_outputs(jobs: list[Job]) -> list[Job]:
    """``jobs`` as given, unless two inputs would be written to the same output (PlicError:
    the second would replace the first, or fail as already existing)."""
    first_input = {}
    for source, target in jobs:
        if target in first_input:
            raise PlicError(f"{source}: would be written to {target} like {first_input[target]}; "
                            "rename one of them or run them separately")
        first_input[target] = source
    return jobs


def run_each(jobs: list[Job], work: Callable[[Path, Path], None]) -> int:
    """Call ``work(source, target)`` for every job; a PlicError is printed as one line that
    names the file (prefixed when the message does not) and the next job goes on. Returns the
    exit status: 1 when any job failed."""
    failures = 0
    for source, target in jobs:
        try:
            work(source, target)
        except PlicError as exc:
            message = one_line(exc)
            named = str(source) in message or str(target) in message
            print(f"plic: {message if named else f'{source}: {message}'}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0
