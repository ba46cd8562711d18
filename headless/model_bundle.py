"""The diffusers reference model used outside ComfyUI (demo, benchmark, tests): development only.

Inside ComfyUI the nodes get ComfyUI's MODEL/CLIP/VAE instead; outside they get one of these,
passed as the model, clip and vae inputs alike. It brings its own host (``integration/host.py``):
a training backend and a grid renderer, so the shipped pack never imports this package.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from . import diffusers_backend, diffusers_preview


@dataclass
class DiffusersSD:
    """A Stable Diffusion model as diffusers modules.

    ``arch`` is ``"sd15"`` (one CLIP text encoder) or ``"sdxl"`` (two, pooled + size conditioning).
    ``noise_scheduler`` is a diffusers ``DDPMScheduler`` describing the training noise schedule;
    its ``config.prediction_type`` ("epsilon" or "v_prediction") is the training target.
    """

    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    noise_scheduler: Any
    arch: str = "sd15"
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    name: str = "diffusers-model"
    # The process group of a data-parallel run (headless trainer under accelerate); None: one process.
    data_parallel: Any = None

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def layers_per_block(self) -> int:
        lpb = self.unet.config.layers_per_block
        return lpb if isinstance(lpb, int) else int(lpb[0])

    @property
    def prediction_type(self) -> str:
        return str(self.noise_scheduler.config.prediction_type)

    def training_backend(self) -> diffusers_backend.DiffusersBackend:
        return diffusers_backend.DiffusersBackend(self)

    def render_grid_cells(self, epoch_files: list[tuple[int, Path]], weights: list[float], prompts: list[str],
                          **settings: Any) -> dict[tuple[int, float], list[Image.Image]]:
        return diffusers_preview.render_grid_cells(self, epoch_files, weights, prompts, **settings)

    def render_samples(self, lora_path: Path | None, weights: list[float], prompts: list[str],
                       **settings: Any) -> list[tuple[float | None, list[Image.Image]]]:
        """Train LoRA's samples: the base model (``lora_path`` None) or one file at each weight."""
        if lora_path is None:
            return [(None, diffusers_preview.render_base(self, prompts, **settings))]
        cells = diffusers_preview.render_grid_cells(self, [(0, lora_path)], weights, prompts, **settings)
        return [(w, cells[(0, w)]) for w in weights]
