"""Grounding DINO + Segment Anything: boxes for a text prompt, turned into masks (the paper's
salient-region method). Everything is read from local model folders; nothing is fetched.

Expected files (ComfyUI's layout, also used by comfyui_segment_anything):

* ``models/grounding-dino/<name>.pth`` - a Grounding DINO checkpoint. Its config is
  ``<name>.cfg.py`` beside it, or the one groundingdino-py ships for the official names
  (``groundingdino_swint_ogc.pth``, ``groundingdino_swinb_cogcoor.pth``).
* ``models/bert-base-uncased/`` (or ``models/grounding-dino/bert-base-uncased/``) - the text
  encoder folder (config.json, model weights, vocab/tokenizer files), as saved by transformers.
* ``models/sams/<name>.pth`` (or ``.safetensors``) - a Segment Anything state dict; the
  architecture (ViT-B/L/H or any other size) is read from the tensor shapes.
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import types
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from plic import model_files
from plic.deps import require
from plic.errors import ModelNotFoundError, PlicInputError
from plic.image import resize

#: The folder names under a models directory (and ComfyUI's folder_paths keys).
DINO_FOLDER = "grounding-dino"
SAM_FOLDER = "sams"
TEXT_ENCODER_FOLDER = "bert-base-uncased"
MODEL_SUFFIXES = (".pth", ".pt", ".safetensors")
#: The short side Grounding DINO was trained at, and the longest long side it then sees
#: (its own inference defaults); a smaller short side is faster.
DINO_SHORT_SIDE = 800
DINO_MAX_SIDE = 1333
#: Config files groundingdino-py ships, by official checkpoint name.
_SHIPPED_CONFIGS = {
    "groundingdino_swint_ogc": "GroundingDINO_SwinT_OGC.py",
    "groundingdino_swinb_cogcoor": "GroundingDINO_SwinB_cfg.py",
}
_DINO_URL = "https://github.com/IDEA-Research/GroundingDINO/releases"
_SAM_URL = "https://github.com/facebookresearch/segment-anything#model-checkpoints"
_BERT_URL = "https://huggingface.co/google-bert/bert-base-uncased"


@dataclass(frozen=True)
class ModelFolders:
    """Where to look for each model; several folders each (ComfyUI may list more than one)."""

    dino: tuple[Path, ...]
    sam: tuple[Path, ...]
    text_encoder: tuple[Path, ...]

    @classmethod
    def under(cls, models_dir: str | os.PathLike) -> "ModelFolders":
        """The standard layout below one models directory."""
        root = Path(models_dir)
        return cls(dino=(root / DINO_FOLDER,), sam=(root / SAM_FOLDER,),
                   text_encoder=(root / TEXT_ENCODER_FOLDER, root / DINO_FOLDER / TEXT_ENCODER_FOLDER))


@dataclass(frozen=True)
class Detection:
    """One prompt match: box (x, y, w, h) in image pixels, its score, phrase and SAM mask."""

    box: tuple[int, int, int, int]
    score: float
    phrase: str
    mask: np.ndarray  # (H, W) bool, the whole image


def list_models(folders: tuple[Path, ...]) -> list[str]:
    """Model file names found in ``folders`` (sorted, no duplicates)."""
    return model_files.names_in(folders, lambda entry: entry.suffix in MODEL_SUFFIXES and entry.is_file())


def find_model(folders: tuple[Path, ...], name: str | None, what: str, url: str) -> Path:
    """The model file ``name`` (or the first one) in ``folders``; a clear error if none."""
    for folder in folders:
        candidates = [folder / name] if name else [folder / n for n in list_models((folder,))]
        for path in candidates:
            if path.is_file():
                return path
    wanted = name or f"a {what} checkpoint ({', '.join('*' + suffix for suffix in MODEL_SUFFIXES)})"
    where = ", ".join(str(f) for f in folders)
    raise ModelNotFoundError(f"{what}: {wanted} not found; put it in {where} (download: {url})")


def find_text_encoder(folders: tuple[Path, ...]) -> Path:
    """The BERT folder Grounding DINO's text encoder is built from."""
    for folder in folders:
        if (folder / "config.json").is_file():
            return folder
    where = " or ".join(str(f) for f in folders)
    raise ModelNotFoundError(
        f"Grounding DINO's text encoder is missing: put the bert-base-uncased files (config.json, "
        f"model.safetensors, vocab.txt, tokenizer_config.json) in {where} (download: {_BERT_URL})")


