"""Render epoch × weight grid cells with ComfyUI's own nodes, called as a graph would call them.

Each cell is ``LoraLoader.load_lora`` (strength_model = strength_clip = the cell's weight) →
``CLIPTextEncode.encode`` → ``EmptyLatentImage.generate`` (width × height, batch = images per
prompt) → ``common_ksampler`` (KSampler: seed, steps, cfg, sampler, scheduler, denoise 1) →
``VAEDecode.decode``, converted to 8-bit the way ``SaveImage``/``PreviewImage`` convert. The same
functions as the user's own LoraLoader + KSampler graph, so the cells equal it by construction (the
e2e tier also compares pixels). Sampling reports progress, previews and Stop through ComfyUI's own
callback.

One LoraLoader serves the whole grid: it keeps the last file it read, so each epoch file is read
once. The prompts are encoded once for every cell, again per cell only when a file also carries
text-encoder keys. Cells cannot share one sampling batch: LoraLoader applies the strength as a
weight patch, so each strength is its own model.

ComfyUI is reached only through ``comfy_modules``; nothing here imports ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from PIL import Image

from . import comfy_modules, progress
from . import images as images_io
from .socket_types import EpochFile

# kohya / ComfyUI prefixes of text-encoder LoRA keys.
_TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "text_encoders.", "lora_te1_", "lora_te2_")


def has_text_encoder_keys(path: Path) -> bool:
    """Whether a LoRA file also patches the text encoder (its header only, no tensors read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        return any(k.startswith(_TEXT_ENCODER_PREFIXES) for k in fh.keys())


def render_grid_cells_comfy(
    model: Any,
    clip: Any,
    vae: Any,
    epoch_files: list[EpochFile],
    weights: list[float],
    prompts: list[str],
    *,
    negative: str = "",
    seed: int = 0,
    images_per_prompt: int = 1,
    steps: int = 20,
    cfg: float = 7.0,
    sampler: str = "euler",
    scheduler: str = "normal",
    width: int = 512,
    height: int = 512,
    on_cell: Callable[[int, int], None] | None = None,
) -> dict[tuple[int, float], list[Image.Image]]:
    """{(epoch, weight): images (prompt-major, then batch index)} for every epoch file and weight.

    Per prompt, the ``images_per_prompt`` images are one KSampler batch from ``seed`` (as an
    EmptyLatentImage batch of that size gives in ComfyUI). Epoch files are found by their
    ``lora_name`` in the loras folders, as LoraLoader finds them.
    """
    nodes = comfy_modules.require_comfy_module("nodes")
    encode = nodes.CLIPTextEncode().encode
    loader = nodes.LoraLoader()
    base_conds = [encode(clip, p)[0] for p in prompts]
    base_negative = encode(clip, negative)[0]
    cells: dict[tuple[int, float], list[Image.Image]] = {}
    total, done = len(epoch_files) * len(weights), 0
    for epoch_file in epoch_files:
        text_keys = has_text_encoder_keys(epoch_file.path)
        for weight in weights:
            cell_model, cell_clip = loader.load_lora(model, clip, epoch_file.lora_name, weight, weight)
            if text_keys and cell_clip is not clip:
                conds = [encode(cell_clip, p)[0] for p in prompts]
                negative_cond = encode(cell_clip, negative)[0]
            else:
                conds, negative_cond = base_conds, base_negative
            images: list[Image.Image] = []
            for positive in conds:
                progress.check_interrupt()
                (latent,) = nodes.EmptyLatentImage().generate(width, height, images_per_prompt)
                (sampled,) = nodes.common_ksampler(cell_model, seed, steps, cfg, sampler, scheduler, positive,
                                                   negative_cond, latent, denoise=1.0)
                (decoded,) = nodes.VAEDecode().decode(vae, sampled)
                images.extend(images_io.image_to_pil(decoded))
            cells[(epoch_file.epoch, weight)] = images
            done += 1
            if on_cell:
                on_cell(done, total)
            del cell_model, cell_clip
    return cells
