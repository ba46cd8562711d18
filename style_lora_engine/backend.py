"""What the training loop needs from a model, whoever provides it (diffusers here, ComfyUI in the pack).

The loop owns epochs, batches, captions, optimizer, files and resume; a backend owns the model:
where LoRA goes, how images become latents, how captions become conditioning and how one
denoising loss is computed for the model's own parameterisation (eps or v).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from .images import cover_crop


@dataclass(frozen=True)
class SampleGeometry:
    """SDXL size conditioning for one sample: original size, crop offset, target (bucket) size."""

    original_hw: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_hw: tuple[int, int]


class TrainingBackend(Protocol):
    """Optional attributes the trainer also reads when present: ``prediction_type`` ("epsilon" or
    "v_prediction", for the file metadata; default "epsilon"), ``model_identity`` (a stable id of
    the starting weights for the run fingerprint; default ``model_name``) and ``latents_cached()``
    (called once every latent is cached: the backend may set the VAE aside until ``end_training``)."""

    arch: str  # "sd15" or "sdxl"
    model_name: str
    naming: str  # module naming of lora_module(): "diffusers" or "ldm"
    layers_per_block: int
    device: torch.device

    def lora_module(self) -> torch.nn.Module:
        """The U-Net module that gets LoRA layers."""
        ...

    def begin_training(self, *, dtype: torch.dtype, gradient_checkpointing: bool) -> None:
        """Move the U-Net to the training device, freeze it, enable checkpointing."""
        ...

    def end_training(self) -> None:
        """Undo begin_training: the user's model is as it was before."""
        ...

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] -> scaled latents [B,C,h,w] on CPU, float32."""
        ...

    @property
    def num_train_timesteps(self) -> int:
        """Discrete training timesteps (1000 for SD1.5/SDXL); valid after ``begin_training``."""
        ...

    def alphas_cumprod(self) -> torch.Tensor:
        """DDPM's ᾱ_t for t in [0, num_train_timesteps), float32 on CPU (for SNR-based loss options)."""
        ...

    def predict(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        captions: list[str],
        geometry: list[SampleGeometry],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, target) of the U-Net on ``latents`` noised with ``noise`` at integer ``timesteps``,
        in the model's own parameterisation (eps or v). The trainer draws noise and timesteps and computes the
        loss (``loss_functions.training_loss``). With a bf16/fp16 ``begin_training`` dtype the U-Net runs
        under ``torch.autocast`` in that dtype (the trainer relies on it: the LoRA layers leave casting
        their inputs to autocast)."""
        ...


def crop_geometry(width: int, height: int, bucket: tuple[int, int]) -> SampleGeometry:
    """SDXL conditioning of the crop ``images.prepare_image`` performs (the same ``cover_crop``)."""
    bw, bh = bucket
    _, _, left, top = cover_crop(width, height, bw, bh)
    return SampleGeometry((height, width), (top, left), (bh, bw))
