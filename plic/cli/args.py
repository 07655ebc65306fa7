"""Argument types of the ``plic`` commands: every number is checked by the parser against the
range the work accepts (NaN and infinity never pass), so a bad value is refused with what is
allowed before any work starts, and the limits that keep a stranger's file or image cheap."""

from __future__ import annotations

import argparse
import math
import re

from plic.codec import edges
from plic.codec.fileformat import MAX_WORKING_PIXELS, MAX_WORKING_SIDE
from plic.image import DEFAULT_MAX_PIXELS


def int_in(low: int, high: int):
    """An argparse type: an integer in ``low..high``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high}")
        return value
    return parse


def float_in(low: float, high: float, *, above: bool = False):
    """An argparse type: a finite number in ``low..high`` (greater than ``low`` when ``above``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value) or value > high or value < low or (above and value == low):
            allowed = f"more than {low:g} and at most {high:g}" if above else f"{low:g}..{high:g}"
            raise argparse.ArgumentTypeError(f"{text} is not a number {allowed}")
        return value
    return parse


#: The argument types several commands share: a working image's longest side, a Canny
#: threshold, bits per pixel (more than 0, at most the 24 of raw RGB), a score 0..1.
MAX_SIDE = int_in(1, MAX_WORKING_SIDE)
CANNY = int_in(0, edges.MAX_THRESHOLD)
BPP = float_in(0, 24, above=True)
SCORE = float_in(0, 1)


#: Devices a torch model can be put on, as written on the command line.
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def device(text: str) -> str:
    """An argparse type: ``auto``, ``cpu``, ``mps``, ``cuda`` or ``cuda:N`` (whether it is there
    is checked when a model loads: plic.deps.resolve_device)."""
    if not DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a device; use auto, cpu, cuda, cuda:N or mps")
    return text


def add_pixel_limits(parser: argparse.ArgumentParser, *, images: bool = True, files: bool = True) -> None:
    """``--max-pixels`` (the largest image a command reads, and the largest original size it
    writes a decoded image at) and ``--max-working-pixels`` (the largest working image of a
    .plic file it reads or writes)."""
    group = parser.add_argument_group("limits (what a stranger's image or file may cost)")
    if images:
        group.add_argument("--max-pixels", type=int_in(1, 1 << 40), default=DEFAULT_MAX_PIXELS,
                           metavar="N", help="refuse images of more pixels, as declared in their "
                           "header, before decoding them (a JPEG is read at 1/2, 1/4 or 1/8 size "
                           "instead when that fits) (default %(default)s)")
    if files:
        group.add_argument("--max-working-pixels", type=int_in(1, 1 << 28), default=MAX_WORKING_PIXELS,
                           metavar="N", help=".plic files whose working image has more pixels are "
                           "refused, and encode makes none (default %(default)s, {0}x{0})"
                           .format(math.isqrt(MAX_WORKING_PIXELS)))
