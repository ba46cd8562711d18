"""Render epoch × weight grid cells with ComfyUI's own LoRA loading and sampling.

Each cell is what the user gets from ``LoraLoader`` (strength_model = strength_clip = the cell's
weight) → ``CLIPTextEncode`` → ``EmptyLatentImage`` (width × height, batch = images per prompt) →
``KSampler`` (seed, steps, cfg, sampler, scheduler, denoise 1) → ``VAEDecode``, converted to 8-bit the
way ``SaveImage``/``PreviewImage`` convert: the same file, the same calls, the same numbers.

Per epoch the LoRA file is read once; the prompts are encoded once for every cell (again per cell
only when a file also carries text-encoder keys). Cells cannot share one sampling batch: LoraLoader
applies the strength as a weight patch, so each strength is its own model.

ComfyUI is reached only through ``comfy_bridge``; nothing here imports ComfyUI.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from . import comfy_bridge

# kohya / ComfyUI prefixes of text-encoder LoRA keys.
_TEXT_ENCODER_PREFIXES = ("lora_te", "text_encoder", "text_encoders.", "lora_te1_", "lora_te2_")


def to_pil_like_save_image(images: torch.Tensor) -> list[Image.Image]:
    """IMAGE [B,H,W,C] in [0,1] -> 8-bit PIL images exactly as ComfyUI's SaveImage/PreviewImage do."""
    out = []
    for image in images:
        arr = 255.0 * image.cpu().numpy()
        out.append(Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)))
    return out


def encode_prompt(clip: Any, text: str) -> Any:
    """CLIPTextEncode: ``clip.encode_from_tokens_scheduled(clip.tokenize(text))``."""
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


def sample_like_ksampler(model: Any, positive: Any, negative: Any, *, seed: int, steps: int, cfg: float,
                         sampler: str, scheduler: str, width: int, height: int, batch: int,
                         on_step: Callable[[], None] | None = None) -> torch.Tensor:
    """EmptyLatentImage + KSampler (denoise 1.0) as ``nodes.common_ksampler`` runs them; latent out."""
    mm = comfy_bridge.require_comfy_module("comfy.model_management")
    sample = comfy_bridge.require_comfy_module("comfy.sample")
    latent = torch.zeros([batch, 4, height // 8, width // 8], device=mm.intermediate_device(),
                         dtype=mm.intermediate_dtype())
    latent = sample.fix_empty_latent_channels(model, latent, 8, None)
    noise = sample.prepare_noise(latent, seed, None)

    def callback(step, x0, x, total_steps):
        if on_step is not None:
            on_step()

    return sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                         denoise=1.0, disable_noise=False, start_step=None, last_step=None,
                         force_full_denoise=False, noise_mask=None, callback=callback, disable_pbar=True,
                         seed=seed)


def render_grid_cells_comfy(
    model: Any,
    clip: Any,
    vae: Any,
    epoch_files: list[tuple[int, Path]],
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
    EmptyLatentImage batch of that size gives in ComfyUI).
    """
    sd = comfy_bridge.require_comfy_module("comfy.sd")
    utils = comfy_bridge.require_comfy_module("comfy.utils")
    base_conds = [encode_prompt(clip, p) for p in prompts]
    base_negative = encode_prompt(clip, negative)
    cells: dict[tuple[int, float], list[Image.Image]] = {}
    total, done = len(epoch_files) * len(weights), 0
    for epoch, path in epoch_files:
        lora, metadata = utils.load_torch_file(str(path), safe_load=True, return_metadata=True)
        has_text_keys = any(k.startswith(_TEXT_ENCODER_PREFIXES) for k in lora)
        for weight in weights:
            if weight == 0:
                cell_model, cell_clip = model, clip  # LoraLoader returns its inputs at strength 0
            else:
                cell_model, cell_clip = sd.load_lora_for_models(model, clip, lora, weight, weight,
                                                                lora_metadata=metadata)
            if has_text_keys and cell_clip is not clip:
                conds = [encode_prompt(cell_clip, p) for p in prompts]
                negative_cond = encode_prompt(cell_clip, negative)
            else:
                conds, negative_cond = base_conds, base_negative
            images: list[Image.Image] = []
            for positive in conds:
                latent = sample_like_ksampler(cell_model, positive, negative_cond, seed=seed, steps=steps, cfg=cfg,
                                              sampler=sampler, scheduler=scheduler, width=width, height=height,
                                              batch=images_per_prompt, on_step=comfy_bridge.check_interrupt)
                decoded = vae.decode(latent)
                if decoded.ndim == 5:  # VAEDecode flattens video batches
                    decoded = decoded.reshape(-1, *decoded.shape[-3:])
                images.extend(to_pil_like_save_image(decoded))
            cells[(epoch, weight)] = images
            done += 1
            if on_cell:
                on_cell(done, total)
            del cell_model, cell_clip
    return cells
