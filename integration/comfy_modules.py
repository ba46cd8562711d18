"""ComfyUI's modules, imported lazily: every other module of the pack reaches ComfyUI through
:func:`comfy_module`, so the pack imports and runs without ComfyUI (demo, CLI, tests) and tests can
stand in for ComfyUI by replacing this one function."""

from __future__ import annotations

import importlib
from typing import Any

from ..style_lora_engine.errors import StyleLoRAError


def comfy_module(module: str) -> Any | None:
    """A ComfyUI module (``"comfy.sample"``, ``"folder_paths"``, ...) or None outside ComfyUI."""
    try:
        return importlib.import_module(module)
    except ImportError:
        return None


def require_comfy_module(module: str) -> Any:
    """Like :func:`comfy_module`, but a clear error when ComfyUI is not there."""
    found = comfy_module(module)
    if found is None:
        raise StyleLoRAError(f"This needs ComfyUI's {module!r}, which is not importable here.")
    return found


def is_comfy_model(model: Any) -> bool:
    """A ComfyUI MODEL (a ModelPatcher around a BaseModel with a ``diffusion_model``), by shape."""
    inner = getattr(model, "model", None)
    return (inner is not None and hasattr(inner, "diffusion_model") and hasattr(model, "clone")
            and hasattr(model, "get_model_object"))