def dino_config(checkpoint: Path) -> Path:
    """``<name>.cfg.py`` beside the checkpoint, else the config groundingdino-py ships for it."""
    beside = checkpoint.with_name(checkpoint.stem + ".cfg.py")
    if beside.is_file():
        return beside
    shipped = _SHIPPED_CONFIGS.get(checkpoint.stem.lower())
    if shipped:
        groundingdino = _import_groundingdino()
        path = Path(groundingdino.__file__).parent / "config" / shipped
        if path.is_file():
            return path
    raise ModelNotFoundError(
        f"no config for Grounding DINO checkpoint {checkpoint}: put its config as {beside.name} "
        f"beside it (the GroundingDINO repository's groundingdino/config/*.py)")


def _import_groundingdino() -> types.ModuleType:
    """Import groundingdino-py, working around what it needs only for training or plotting.

    * ``groundingdino.util.visualizer`` imports matplotlib for a plotting class inference never
      uses; when matplotlib is absent an empty stand-in module is registered instead.
    * transformers 5 removed the BertModel helpers groundingdino's BERT wrapper calls; there the
      wrapper is replaced by :class:`_BertEncoder`, which keeps the same sub-module names (so
      checkpoints load unchanged) and calls the encoder directly.
    """
    groundingdino = require("groundingdino", package="groundingdino-py",
                            purpose="Salient regions with Grounding DINO",
                            # its own requirements pin old packages (supervision 0.6, opencv-python)
                            install="addict yapf timm && pip install --no-deps --no-build-isolation "
                                    "groundingdino-py")
    try:
        import matplotlib  # noqa: F401  (groundingdino's visualizer needs it)
    except ImportError:
        stand_in = types.ModuleType("groundingdino.util.visualizer")
        stand_in.COCOVisualizer = type("COCOVisualizer", (), {})
        sys.modules.setdefault("groundingdino.util.visualizer", stand_in)
    import groundingdino.models.GroundingDINO.groundingdino as model_module
    from transformers import BertModel

    if not hasattr(BertModel, "get_extended_attention_mask"):
        model_module.BertModelWarper = _bert_encoder_class()
    return groundingdino


def _bert_encoder_class():
    import torch
    from torch import nn

    class _BertEncoder(nn.Module):
        """Grounding DINO's text encoder for transformers >= 5: BERT embeddings + encoder with
        the (B, T, T) sub-sentence attention mask turned into an additive mask."""

        def __init__(self, bert_model):
            super().__init__()
            self.config = bert_model.config
            self.embeddings = bert_model.embeddings
            self.encoder = bert_model.encoder
            self.pooler = bert_model.pooler

        def forward(self, input_ids, attention_mask, token_type_ids=None, position_ids=None, **_):
            hidden = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                     position_ids=position_ids)
            keep = attention_mask[:, None] if attention_mask.dim() == 3 else attention_mask[:, None, None]
            additive = (1.0 - keep.to(hidden.dtype)) * torch.finfo(hidden.dtype).min
            return {"last_hidden_state": self.encoder(hidden, attention_mask=additive)[0]}

    return _BertEncoder


