"""Files from strangers: inputs read only when they are regular files within a size, and output
names made from input names that always stay inside the folder the user named.

Every command that reads a file it was given (an image, a ``.plic``) opens it with
:func:`open_regular`, so a FIFO never blocks and a device such as ``/dev/zero`` is never read;
every output named after an input goes through :func:`output_path`.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO

#: What a file that is not regular is called in messages, by its st_mode kind.
_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


class NotRegularFileError(OSError):
    """The path names a folder, a pipe, a device or a socket: nothing PLIC reads."""


def open_regular(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for binary reading, refusing (NotRegularFileError) anything that is not
    a regular file after symbolic links are followed. The file is opened without blocking
    first, so a FIFO is refused instead of waiting for a writer forever."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
                 | getattr(os, "O_CLOEXEC", 0))
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((name for test, name in _KINDS if test(mode)), "not a regular file")
            raise NotRegularFileError(f"is {kind}, not a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (:func:`open_regular`), refusing (OSError) one of
    more than ``limit`` bytes without reading past the limit, whatever its size claims."""
    with open_regular(path) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(f"is larger than the {limit} bytes allowed")
    return data


def output_name(name: str) -> str:
    """``name`` (an input's stem) as one harmless file name: path separators and control
    characters become ``_``, and a name of only dots (``.``, ``..``, ``...``), which would name
    a folder, becomes as many underscores. Empty becomes ``_``."""
    cleaned = "".join("_" if c in "/\\" or not c.isprintable() else c for c in name)
    if set(cleaned) <= {"."}:
        cleaned = "_" * max(1, len(cleaned))
    return cleaned


def output_path(folder: Path, stem: str, suffix: str = "") -> Path:
    """``folder / (output_name(stem) + suffix)``: an output named after an input, which lies
    directly inside ``folder`` whatever the input was called."""
    path = Path(folder) / (output_name(stem) + suffix)
    if path.parent != Path(folder):  # output_name leaves no separator; this states the promise
        raise AssertionError(f"{path} is not directly inside {folder}")
    return path
