"""PLIC Unpack: a payload back to the images and text ComfyUI's ControlNet and inpaint nodes take."""


from plic.codec import pack
from plic.errors import PlicInputError

from .common import CATEGORY, PAYLOAD, check_one_size, map_batch, masks_to_tensor, rgb_list_to_image


class PlicUnpack:
    DESCRIPTION = ("Decodes a PLIC payload into its prompt, the colour+canny ControlNet hint, the "
                   "edge map, the palette, the stored salient pixels and their mask, and the "
                   "working size: everything a reconstruction with ComfyUI's own nodes needs.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("STRING", "IMAGE", "IMAGE", "IMAGE", "IMAGE", "MASK", "INT", "INT", "MASK")
    RETURN_NAMES = ("prompt", "color_canny_hint", "edges", "palette", "salient_pixels",
                    "salient_mask", "width", "height", "regenerate_mask")
    OUTPUT_TOOLTIPS = (
        "The stored prompt, for CLIP Text Encode.",
        "The palette stretched to full size with the edges painted white: the colour+canny "
        "ControlNet's hint.",
        "The Canny edge map (white on black), for a canny ControlNet.",
        "The palette stretched to full size (nearest neighbour).",
        "The stored salient pixels, black elsewhere.",
        "1 where pixels were stored exactly (salient), 0 elsewhere.",
        "Working width in pixels (the size to generate at).",
        "Working height in pixels.",
        "1 where pixels must be generated (the inverse of salient_mask), for inpaint nodes.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "plic": (PAYLOAD, {"tooltip": "A payload from PLIC Load or PLIC Pack. All items of a "
                                          "batch must have the same size."}),
        }}

    def run(self, plic):
        parts = map_batch(list(plic), pack.unpack)
        check_one_size(parts, "PLIC Unpack", "unpack")
        first = parts[0]
        if any(p.prompt != first.prompt for p in parts):
            raise PlicInputError("PLIC Unpack: the batch holds different prompts; unpack such files "
                                 "one at a time")
        kept = [p.keep_mask() for p in parts]
        return (
            first.prompt,
            rgb_list_to_image([p.color_canny_hint for p in parts]),
            rgb_list_to_image([p.edges * 255 for p in parts]),
            rgb_list_to_image([p.palette_full for p in parts]),
            rgb_list_to_image([p.salient_pixels for p in parts]),
            masks_to_tensor(kept),
            first.width,
            first.height,
            masks_to_tensor([~mask for mask in kept]),
        )


NODE_CLASS_MAPPINGS = {"PlicUnpack": PlicUnpack}
NODE_DISPLAY_NAME_MAPPINGS = {"PlicUnpack": "PLIC Unpack"}
