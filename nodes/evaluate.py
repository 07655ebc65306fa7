"""PLIC Evaluate (the paper's metrics of a reconstruction against its original) and PLIC Same-Size
Codecs (the JPEG, WebP and AVIF that fit in a payload's bytes): what PLIC's size buys."""

from __future__ import annotations

from pathlib import Path


from plic.codec import fileformat
from plic.errors import PlicInputError
from plic.eval import compare, evaluation, metrics
from plic.eval.evaluation import Result
from plic.image import resize

from .common import (CATEGORY, PAYLOAD, comfy_device, image_to_rgb_list, model_dirs, padded_to_one_size, per_image,
                     rgb_list_to_image)

#: First entry of the model lists: leave that metric out.
NO_MODEL = "(none)"


def _choices(dirs: list[Path], accept) -> list[str]:
    return [NO_MODEL] + sorted({p.name for d in dirs if d.is_dir() for p in d.iterdir() if accept(p)})


def payload_sizes(plic, count: int, node: str) -> list[tuple[int, tuple[int, int]] | None]:
    """(bytes, working size) of each image's .plic (one payload item serves every image), or
    None per image without a payload."""
    if plic is None:
        return [None] * count
    items = per_image(plic, count, "payloads", node)
    sizes = {id(item): len(fileformat.dumps(item)) for item in items}  # one payload may serve all
    return [(sizes[id(item)], item.working_size) for item in items]


def summary_text(results: list[Result]) -> str:
    """One block per image: each method's bytes and scores, or why a codec is missing."""
    lines = []
    for r in results:
        head = f"{r.image} {r.method}" + (f" q{r.quality}" if r.quality is not None else "") + \
            (f": {r.bytes} bytes, {r.bpp:.4f} bpp" if r.bytes else "")
        lines.append(head)
        if r.note:
            lines.append("  " + r.note)
        elif r.scores:
            lines.append("  " + metrics.format_scores(r.scores).replace("\n", "\n  "))
    return "\n".join(lines)


class PlicEvaluate:
    DESCRIPTION = ("Scores a reconstruction against its original with the PLIC paper's metrics "
                   "(DINOv2 similarity, LPIPS, BRISQUE, CPBD, plus PSNR and SSIM) and, given the "
                   "payload, shows the JPEG, WebP and AVIF of the same size beside it.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("STRING", "IMAGE")
    RETURN_NAMES = ("metrics", "comparison")
    OUTPUT_TOOLTIPS = ("The scores of each image as text (also shown on the node).",
                       "Original, reconstruction and the same-size codecs side by side, one row "
                       "per image.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "original": ("IMAGE", {"tooltip": "The original images (scaled to the "
                                                  "reconstruction's size when they differ)."}),
                "reconstruction": ("IMAGE", {"tooltip": "PLIC's reconstructions of them."}),
                "dinov2": (_choices(model_dirs(metrics.DINO_FOLDER), lambda p: p.is_dir()), {
                    "default": NO_MODEL, "tooltip": "facebook/dinov2-base folder in models/dinov2; "
                                                    "(none) leaves DINOv2 out."}),
                "lpips": (_choices(model_dirs(metrics.LPIPS_FOLDER),
                                   lambda p: p.suffix in (".pth", ".safetensors")), {
                    "default": NO_MODEL, "tooltip": "torchvision's AlexNet weights "
                                                    "(alexnet-owt-7be5be79.pth) in models/lpips; "
                                                    "(none) leaves LPIPS out."}),
                "no_reference": ("BOOLEAN", {"default": True, "tooltip":
                                             "Also BRISQUE and CPBD (judge an image alone)."}),
            },
            "optional": {
                "plic": (PAYLOAD, {"tooltip": "The payload (PLIC Load): gives bpp and the "
                                              "same-size JPEG, WebP and AVIF."}),
            },
        }

    def run(self, original, reconstruction, dinov2, lpips, no_reference, plic=None):
        recons = image_to_rgb_list(reconstruction)
        originals = per_image(image_to_rgb_list(original), len(recons), "originals", "PLIC Evaluate")
        chosen = [m for m in metrics.METRIC_NAMES
                  if (m == "dinov2" and dinov2 != NO_MODEL) or (m == "lpips" and lpips != NO_MODEL)
                  or m in ("psnr", "ssim") or (m in metrics.NO_REFERENCE and no_reference)]
        evaluator = metrics.Evaluator.load(chosen, dino_name=dinov2, lpips_name=lpips, device=comfy_device(),
                                           dino_search=model_dirs(metrics.DINO_FOLDER),
                                           lpips_search=model_dirs(metrics.LPIPS_FOLDER))
        results, rows = [], []
        for i, (rec, size) in enumerate(zip(recons, payload_sizes(plic, len(recons), "PLIC Evaluate"))):
            mine = evaluation.evaluate_image(evaluator, f"image {i + 1}", originals[i], rec,
                                             *(size or (None, None)))
            results.extend(mine)
            rows.append(evaluation.side_by_side(mine))
        text = summary_text(results)
        return {"ui": {"text": [text]}, "result": (text, rgb_list_to_image(padded_to_one_size(rows)))}


class PlicSameSizeCodecs:
    DESCRIPTION = ("The best JPEG, WebP and AVIF of each image that fit in as many bytes as its "
                   "PLIC payload (or a byte count you give): what PLIC's size buys, on the encode "
                   "side, with no diffusion model.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("comparison", "report")
    OUTPUT_TOOLTIPS = ("The image (at the payload's working size) and each codec's decoded file "
                       "side by side, one row per image.",
                       "Each codec's quality and size, or 'cannot go this small'.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The images that were compressed."}),
                "budget_bytes": ("INT", {"default": 0, "min": 0, "max": 1 << 30, "tooltip":
                                  "Byte budget when no payload is connected (0: use the payload)."}),
            },
            "optional": {
                "plic": (PAYLOAD, {"tooltip": "The payload from PLIC Pack: its size is the budget "
                                              "and its working size the image size."}),
            },
        }

    def run(self, image, budget_bytes, plic=None):
        images = image_to_rgb_list(image)
        sizes = payload_sizes(plic, len(images), "PLIC Same-Size Codecs")
        if plic is None and budget_bytes < 1:
            raise PlicInputError("PLIC Same-Size Codecs: connect a payload or give a byte count")
        rows, lines = [], []
        for i, (rgb, known) in enumerate(zip(images, sizes)):
            budget, size = known if known is not None else (budget_bytes, (rgb.shape[1], rgb.shape[0]))
            work = resize(rgb, size)
            found = compare.same_size(work, budget)
            lines += [f"image {i + 1}: {budget} bytes at {size[0]}x{size[1]}"] + \
                ["  " + f.describe() for f in found]
            shown = [Result("", "image", None, None, None, {}, picture=work)] + [
                Result("", f.codec.name, None, None, f.quality, {}, picture=f.decoded() if f.fits else None)
                for f in found]
            rows.append(evaluation.side_by_side(shown))
        text = "\n".join(lines)
        return {"ui": {"text": [text]}, "result": (rgb_list_to_image(padded_to_one_size(rows)), text)}


NODE_CLASS_MAPPINGS = {"PlicEvaluate": PlicEvaluate, "PlicSameSizeCodecs": PlicSameSizeCodecs}
NODE_DISPLAY_NAME_MAPPINGS = {"PlicEvaluate": "PLIC Evaluate",
                              "PlicSameSizeCodecs": "PLIC Same-Size Codecs"}
