"""PLIC Pack: a prompt, edges, palette and optional salient pixels into one PLIC payload,
optionally brought to a size by rate control (plic.codec.ratecontrol)."""

import dataclasses

from plic.codec import fileformat, pack, ratecontrol
from plic.codec.prompt import MAX_PROMPT_CHARS, clean_prompt, split_prompts
from plic.errors import PlicInputError

from .common import CATEGORY, EDGES, PALETTE, PAYLOAD, SALIENT, per_image, rgb_list_to_image

NODE = "PLIC Pack"


class PlicPack:
    DESCRIPTION = ("Packs the prompt, the edges, the palette and (optionally) the salient pixels "
                   "of each image into one PLIC payload, and shows its size on the node. "
                   "Connect the payload to PLIC Save. With a target (bpp or bytes) it searches "
                   "its own settings to reach it: shortest edge fragments dropped first, then "
                   "higher Canny thresholds, then palette and salient quality; 'removed_edges' "
                   "shows what went (red).")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = (PAYLOAD, "IMAGE")
    RETURN_NAMES = ("plic", "removed_edges")
    OUTPUT_TOOLTIPS = ("The compressed images, one payload per image, for PLIC Save or PLIC Unpack.",
                       "The stored edges in black and those rate control removed in red, on white.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "What the image shows, as a Stable Diffusion prompt. "
                                                 "Whitespace is collapsed and it is cut to "
                                                 f"{MAX_PROMPT_CHARS} characters. "
                                                 "For a batch: one line per image, or one line for all. "
                                                 "Type it, or connect PLIC Caption's prompt output."}),
                "edges": (EDGES, {"tooltip": "Packed edges from PLIC Canny Edges."}),
                "palette": (PALETTE, {"tooltip": "Packed palette from PLIC Palette (same images)."}),
            },
            "optional": {
                "salient": (SALIENT, {"tooltip": "Optional: salient pixels (faces, small text) to "
                                                 "store exactly, made from the same images at the "
                                                 "same max side."}),
                "target_bpp": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 24.0, "step": 0.005,
                                         "tooltip": "Bring each whole file to at most this many bits per "
                                                    "working-image pixel (0 = off: the paper's settings). "
                                                    f"Try {ratecontrol.SUGGESTED_BPP} for texture-heavy photos."}),
                "target_bytes": ("INT", {"default": 0, "min": 0, "max": fileformat.MAX_FILE_BYTES,
                                         "tooltip": "The same as a size in bytes (0 = off); with both, "
                                                    "the smaller wins."}),
            },
        }

    def run(self, prompt, edges, palette, salient=None, target_bpp=0.0, target_bytes=0):
        count = len(edges)
        prompts = split_prompts(prompt, count) if isinstance(prompt, str) else per_image(prompt, count, "prompts", NODE)
        palettes = per_image(palette, count, "palettes", NODE)
        salients = per_image(salient, count, "salient selections", NODE)
        payloads, sizes, notes, previews = [], [], [], []
        for index, (text, edge, colours, kept) in enumerate(zip(prompts, edges, palettes, salients)):
            if not clean_prompt(text or ""):
                raise PlicInputError(f"PLIC Pack: the prompt for image {index + 1} is empty; type a "
                                     "short description of the image or connect a caption node")
            goal = ratecontrol.target_bytes(edge.working_size, target_bpp or None, target_bytes or None)
            encoded = encode_part(text, edge, colours, kept, goal)
            payload, size, note, after = encoded.plic, len(encoded.data), encoded.note, encoded.stored
            payloads.append(payload)
            sizes.append(size)
            previews.append(ratecontrol.removed_preview(edge.bitmap, after))
            notes += [f"image {index + 1}: {note}"] if note else []
        reports = [pack.size_breakdown(size, p) for size, p in zip(sizes, payloads)]
        return {"ui": {"plic": reports, "text": ["\n".join(notes)] if notes else []},
                "result": (payloads, rgb_list_to_image(previews))}


def encode_part(prompt: str, edge: pack.EdgesPart, palette: pack.PalettePart | None,
                salient: pack.SalientPart | None, goal: int | None) -> ratecontrol.Encoded:
    """One image's payload from the parts PLIC Pack was given, at a target size when ``goal``."""
    if goal is not None and palette is None:
        raise PlicInputError("PLIC Pack: a target needs the edges from PLIC Canny Edges and a palette "
                             "from PLIC Palette (it searches their settings again)")
    settings = pack.EncodeSettings(canny_low=edge.canny[0], canny_high=edge.canny[1])
    if palette is not None:
        settings = dataclasses.replace(settings, palette_size=palette.small.shape[0],
                                       palette_quality=palette.quality)
    return ratecontrol.encode_to(edge.work, edge.original_size, goal, prompt=prompt, settings=settings,
                                 how=f"target_bpp {ratecontrol.SUGGESTED_BPP}", parts=(edge, palette),
                                 salient=salient)


NODE_CLASS_MAPPINGS = {"PlicPack": PlicPack}
NODE_DISPLAY_NAME_MAPPINGS = {"PlicPack": "PLIC Pack"}
