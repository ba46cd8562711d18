"""The canvas's HTTP side (docs/CANVAS.md): routes, the caption gallery, the training history.

:func:`register_routes` is called from the pack's ``__init__.py``; it does nothing outside ComfyUI.
"""

from __future__ import annotations

from ..integration import comfy_modules
from ..integration.plan_host import ComfyPlanHost
from ..integration.tokens import caption_token_counter
from .plan import CanvasPlanner
from .routes import add_routes


def register_routes(node_classes: dict[str, type] | None = None) -> bool:
    """Add the canvas routes to ComfyUI's server; False outside ComfyUI. ``node_classes`` (the pack's
    ``NODE_CLASS_MAPPINGS``) lets the Train LoRA panel's plan use the nodes' own functions."""
    server = comfy_modules.comfy_module("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None) if server is not None else None
    if instance is None:
        return False
    if getattr(instance, "_style_lora_routes", False):  # the pack imported twice: aiohttp refuses duplicates
        return True
    planner = CanvasPlanner(ComfyPlanHost(), node_classes) if node_classes is not None else None
    add_routes(instance.routes, server.web, token_counter=caption_token_counter, planner=planner)
    instance._style_lora_routes = True
    return True
