"""Style LoRA Trainer: train style LoRAs inside ComfyUI the way the style-LoRA guide teaches."""

from .canvas_server import register_routes
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

# The caption editor's, live panel's and plan's routes (docs/CANVAS.md); does nothing outside ComfyUI.
# The plan builds what Queue would train with the nodes' own functions: the classes are handed in.
register_routes(NODE_CLASS_MAPPINGS)

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
