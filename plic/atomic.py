"""Writing files so that a crash, a full disk or a name already taken never leaves a half-written
file or loses one: each is written in full to a temporary file beside it, flushed, and renamed into
place; several files go all or none (:func:`write_atomic_all`)."""

from __future__ import annotations

import errno
import os
import re
import secrets
from pathlib import Path

from plic.errors import OutputExistsError, PlicOutputError


def write_atomic(path: Path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, so a crash or a
    full disk never leaves a half-written file. Without ``overwrite`` an existing file is kept
    and :class:`~plic.errors.OutputExistsError` (a FileExistsError) raised; any other failure
    raises :class:`~plic.errors.PlicOutputError` (an OSError) naming ``path``."""
    return write_atomic_all({Path(path): data}, overwrite=overwrite)[0]


def write_atomic_all(files: dict[Path, bytes], *, overwrite: bool = False) -> list[Path]:
    """Write several files all or nothing: every one is first written in full to a temporary
    file beside it, and only when all are on disk are they renamed into place, so a full disk
    leaves none of them; a rename that fails takes back the files the others created (a file
    already replaced stays replaced). Errors as :func:`write_atomic`."""
    staged: list[tuple[str, Path]] = []
    created: list[Path] = []  # renamed into place where no file was: undone if a later one fails
    try:
        for path, data in files.items():
            staged.append((_stage(Path(path), data), Path(path)))
        for tmp, path in staged:
            new = not os.path.lexists(path)
            _commit(tmp, path, overwrite)
            created += [path] if new else []
    except BaseException:
        for path in created:
            path.unlink(missing_ok=True)
        raise
    finally:  # on success every temporary file has been renamed away
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return [path for _, path in staged]


def _stage(path: Path, data: bytes) -> str:
    """A temporary file beside ``path`` holding ``data``, flushed to disk; its name."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _create_temporary(path)
    except (FileExistsError, NotADirectoryError):  # a file where a folder should be
        blocking = next((p for p in reversed(path.parents) if p.exists() and not p.is_dir()), path.parent)
        raise PlicOutputError(f"{path}: cannot be written: {blocking} is a file, not a folder") from None
    except OSError as exc:
        raise _output_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:  # closes the descriptor whatever happens
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        os.unlink(tmp)
        raise _output_error(path, exc) from None
    return tmp


def _commit(tmp: str, path: Path, overwrite: bool) -> None:
    """Rename the staged ``tmp`` to ``path`` (replacing it only when ``overwrite``)."""
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            _rename_no_replace(tmp, path)
    except FileExistsError:
        raise OutputExistsError(f"{path}: already exists; choose another name or allow "
                                "replacing it (plic: --overwrite)") from None
    except OSError as exc:
        raise _output_error(path, exc) from None


def _create_temporary(path: Path) -> tuple[int, str]:
    """A new file ``.<name>.<random>.tmp`` beside ``path``, opened for writing: (descriptor,
    path). It is created with mode 0o666 so the process umask gives it the usual permissions,
    as for any new file (the umask is never changed: other threads create files too)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = str(path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue


def leftover_temporaries(targets: list[Path]) -> list[Path]:
    """The temporary files of :func:`_create_temporary` beside ``targets`` that a killed process
    left behind (a clean exit, Ctrl-C included, removes its own): a rerun deletes them. Each
    folder is listed once."""
    folders: dict[Path, set[str]] = {}
    for target in targets:
        folders.setdefault(Path(target).parent, set()).add(Path(target).name)
    found = []
    for folder, names in folders.items():
        if folder.is_dir():
            found += [entry for entry in sorted(folder.iterdir())
                      if (match := _TEMPORARY.fullmatch(entry.name)) and match.group(1) in names]
    return found


_TEMPORARY = re.compile(r"\.(.+)\.[0-9a-f]{8}\.tmp")


def _output_error(path: Path, exc: OSError) -> PlicOutputError:
    return PlicOutputError(f"{path}: cannot be written ({exc.strerror or exc}); check that its "
                           "folder can be created and written to and that the disk has room")


def _rename_no_replace(tmp: str, path: Path) -> None:
    """Move ``tmp`` to ``path`` unless ``path`` exists (FileExistsError then)."""
    try:
        os.link(tmp, path)  # atomic, and fails instead of replacing
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links
        if path.exists():
            raise FileExistsError(errno.EEXIST, "file exists", str(path)) from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)
