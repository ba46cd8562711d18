"""The validation loss: one deterministic number per epoch (and before training, epoch 0).

The training loss of a step depends mostly on its random timestep, so its curve says little about
when a LoRA starts to over-train. This loss removes the randomness: each validation image is noised
with its own fixed noise at a fixed spread of timesteps (8, evenly spaced), its caption is used
unshuffled, and no gradient is taken. The same run gives the same values, whatever the batch size,
the shuffle or the order of the images (each image's timesteps go through the U-Net in fixed groups of its own, its noise drawn
from a generator seeded by the run's seed and the image's own pixel hash).

It is plain MSE against the model's target (eps or v), whatever loss options train: the numbers stay
comparable between runs with different loss settings.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .backend import TrainingBackend, crop_geometry
from .images import open_image_rgb, prepare_image
from .validation_set import ValidationSet, validation_timesteps

NUM_TIMESTEPS = 8
# Timesteps per forward pass: a fixed split of each image's timesteps (never mixed with other images), so
# the numbers do not depend on the training batch size; 4 keeps the memory of a pass moderate on SDXL.
BATCH = 4
_ENCODE_CHUNK = 8


def _item_seed(seed: int, pixel_hash: str) -> int:
    digest = hashlib.sha256(f"style-lora-validation:{seed}:{pixel_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class _Sample:
    latent: torch.Tensor  # [C, h, w]
    noise: torch.Tensor  # [T, C, h, w]
    caption: str
    geometry: object


class ValidationLoss:
    """Encodes the validation images once (while the VAE is at hand), then ``measure(unet)`` per epoch."""

    def __init__(self, backend: TrainingBackend, validation: ValidationSet, seed: int) -> None:
        self.backend = backend
        self.validation = validation
        self.timesteps = validation_timesteps(backend.num_train_timesteps, NUM_TIMESTEPS)
        items = list(validation.items)
        latents: list[torch.Tensor] = [torch.empty(0)] * len(items)
        by_bucket: dict[tuple[int, int], list[int]] = {}
        for index, item in enumerate(items):
            by_bucket.setdefault(item.bucket, []).append(index)
        for bucket_indices in by_bucket.values():
            for start in range(0, len(bucket_indices), _ENCODE_CHUNK):
                chunk = bucket_indices[start:start + _ENCODE_CHUNK]
                pixels = torch.stack([prepare_image(open_image_rgb(items[i].image_path), *items[i].bucket)
                                      for i in chunk])
                for i, latent in zip(chunk, backend.encode_images(pixels), strict=True):
                    latents[i] = latent
        self._samples: list[_Sample] = []
        for item, latent in zip(items, latents, strict=True):
            generator = torch.Generator().manual_seed(_item_seed(seed, item.pixel_hash))
            noise = torch.randn((NUM_TIMESTEPS, *latent.shape), generator=generator)
            self._samples.append(_Sample(latent, noise, item.caption,
                                         crop_geometry(item.width, item.height, item.bucket)))

    def describe(self) -> str:
        return self.validation.describe()

    def to_json_dict(self) -> dict:
        return self.validation.to_json_dict(self.timesteps)

    def measure(self, unet: torch.nn.Module) -> float:
        """The mean loss over every validation image and timestep, with the U-Net in eval mode (no
        dropout of any kind) and no gradient; the U-Net's mode is put back afterwards."""
        was_training = unet.training
        unet.eval()
        total = 0.0
        try:
            with torch.no_grad():
                for sample in self._samples:
                    for k in range(0, len(self.timesteps), BATCH):
                        steps = self.timesteps[k:k + BATCH]
                        n = len(steps)
                        pred, target = self.backend.predict(
                            sample.latent.unsqueeze(0).expand(n, *sample.latent.shape), sample.noise[k:k + n],
                            torch.tensor(steps, dtype=torch.long), [sample.caption] * n, [sample.geometry] * n)
                        total += n * float(F.mse_loss(pred.float(), target.float().to(pred.device)))
        finally:
            unet.train(was_training)
        return total / (len(self._samples) * len(self.timesteps))
