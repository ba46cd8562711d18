"""The canvas's HTTP side (docs/CANVAS.md): routes, the caption gallery, the training history.

:func:`register_routes` is called from the pack's ``__init__.py``; it does nothing outside ComfyUI.
"""

from __future__ import annotations

from ..integration import comfy_modules
from ..integration.tokens import caption_token_counter
from .routes import add_routes


def register_routes() -> bool:
    """Add the canvas routes to ComfyUI's server; False outside ComfyUI."""
    server = comfy_modules.comfy_module("server")
    instance = getattr(getattr(server, "PromptServer", None), "instance", None) if server is not None else None
    if instance is None:
        return False
    if getattr(instance, "_style_lora_routes", False):  # the pack imported twice: aiohttp refuses duplicates
        return True
    add_routes(instance.routes, server.web, token_counter=caption_token_counter)
    instance._style_lora_routes = True
    return True
