"""Options of ``plic encode`` that belong to steps of their own: the prompt from the image
(plic.caption) and the salient regions (plic.salient.detect), each an argument group and the call it
makes from the parsed options."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from plic import caption
from plic.cli.args import SCORE, float_in, int_in
from plic.codec import salient
from plic.codec.pack import EncodeSettings
from plic.codec.prompt import MAX_PROMPT_CHARS
from plic.salient import detect


def add_caption_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--caption*`` options of ``plic encode``."""
    group = parser.add_argument_group("prompt from the image (--prompt overrides)")
    group.add_argument("--caption", default="none", metavar="openai|local:PATH|none",
                       help="write the prompt with an OpenAI-compatible API, a local "
                            "image-to-text model folder, or not at all (default: none)")
    group.add_argument("--caption-model", default=caption.DEFAULT_MODEL,
                       help=f"model name for --caption openai (default: {caption.DEFAULT_MODEL})")
    group.add_argument("--caption-base-url", default=None,
                       help="OpenAI-compatible API address, e.g. http://127.0.0.1:11434/v1 for "
                            "Ollama (default: OpenAI, or $OPENAI_BASE_URL)")
    group.add_argument("--caption-key-env", default=caption.DEFAULT_KEY_ENV, metavar="VARIABLE",
                       help="NAME of the environment variable holding the API key "
                            f"(default: {caption.DEFAULT_KEY_ENV})")
    group.add_argument("--caption-timeout", type=float_in(0, 3600, above=True), default=caption.DEFAULT_TIMEOUT,
                       metavar="SECONDS",
                       help=f"time-out of one API request (default: {caption.DEFAULT_TIMEOUT:g})")
    group.add_argument("--caption-retries", type=int_in(0, 100), default=caption.DEFAULT_RETRIES,
                       help=f"retries on 429/5xx/time-outs (default: {caption.DEFAULT_RETRIES})")
    group.add_argument("--caption-device", default="auto",
                       help="device of a local model: auto, cpu, cuda, cuda:1... (default: auto)")
    group.add_argument("--caption-limit", type=int_in(1, MAX_PROMPT_CHARS), default=MAX_PROMPT_CHARS,
                       metavar="CHARS",
                       help=f"cut the prompt at a word boundary to this length, 1..{MAX_PROMPT_CHARS} "
                            f"(default: {MAX_PROMPT_CHARS})")


def captioner_from_args(args: argparse.Namespace) -> caption.Captioner | None:
    """The captioner the ``--caption*`` options ask for (None for --caption none)."""
    return caption.make_captioner(args.caption, model=args.caption_model, base_url=args.caption_base_url,
                                  api_key_env=args.caption_key_env, timeout=args.caption_timeout,
                                  max_retries=args.caption_retries, device=args.caption_device,
                                  limit=args.caption_limit)


def add_salient_arguments(parser) -> None:
    """The salient options of ``plic encode`` (see :func:`salient_from_args`)."""
    group = parser.add_argument_group("salient regions (pixels kept verbatim)")
    group.add_argument("--salient", default=detect.AUTO, metavar="SOURCES",
                       help="comma-separated detectors: faces, text, dino+sam; 'auto' = faces, text where "
                            "Tesseract is installed, and dino+sam where its models are in --models-dir "
                            "(default); 'none' = only --salient-mask")
    group.add_argument("--salient-mask", type=Path, metavar="MASK.png",
                       help="also keep the pixels under this mask (white = keep), of the image's size")
    group.add_argument("--salient-budget", type=float_in(0, 24), default=None, metavar="BPP",
                       help="most bits per working-image pixel the salient regions may take "
                            f"(default {salient.DEFAULT_MAX_BPP}, never more than the original file; "
                            "a --salient-mask given with --salient none is capped only at the raw "
                            "image size unless this is given)")
    group.add_argument("--salient-max-fraction", type=float_in(0, 1), metavar="F",
                       help="most share of the image (0..1) that may be kept")
    group.add_argument("--salient-codec", default=EncodeSettings.salient_codec,
                       choices=salient.LOSSLESS_CODECS + ("webp",),
                       help="how region pixels are stored (default %(default)s, lossless)")
    group.add_argument("--salient-quality", type=int_in(0, 100), default=EncodeSettings.salient_quality,
                       metavar="Q",
                       help="WebP quality for --salient-codec webp (default %(default)s)")
    for option in detect.OPTIONS:
        add_option(group, option)
    group.add_argument("--models-dir", type=Path, metavar="DIR",
                       help="folder with grounding-dino/, sams/ and bert-base-uncased/ "
                            "(default $PLIC_MODELS_DIR)")


def add_option(group, option: detect.Option) -> None:
    """A detector's tuning value as ``--NAME`` (see plic.salient.detect.OPTIONS)."""
    kind = type(option.default)
    parse = {float: SCORE, int: int_in(option.low, option.high), str: str}[kind]
    group.add_argument("--" + option.name.replace("_", "-"), type=parse, default=option.default,
                       metavar={float: "S", int: "N", str: "TEXT"}[kind],
                       help=f"{option.help} (default: %(default)s)")


def salient_from_args(args: argparse.Namespace, rgb_working: np.ndarray,
                      image_path: str | os.PathLike | None = None) -> salient.Stored:
    """The salient step for one image as the options of :func:`add_salient_arguments` say
    (:func:`plic.salient.detect.run_salient`; ``image_path``, the original file, caps the bytes)."""
    settings = detect.SalientSettings.from_options(
        vars(args), sources=args.salient, max_bpp=args.salient_budget, max_fraction=args.salient_max_fraction,
        codec=args.salient_codec, quality=args.salient_quality, models_dir=args.models_dir)
    size = (rgb_working.shape[1], rgb_working.shape[0])
    user_mask = detect.load_mask_file(args.salient_mask, size) if args.salient_mask else None
    return detect.run_salient(rgb_working, settings, user_mask,
                              max_bytes=Path(image_path).stat().st_size if image_path else None)
