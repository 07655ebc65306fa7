"""Decoder families as data: one :class:`Family` record says what a family's decoder is made of
and how it is run, and ``plic decode``, PLIC Diffusers Loader and bench/decode_gpu.py read it.

A record names the diffusers pipeline class, the files a diffusers folder of the family holds
(or the component configurations a single ``.safetensors`` checkpoint of it is read with), its
ControlNets in the pipeline's order with how each one's image is made from a file's parts, and
the default sampler, steps, classifier-free guidance and negative prompt. SD1.5 with the inpaint
and colour+canny ControlNets (the paper's decoder) is the default record; an SD1.5 fine-tune
(the paper also tried epiCRealism) decodes through the same record, from its diffusers folder or
its single checkpoint file. Adding a family is adding a record to :data:`FAMILIES` and its tests.

A file's decode settings may name the family it was tuned for (``family``); a decoder of another
family decodes it all the same and says so (:func:`check_family`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from plic import model_files
from plic.codec.pack import DEFAULT_DECODE_SETTINGS, Unpacked
from plic.decode import sd15_configs
from plic.errors import PlicInputError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Control:
    """One ControlNet of a family: ``role`` names it (``--<role>-controlnet`` on the command
    line, ``<role>_controlnet`` on PLIC Diffusers Loader), ``title`` in messages, ``expects``
    says which model it is, and ``image`` makes its control image from a file's parts: an
    (H, W, 3) float32 array in the range the ControlNet was trained on."""

    role: str
    title: str
    expects: str
    image: Callable[[Unpacked], np.ndarray]

    @property
    def option(self) -> str:
        return f"--{self.role.replace('_', '-')}-controlnet"

    @property
    def input_name(self) -> str:
        return f"{self.role}_controlnet"


@dataclass(frozen=True)
class Family:
    """A decoder family (see the module's docstring). ``defaults`` are decode settings (steps,
    scheduler, negative prompt) a file's own decode settings override; ``guidance`` is the default
    classifier-free guidance; images are generated at multiples of ``size_multiple`` pixels."""

    name: str
    title: str
    pipeline_class: str
    pipeline_files: tuple[tuple[str, tuple[str, ...]], ...]
    configs: Callable[[], dict[str, dict]]
    controls: tuple[Control, ...]
    defaults: dict = field(default_factory=dict)
    guidance: float = 7.5
    size_multiple: int = 8


def _inpaint_image(unpacked: Unpacked) -> np.ndarray:
    """control_v11p_sd15_inpaint's image: the kept pixels in 0..1, -1 where to regenerate."""
    return unpacked.inpaint_hint()


def _color_canny_image(unpacked: Unpacked) -> np.ndarray:
    """The colour+canny ControlNet's image: the palette with the edges drawn on it, in 0..1."""
    return unpacked.color_canny_hint.astype(np.float32) / 255.0


SD15 = Family(
    name="sd15",
    title="Stable Diffusion 1.5 (or a fine-tune of it) with the inpaint and colour+canny ControlNets",
    pipeline_class="StableDiffusionControlNetInpaintPipeline",
    pipeline_files=model_files.PIPELINE_FILES,
    configs=sd15_configs.full,
    controls=(
        Control("inpaint", "inpaint ControlNet", "control_v11p_sd15_inpaint", _inpaint_image),
        Control("color_canny", "color+canny ControlNet",
                "the color+canny ControlNet (ghoskno/Color-Canny-Controlnet-model)", _color_canny_image),
    ),
    defaults={key: DEFAULT_DECODE_SETTINGS[key] for key in ("steps", "scheduler", "negative_prompt")},
    guidance=7.5,
)

#: Every family a decoder knows, by name; the first is the default.
FAMILIES: dict[str, Family] = {family.name: family for family in (SD15,)}
DEFAULT = SD15


def get(name: str | None) -> Family:
    """The family ``name`` (None: the default); PlicInputError naming the known ones."""
    if name is None:
        return DEFAULT
    if name not in FAMILIES:
        raise PlicInputError(f"unknown decoder family '{name}'; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def control_roles() -> list[Control]:
    """Every ControlNet role of every family, each once, in order (the options offered)."""
    seen: dict[str, Control] = {}
    for family in FAMILIES.values():
        for control in family.controls:
            seen.setdefault(control.role, control)
    return list(seen.values())


def check_family(stored: dict, family: Family, name: str = "the file") -> None:
    """Warn when ``stored`` name a family other than ``family``, the one decoding: unknown here,
    or not the one loaded. The file is decoded by ``family`` all the same."""
    wanted = stored.get("family")
    if wanted is None or wanted == family.name:
        return
    why = "a family this decoder does not know" if wanted not in FAMILIES else "another family"
    log.warning("PLIC: %s was tuned for the decoder family '%s' (%s); decoding it with '%s'",
                name, wanted, why, family.name)
