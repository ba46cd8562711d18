"""The one place that decides who hosts the model a node was given.

A ComfyUI MODEL/CLIP/VAE (from Load Checkpoint) is trained by ``ComfyBackend`` and previewed by
ComfyUI's own sampling, and gets a picked epoch applied by ComfyUI's ``LoraLoader``. Any other model
must bring its own host: ``training_backend()``, ``render_grid_cells(...)`` and (for Pick Epoch)
``apply_lora(path, weight)`` methods (the headless trainer's diffusers model brings the
first two, for the CLI, the demo and the tests; the shipped pack never imports it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from ..style_lora_engine.backend import TrainingBackend
from ..style_lora_engine.errors import ConfigError
from . import comfy_backend, comfy_modules, comfy_preview
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


def apply_lora(model: Any, clip: Any, lora_name: str, path: Path | None, weight: float) -> tuple[Any, Any]:
    """``(model, clip)`` with the LoRA applied at ``weight`` (strength_model = strength_clip), as LoraLoader.

    A ComfyUI MODEL goes through ComfyUI's own ``LoraLoader().load_lora`` with ``lora_name`` (the name in
    its loras list), so the result is exactly what a LoraLoader node gives. Another model's own
    ``apply_lora(path, weight)`` returns the pair itself."""
    if is_comfy_model(model):
        loader = comfy_modules.require_comfy_module("nodes").LoraLoader()
        new_model, new_clip = loader.load_lora(model, clip, lora_name, weight, weight)[:2]
        return new_model, new_clip
    own = _own(model, "apply_lora")
    if own is not None:
        if path is None:
            raise ConfigError(f"Cannot find the LoRA file {lora_name!r} in the loras folder(s) to apply it.")
        new_model, new_clip = own(path, weight)
        return new_model, new_clip
    raise ConfigError(f"Cannot apply a LoRA to a {type(model).__name__}: connect the MODEL and CLIP outputs of a "
                      "Load Checkpoint node (SD1.5 or SDXL), or leave model and clip unconnected and load the "
                      "picked lora_name with a LoraLoader.")


def render_samples(model: Any, clip: Any, vae: Any, lora_path: Path | None, weights: list[float],
                   prompts: list[str], **settings: Any) -> list[tuple[float | None, list[Image.Image]]]:
    """Samples while training runs: [(weight, images)] of one epoch file, or [(None, images)] of the base
    model for ``lora_path`` None (Train LoRA's ``samples``)."""
    if is_comfy_model(model):
        return comfy_preview.render_samples_comfy(model, clip, vae, lora_path, weights, prompts, **settings)
    own = _own(model, "render_samples")
    if own is not None:
        return own(lora_path, weights, prompts, **settings)
    raise ConfigError(f"Cannot render samples with a {type(model).__name__}: {_CONNECT}")
