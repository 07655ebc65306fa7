"""The exceptions PLIC raises. Every message says which file or setting is at fault and what to do.

Callers (the CLI, the ComfyUI nodes) catch :class:`PlicError` and show its message as one line.
"""


class PlicError(Exception):
    """Base of every error a user can act on."""


class PlicFormatError(PlicError, ValueError):
    """A ``.plic`` file or stream is malformed, truncated, damaged or exceeds a limit.

    This is the one exception the reader raises for bad data; ``source`` names the file.
    """

    def __init__(self, source: str, problem: str):
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: not a valid .plic file: {problem}")


class PlicInputError(PlicError, ValueError):
    """An input image, mask or parameter cannot be used (unreadable, empty, wrong size...)."""


class PlicOutputError(PlicError, OSError):
    """An output file cannot be written (its folder cannot be made, no permission, disk full...)."""


class OutputExistsError(PlicOutputError, FileExistsError):
    """The output file exists and replacing it was not asked for."""


class MissingDependencyError(PlicError, ImportError):
    """An optional Python package is not installed; the message gives the pip command."""


class ModelNotFoundError(PlicError, FileNotFoundError):
    """A model file or folder is missing; the message says which file and where we looked."""


class CaptionError(PlicError):
    """Writing a prompt for an image failed. ``backend`` names the captioner ("openai", "local",
    "manual"); the message names the setting to change."""

    def __init__(self, backend: str, problem: str):
        self.backend = backend
        self.problem = problem
        super().__init__(f"captioning with the {backend!r} back end failed: {problem}")


def one_line(exc: BaseException | str) -> str:
    """The message of ``exc`` on one line, as the command line prints it: whitespace collapsed,
    and control characters (a file name may hold any) escaped by :func:`printable`."""
    return printable(" ".join(str(exc).split())) or type(exc).__name__


def printable(text: str) -> str:
    """``text`` with control and other unprintable characters escaped (``\\x1b``), so a file's
    name or prompt cannot drive the terminal."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
