"""PLIC Pack: a prompt, edges, palette and optional salient pixels into one PLIC payload."""

from plic import codec, fileformat
from plic.caption import split_prompts
from plic.errors import PlicInputError

from .common import CATEGORY, EDGES, PALETTE, PAYLOAD, SALIENT, check_batch


class PlicPack:
    DESCRIPTION = ("Packs the prompt, the edges, the palette and (optionally) the salient pixels "
                   "of each image into one PLIC payload, and shows its size on the node. "
                   "Connect the payload to PLIC Save.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = (PAYLOAD,)
    RETURN_NAMES = ("plic",)
    OUTPUT_TOOLTIPS = ("The compressed images, one payload per image, for PLIC Save or PLIC Unpack.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {"multiline": True, "default": "",
                                      "tooltip": "What the image shows, as a Stable Diffusion prompt. "
                                                 "Whitespace is collapsed and it is cut to 240 characters. "
                                                 "For a batch: one line per image, or one line for all. "
                                                 "Type it, or connect PLIC Caption's prompt output."}),
                "edges": (EDGES, {"tooltip": "Packed edges from PLIC Canny Edges."}),
                "palette": (PALETTE, {"tooltip": "Packed palette from PLIC Palette (same images)."}),
            },
            "optional": {
                "salient": (SALIENT, {"tooltip": "Optional: salient pixels (faces, small text) to "
                                                 "store exactly, made from the same images at the "
                                                 "same max side."}),
            },
        }

    def run(self, prompt, edges, palette, salient=None):
        count = len(edges)
        prompts = split_prompts(prompt, count) if isinstance(prompt, str) else per_image(prompt, count, "prompts")
        palettes = per_image(palette, count, "palettes")
        salients = per_image(salient, count, "salient selections")
        payloads = []
        for index, (text, edge, colours, kept) in enumerate(zip(prompts, edges, palettes, salients)):
            if not codec.clean_prompt(text or ""):
                raise PlicInputError(f"PLIC Pack: the prompt for image {index + 1} is empty; type a "
                                     "short description of the image or connect a caption node")
            payloads.append(codec.pack_parts(prompt=text, edges=edge, palette=colours, salient=kept))
        reports = [codec.size_report(len(fileformat.dumps(p)), p) for p in payloads]
        return {"ui": {"plic": reports}, "result": (payloads,)}


def per_image(value, count: int, what: str) -> list:
    """``value`` as one item per image: None applies to every image; a list must hold one item
    per image (or a single item for all)."""
    if value is None:
        return [value] * count
    items = list(value)
    check_batch(len(items), count, what, "PLIC Pack")
    return items * count if len(items) == 1 else items


NODE_CLASS_MAPPINGS = {"PlicPack": PlicPack}
NODE_DISPLAY_NAME_MAPPINGS = {"PlicPack": "PLIC Pack (prompt + edges + palette into a .plic payload)"}
