"""PLIC for ComfyUI: entry point ComfyUI loads from custom_nodes/. Registers the nodes and the
web extension; inside ComfyUI it also copies the shipped workflows' example inputs into
ComfyUI's input folder where they are missing (nodes/files.py)."""

WEB_DIRECTORY = "./web"

if __package__:  # loaded as a package, as ComfyUI does (custom_nodes/<folder>/__init__.py)
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:  # loaded as a lone module: pytest does this when the folder's name is not an identifier
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