def _load_state(path: Path) -> dict:
    """A state dict from .safetensors or a torch file (tensors only where possible)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Official Grounding DINO checkpoints also pickle their training arguments.
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)


def _check_loaded(missing: list[str], unexpected: list[str], path: Path, what: str) -> None:
    missing = [k for k in missing if not k.endswith(("position_ids", "token_type_ids"))]
    if missing or unexpected:
        raise PlicInputError(
            f"{path} does not fit its {what} architecture ({len(missing)} weights missing, e.g. "
            f"{missing[:3]}; {len(unexpected)} unexpected, e.g. {unexpected[:3]}): use the "
            f"matching config or checkpoint")


def load_dino(checkpoint: Path, text_encoder: Path):
    """A Grounding DINO model (eval mode, CPU) built from its config and local text encoder."""
    _import_groundingdino()
    from groundingdino.models import build_model
    from groundingdino.util.misc import clean_state_dict
    from groundingdino.util.slconfig import SLConfig

    args = SLConfig.fromfile(str(dino_config(checkpoint)))
    args.device = "cpu"
    args.text_encoder_type = str(text_encoder)
    model = build_model(args)
    state = _load_state(checkpoint)
    state = clean_state_dict(state.get("model", state))
    result = model.load_state_dict(state, strict=False)
    _check_loaded(result.missing_keys, result.unexpected_keys, checkpoint, "Grounding DINO")
    return model.eval()


def _count(state: dict, pattern: str) -> int:
    regex = re.compile(pattern)
    return len({m.group(1) for key in state if (m := regex.match(key))})


def sam_architecture(state: dict) -> dict:
    """The Segment Anything hyper-parameters that produce the tensors of ``state``."""
    embed_dim, _, patch, _ = state["image_encoder.patch_embed.proj.weight"].shape
    grid = state["image_encoder.pos_embed"].shape[1]
    depth = _count(state, r"image_encoder\.blocks\.(\d+)\.")
    rel_sizes = [state[f"image_encoder.blocks.{i}.attn.rel_pos_h"].shape for i in range(depth)]
    global_blocks = [i for i, shape in enumerate(rel_sizes) if shape[0] == 2 * grid - 1]
    windowed = [shape[0] for shape in rel_sizes if shape[0] != 2 * grid - 1]
    decoder = "mask_decoder.transformer.layers"
    return {
        "embed_dim": embed_dim, "patch_size": patch, "img_size": grid * patch, "depth": depth,
        "num_heads": embed_dim // rel_sizes[0][1],
        "mlp_ratio": state["image_encoder.blocks.0.mlp.lin1.weight"].shape[0] / embed_dim,
        "global_attn_indexes": global_blocks,
        "window_size": (windowed[0] + 1) // 2 if windowed else 0,
        "prompt_dim": state["image_encoder.neck.0.weight"].shape[0],
        "mask_in_chans": state["prompt_encoder.mask_downscaling.3.weight"].shape[0],
        "decoder_depth": _count(state, decoder.replace(".", r"\.") + r"\.(\d+)\."),
        "decoder_mlp_dim": state[f"{decoder}.0.mlp.lin1.weight"].shape[0],
        "multimask_outputs": state["mask_decoder.mask_tokens.weight"].shape[0] - 1,
        "iou_head_depth": _count(state, r"mask_decoder\.iou_prediction_head\.layers\.(\d+)\.weight"),
        "iou_head_hidden_dim": state["mask_decoder.iou_prediction_head.layers.0.weight"].shape[0],
    }


def build_sam(arch: dict):
    """An (untrained) Sam of the given architecture (see :func:`sam_architecture`)."""
    require("segment_anything", package="segment-anything", purpose="Salient regions with Segment Anything")
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    grid = arch["img_size"] // arch["patch_size"]
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch["depth"], embed_dim=arch["embed_dim"], img_size=arch["img_size"],
            mlp_ratio=arch["mlp_ratio"], norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=arch["num_heads"], patch_size=arch["patch_size"], qkv_bias=True,
            use_rel_pos=True, global_attn_indexes=arch["global_attn_indexes"],
            window_size=arch["window_size"], out_chans=arch["prompt_dim"]),
        prompt_encoder=PromptEncoder(
            embed_dim=arch["prompt_dim"], image_embedding_size=(grid, grid),
            input_image_size=(arch["img_size"], arch["img_size"]), mask_in_chans=arch["mask_in_chans"]),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=arch["multimask_outputs"],
            transformer=TwoWayTransformer(depth=arch["decoder_depth"], embedding_dim=arch["prompt_dim"],
                                          mlp_dim=arch["decoder_mlp_dim"], num_heads=8),
            transformer_dim=arch["prompt_dim"], iou_head_depth=arch["iou_head_depth"],
            iou_head_hidden_dim=arch["iou_head_hidden_dim"]),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def load_sam(checkpoint: Path):
    """A Segment Anything model whose architecture is read from the checkpoint's shapes."""
    state = _load_state(checkpoint)
    try:
        arch = sam_architecture(state)
    except (KeyError, IndexError, ZeroDivisionError) as exc:
        raise PlicInputError(f"{checkpoint} is not a Segment Anything checkpoint (no {exc})") from None
    model = build_sam(arch)
    result = model.load_state_dict(state, strict=False)
    _check_loaded(result.missing_keys, result.unexpected_keys, checkpoint, "Segment Anything")
    return model.eval()


