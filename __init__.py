"""PLIC for ComfyUI: entry point ComfyUI loads from custom_nodes/. Registers the nodes and the
web extension; importing it has no side effects beyond that."""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
