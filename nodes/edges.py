"""PLIC Canny Edges: the edge map of each image, packed losslessly as JBIG2."""

from plic.codec import edges as edges_mod
from plic.codec import pack
from plic.codec.fileformat import MAX_WORKING_SIDE
from plic.image import DEFAULT_MAX_SIDE

from .common import CATEGORY, EDGES, image_to_rgb_list, map_batch, rgb_list_to_image


class PlicCannyEdges:
    DESCRIPTION = ("Finds the Canny edges of each image at the working size and packs them "
                   "losslessly (JBIG2). Connect 'edges' to PLIC Pack; 'preview' shows the edge map.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = (EDGES, "IMAGE")
    RETURN_NAMES = ("edges", "preview")
    OUTPUT_TOOLTIPS = ("The packed edges, one per image, for PLIC Pack.",
                       "The edge map (white edges on black) at the working size.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The images to compress (a batch is fine)."}),
            "max_side": ("INT", {"default": DEFAULT_MAX_SIDE, "min": 16, "max": MAX_WORKING_SIDE, "step": 8,
                                 "tooltip": "Longest side of the working image; larger images are scaled "
                                            f"down to it (Lanczos), never up (default {DEFAULT_MAX_SIDE})."}),
            "low_threshold": ("INT", {"default": edges_mod.DEFAULT_LOW, "min": 0, "max": 1000,
                                      "tooltip": "Canny's lower hysteresis threshold (default "
                                                 f"{edges_mod.DEFAULT_LOW}). Higher values keep fewer, stronger "
                                                 "edges. The ControlNets were used with 1..255 "
                                                 "(docs/ratecontrol.md); "
                                                 "for a smaller file prefer PLIC Pack's target_bpp."}),
            "high_threshold": ("INT", {"default": edges_mod.DEFAULT_HIGH, "min": 0, "max": 1000,
                                       "tooltip": "Canny's upper hysteresis threshold (default "
                                                  f"{edges_mod.DEFAULT_HIGH}); must not be below the lower "
                                                  "one."}),
        }}

    def run(self, image, max_side, low_threshold, high_threshold):
        def one(rgb):
            original_size, work = pack.working_image(rgb, max_side)
            return pack.edges_part(work, original_size, low=low_threshold, high=high_threshold)

        parts = map_batch(image_to_rgb_list(image), one)
        return (parts, rgb_list_to_image([part.bitmap * 255 for part in parts]))


NODE_CLASS_MAPPINGS = {"PlicCannyEdges": PlicCannyEdges}
NODE_DISPLAY_NAME_MAPPINGS = {"PlicCannyEdges": "PLIC Canny Edges"}
