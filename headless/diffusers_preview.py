"""Render epoch × weight grid cells with a diffusers pipeline and the saved LoRA files.

The LoRA is loaded from the same kohya file a user would load elsewhere (diffusers converts the
kohya keys), so the preview shows what the file does, not what is in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from PIL import Image
from safetensors.torch import load_file

from ..style_lora_engine.errors import ConfigError

if TYPE_CHECKING:  # the bundle imports this module, not the other way round
    from .model_bundle import DiffusersSD

# ComfyUI sampler/scheduler names mapped to diffusers schedulers, for the diffusers preview.
_SAMPLERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "uni_pc": "UniPCMultistepScheduler",
}


def build_pipeline(model: DiffusersSD, sampler: str, scheduler: str):
    import diffusers

    if sampler not in _SAMPLERS:
        raise ConfigError(f"Sampler {sampler!r} is not available outside ComfyUI; use one of {', '.join(_SAMPLERS)}.")
    sched_cls = getattr(diffusers, _SAMPLERS[sampler])
    extra = {"use_karras_sigmas": True} if scheduler == "karras" else {}
    noise_scheduler = sched_cls.from_config(model.noise_scheduler.config, **extra)
    common = dict(unet=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                  scheduler=noise_scheduler)
    if model.arch == "sdxl":
        pipe = diffusers.StableDiffusionXLPipeline(text_encoder_2=model.text_encoder_2,
                                                   tokenizer_2=model.tokenizer_2, **common)
    else:
        pipe = diffusers.StableDiffusionPipeline(safety_checker=None, feature_extractor=None,
                                                 image_encoder=None, requires_safety_checker=False, **common)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _load_unet_only_lora(pipe, path: Path, adapter: str) -> None:
    from diffusers.utils import logging as diffusers_logging

    # Our files are U-Net only (the guide); diffusers would warn for every file that the text
    # encoder got no LoRA keys, burying the useful output.
    previous = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()
    try:
        pipe.load_lora_weights(load_file(str(path)), adapter_name=adapter)
    finally:
        diffusers_logging.set_verbosity(previous)


def render_grid_cells(
    model: DiffusersSD,
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
    """{(epoch, weight): images (prompt-major, then seed)} for every epoch file and weight.

    All prompts and seeds of one cell share one batch; a LoRA is loaded once per epoch.
    """
    pipe = build_pipeline(model, sampler, scheduler)
    cells: dict[tuple[int, float], list[Image.Image]] = {}
    total, done = len(epoch_files) * len(weights), 0
    batch_prompts = [p for p in prompts for _ in range(images_per_prompt)]
    seeds = [seed + k for _ in prompts for k in range(images_per_prompt)]
    try:
        for epoch, path in epoch_files:
            adapter = f"style_lora_epoch_{epoch}"
            _load_unet_only_lora(pipe, path, adapter)
            try:
                for weight in weights:
                    pipe.set_adapters([adapter], adapter_weights=[weight])
                    generators = [torch.Generator().manual_seed(s) for s in seeds]
                    out = pipe(batch_prompts, negative_prompt=[negative] * len(batch_prompts),
                               num_inference_steps=steps, guidance_scale=cfg, width=width, height=height,
                               generator=generators)
                    cells[(epoch, weight)] = list(out.images)
                    done += 1
                    if on_cell:
                        on_cell(done, total)
            finally:
                pipe.delete_adapters(adapter)
    finally:
        pipe.unload_lora_weights()  # leave the user's U-Net without LoRA layers
    return cells


def render_base(model: DiffusersSD, prompts: list[str], **kwargs) -> list[Image.Image]:
    """The model without any LoRA, same settings: weight 0 of the grid must equal this."""
    pipe = build_pipeline(model, kwargs.pop("sampler", "euler"), kwargs.pop("scheduler", "normal"))
    seed, per = kwargs.pop("seed", 0), kwargs.pop("images_per_prompt", 1)
    negative = kwargs.pop("negative", "")
    batch_prompts = [p for p in prompts for _ in range(per)]
    generators = [torch.Generator().manual_seed(seed + k) for _ in prompts for k in range(per)]
    out = pipe(batch_prompts, negative_prompt=[negative] * len(batch_prompts), generator=generators,
               num_inference_steps=kwargs.pop("steps", 20), guidance_scale=kwargs.pop("cfg", 7.0), **kwargs)
    return list(out.images)
