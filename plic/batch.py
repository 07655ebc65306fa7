"""Running a command over many files, as ``plic encode`` and ``plic decode`` do: folders are
expanded, and each failure (an output that would clash with an earlier one's included) is
reported on one line naming its file while the other files go on."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

from plic.errors import PlicError, one_line, printable

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


def several(files: list[Path], given: list[Path]) -> bool:
    """Whether the ``files`` expanded from the paths ``given`` are more than one file named on
    the command line (several, or from a folder): then each gets an output of its own."""
    return len(files) > 1 or files[0] not in given


def refuse_existing(path: Path, overwrite: bool) -> None:
    """Refuse an existing output ``path`` up front, before any work is spent on it, unless
    ``overwrite``."""
    if path.exists() and not overwrite:
        raise PlicError(f"{path}: already exists; pass --overwrite to replace it")


def clash(source: Path, target: Path, first: Path) -> PlicError:
    """The error for ``source``, whose output ``target`` the earlier input ``first`` writes."""
    if Path(source).resolve() == Path(first).resolve():
        return PlicError(f"{source}: given twice; it is done once")
    return PlicError(f"{source}: would be written to {target} like {first}; rename one of them "
                     "or run them separately")


def show_progress(index: int, total: int, item) -> None:
    """``[index/total] item`` on stderr when there are several items and it is a terminal."""
    if total > 1 and sys.stderr.isatty():
        print(f"[{index}/{total}] {printable(str(item))}", file=sys.stderr, flush=True)


def run_each(jobs: list[Job], work: Callable[[Path, Path], None]) -> int:
    """Call ``work(source, target)`` for every job; a PlicError is printed as one line that
    names the file (prefixed when the message does not) and the next job goes on. A job whose
    output an earlier job writes (two inputs of one name, or one input given twice) is such a
    failure, without calling ``work``. With several jobs and a terminal, ``[i/N] file`` on
    stderr shows the progress. Returns the exit status: 1 when any job failed."""
    failures = 0
    first_input: dict[Path, Path] = {}
    for index, (source, target) in enumerate(jobs, 1):
        show_progress(index, len(jobs), source)
        try:
            if target in first_input:
                raise clash(source, target, first_input[target])
            first_input[target] = source
            work(source, target)
        except PlicError as exc:
            message = str(exc)
            named = str(source) in message or str(target) in message
            print(f"plic: {one_line(message if named else f'{source}: {message}')}", file=sys.stderr)
            failures += 1
    return 1 if failures else 0