_CACHE: dict[tuple, "GroundedSAM"] = {}


def release() -> None:
    """Forget the cached Grounding DINO + SAM pair (the next use loads it again)."""
    _CACHE.clear()


class GroundedSAM:
    """Grounding DINO boxes for a text prompt, each turned into a mask by Segment Anything.

    Build with :meth:`load` (cached: a second call with the same files reuses the models)."""

    def __init__(self, dino, sam):
        self.dino = dino
        self.sam = sam

    @classmethod
    def load(cls, folders: ModelFolders, dino_model: str | None = None,
             sam_model: str | None = None) -> "GroundedSAM":
        dino_path = find_model(folders.dino, dino_model, "Grounding DINO", _DINO_URL)
        sam_path = find_model(folders.sam, sam_model, "Segment Anything", _SAM_URL)
        text_path = find_text_encoder(folders.text_encoder)
        key = (dino_path.resolve(), sam_path.resolve(), text_path.resolve(),
               dino_path.stat().st_mtime_ns, sam_path.stat().st_mtime_ns)
        if key not in _CACHE:
            _CACHE.clear()  # keep one pair of models in memory
            _CACHE[key] = cls(load_dino(dino_path, text_path), load_sam(sam_path))
        return _CACHE[key]

    def boxes(self, rgb: np.ndarray, prompt: str, box_threshold: float, text_threshold: float,
              short_side: int = DINO_SHORT_SIDE,
              max_side: int = DINO_MAX_SIDE) -> list[tuple[tuple[int, int, int, int], float, str]]:
        """Grounding DINO: ((x, y, w, h), score, phrase) for every query above ``box_threshold``."""
        import torch
        from groundingdino.util.utils import get_phrases_from_posmap

        caption = prompt.lower().strip()
        caption = caption if caption.endswith(".") else caption + "."
        height, width = rgb.shape[:2]
        with torch.no_grad():
            out = self.dino(_dino_input(rgb, short_side, max_side), captions=[caption])
        logits = out["pred_logits"][0].sigmoid()
        centres = out["pred_boxes"][0]
        tokenizer = self.dino.tokenizer
        tokens = tokenizer(caption)
        found = []
        for logit, (cx, cy, bw, bh) in zip(logits, centres.tolist()):
            score = float(logit.max())
            if score <= box_threshold:
                continue
            phrase = get_phrases_from_posmap(logit > text_threshold, tokens, tokenizer).replace(".", "").strip()
            x0, y0 = max(0, round((cx - bw / 2) * width)), max(0, round((cy - bh / 2) * height))
            x1, y1 = min(width, round((cx + bw / 2) * width)), min(height, round((cy + bh / 2) * height))
            if x1 > x0 and y1 > y0:
                found.append(((x0, y0, x1 - x0, y1 - y0), score, phrase))
        return found

    def detect(self, rgb: np.ndarray, prompt: str, *, box_threshold: float, text_threshold: float,
               short_side: int = DINO_SHORT_SIDE, max_boxes: int = 20) -> list[Detection]:
        """Boxes for ``prompt`` (best ``max_boxes``), each with its Segment Anything mask."""
        from segment_anything import SamPredictor

        if not prompt.strip():
            raise PlicInputError("the Grounding DINO prompt is empty; give e.g. 'face . text . logo'")
        found = sorted(self.boxes(rgb, prompt, box_threshold, text_threshold, short_side),
                       key=lambda item: -item[1])[:max_boxes]
        if not found:
            return []
        predictor = SamPredictor(self.sam)
        predictor.set_image(rgb)
        detections = []
        for (x, y, w, h), score, phrase in found:
            masks, _, _ = predictor.predict(box=np.array([x, y, x + w, y + h]), multimask_output=False)
            detections.append(Detection((x, y, w, h), score, phrase, masks[0].astype(bool)))
        return detections


def _dino_input(rgb: np.ndarray, short_side: int, max_side: int):
    """The normalised (3, H, W) tensor Grounding DINO expects (short side ``short_side``)."""
    import torch
    from PIL import Image

    height, width = rgb.shape[:2]
    scale = min(short_side / min(height, width), max_side / max(height, width))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resized = resize(rgb, size, Image.BILINEAR).astype(np.float32) / 255.0
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    array = ((resized - mean) / std).astype(np.float32).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))[None]
