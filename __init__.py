"""Style LoRA Trainer: train style LoRAs inside ComfyUI the way the style-LoRA guide teaches."""

from .canvas_server import register_routes
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./js"

# The caption editor's and live panel's routes (docs/CANVAS.md); does nothing outside ComfyUI.
register_routes()

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
