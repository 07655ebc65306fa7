"""The ``dino+sam`` detector: Grounding DINO boxes for a text prompt, masked by Segment Anything
(the paper's way; the models from local folders, see plic.salient.grounded_sam)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from plic.codec.salient import Candidate
from plic.errors import ModelNotFoundError, PlicInputError
from plic.model_files import models_roots
from plic.salient.grounded_sam import DINO_SHORT_SIDE, GroundedSAM, ModelFolders, find_text_encoder, list_models

DEFAULT_DINO_PROMPT = "face . text . logo"
DEFAULT_BOX_THRESHOLD = 0.35
DEFAULT_TEXT_THRESHOLD = 0.25


def detect_prompt(rgb: np.ndarray, folders, *, prompt: str = DEFAULT_DINO_PROMPT,
                  box_threshold: float = DEFAULT_BOX_THRESHOLD,
                  text_threshold: float = DEFAULT_TEXT_THRESHOLD, dino_model: str | None = None,
                  sam_model: str | None = None, dino_size: int = DINO_SHORT_SIDE) -> list[Candidate]:
    """Grounding DINO boxes for ``prompt``, masked by Segment Anything (see plic.salient.grounded_sam)."""
    model = GroundedSAM.load(folders, dino_model, sam_model)
    found = []
    for det in model.detect(rgb, prompt, box_threshold=box_threshold, text_threshold=text_threshold,
                            short_side=dino_size):
        x, y, w, h = det.box
        inside = det.mask[y:y + h, x:x + w]
        if inside.any():
            found.append(Candidate("dino+sam", det.phrase or prompt, det.box, det.score, inside.copy()))
    return found


def model_folders(models_dir: str | os.PathLike | None = None):
    """The Grounding DINO / SAM folders under ``models_dir``, else under $PLIC_MODELS_DIR."""
    roots = models_roots(models_dir)
    if not roots:
        raise PlicInputError(
            "dino+sam needs a models folder: pass models_dir (command line: --models-dir) or set "
            "PLIC_MODELS_DIR to a folder holding grounding-dino/, sams/ and bert-base-uncased/")
    return ModelFolders.under(roots[0])


def ready(folders: ModelFolders) -> bool:
    """Whether ``folders`` hold a Grounding DINO and a SAM checkpoint and the BERT text encoder
    (nothing is loaded)."""
    try:
        find_text_encoder(folders.text_encoder)
    except ModelNotFoundError:
        return False
    return bool(list_models(folders.dino) and list_models(folders.sam))


@dataclass(frozen=True)
class DinoSamSettings:
    """Grounding DINO + SAM; DINO applies its box and phrase thresholds itself."""

    prompt: str = DEFAULT_DINO_PROMPT
    box_threshold: float = DEFAULT_BOX_THRESHOLD
    text_threshold: float = DEFAULT_TEXT_THRESHOLD
    dino_model: str | None = None
    sam_model: str | None = None
    dino_size: int = DINO_SHORT_SIDE
