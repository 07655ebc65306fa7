"""PLIC Palette: the colours of each image as a tiny square thumbnail stored as WebP."""

from plic.codec import pack
from plic.codec import palette as palette_mod
from plic.codec.fileformat import MAX_WORKING_SIDE
from plic.image import DEFAULT_MAX_SIDE

from .common import CATEGORY, PALETTE, image_to_rgb_list, map_batch, rgb_list_to_image


class PlicPalette:
    DESCRIPTION = ("Shrinks each image to a tiny square (bicubic) and stores it as WebP: the colours "
                   "the decoder paints with. Connect 'palette' to PLIC Pack; 'preview' shows it "
                   "stretched to the image size.")
    CATEGORY = CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = (PALETTE, "IMAGE")
    RETURN_NAMES = ("palette", "preview")
    OUTPUT_TOOLTIPS = ("The packed palette, one per image, for PLIC Pack.",
                       "The stored palette stretched (nearest neighbour) to the input image's size.")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The images to compress (a batch is fine)."}),
            "max_side": ("INT", {"default": DEFAULT_MAX_SIDE, "min": 16, "max": MAX_WORKING_SIDE, "step": 8,
                                 "tooltip": "Longest side of the working image the palette is made "
                                            "from: the same as PLIC Canny Edges' (PLIC Pack refuses "
                                            "a palette of another working size)."}),
            "size": ("INT", {"default": palette_mod.DEFAULT_SIZE, "min": 1, "max": palette_mod.MAX_SIZE,
                             "tooltip": f"Side of the square palette in pixels (default {palette_mod.DEFAULT_SIZE}). "
                                        "Larger keeps more colour detail and costs more bytes."}),
            "webp_quality": ("INT", {"default": palette_mod.DEFAULT_QUALITY, "min": 0, "max": 100,
                                     "tooltip": "WebP quality of the stored palette, 0-100 "
                                                f"(default {palette_mod.DEFAULT_QUALITY})."}),
        }}

    def run(self, image, max_side, size, webp_quality):
        images = image_to_rgb_list(image)
        parts = map_batch(images, lambda rgb: pack.palette_part(pack.working_image(rgb, max_side)[1],
                                                                   size, webp_quality))
        height, width = images[0].shape[:2]
        return (parts, rgb_list_to_image([palette_mod.upscale(p.small, (width, height)) for p in parts]))


NODE_CLASS_MAPPINGS = {"PlicPalette": PlicPalette}
NODE_DISPLAY_NAME_MAPPINGS = {"PlicPalette": "PLIC Palette"}
