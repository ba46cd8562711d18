"""The one place that decides who hosts the model a node was given.

A ComfyUI MODEL/CLIP/VAE (from Load Checkpoint) is trained by ``ComfyBackend`` and previewed by
ComfyUI's own sampling. Any other model must bring its own host: ``training_backend()`` and
``render_grid_cells(...)`` methods (the development package's diffusers reference model does, for
the demo and the tests; the shipped pack never imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from ..style_lora_engine.backend import TrainingBackend
from ..style_lora_engine.errors import ConfigError
from . import comfy_backend, comfy_preview
from .comfy_modules import is_comfy_model
from .socket_types import EpochFile

_CONNECT = "connect the MODEL, CLIP and VAE outputs of a Load Checkpoint node (SD1.5 or SDXL)."


def _own(model: Any, method: str) -> Callable[..., Any] | None:
    found = getattr(model, method, None)
    return found if callable(found) else None


def training_backend(model: Any, clip: Any, vae: Any) -> TrainingBackend:
    """The engine backend for a node's MODEL/CLIP/VAE inputs."""
    if is_comfy_model(model):
        return comfy_backend.ComfyBackend(model, clip, vae)
    own = _own(model, "training_backend")
    if own is not None:
        return own()
    raise ConfigError(f"Cannot train a {type(model).__name__}: {_CONNECT}")


def render_grid_cells(model: Any, clip: Any, vae: Any, epoch_files: list[EpochFile], weights: list[float],
                      prompts: list[str], **settings: Any) -> dict[tuple[int, float], list[Image.Image]]:
    """Every (epoch, weight) cell of the grid, each a list of images (prompts × images per prompt)."""
    if is_comfy_model(model):
        return comfy_preview.render_grid_cells_comfy(model, clip, vae, epoch_files, weights, prompts, **settings)
    own = _own(model, "render_grid_cells")
    if own is not None:
        return own([(f.epoch, f.path) for f in epoch_files], weights, prompts, **settings)
    raise ConfigError(f"Cannot render a grid with a {type(model).__name__}: {_CONNECT}")
