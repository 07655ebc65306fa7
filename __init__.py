"""PLIC for ComfyUI: entry point ComfyUI loads from custom_nodes/. Registers the nodes and the
web extension; importing it has no side effects beyond that."""

if __package__:  # ComfyUI imports this folder as a package
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # pytest imports this file alone when the folder's name is no identifier (comfyui-plic)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
