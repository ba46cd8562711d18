"""Noise and timesteps of a training step, with kohya's noise options.

Mirrors sd-scripts' ``train_util.get_noise_noisy_latents_and_timesteps`` (noise → noise offset →
multires noise → timesteps, in that order) with one difference: every random draw comes from the
CPU ``generator`` the trainer passes (kohya uses the global torch RNG and Python's ``random``), so a
run reproduces and resumes exactly. With default options nothing but ``randn`` then ``randint`` is
drawn, which is what every run did before the options existed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .train_options import NUM_TRAIN_TIMESTEPS, TrainOptions


def draw_noise(latents: torch.Tensor, generator: torch.Generator, options: TrainOptions) -> torch.Tensor:
    """Gaussian noise shaped like ``latents`` [B,C,H,W] (CPU float32), plus kohya's noise options
    (``--noise_offset``, ``--noise_offset_random_strength``, ``--adaptive_noise_scale``,
    ``--multires_noise_iterations``, ``--multires_noise_discount``), drawn in kohya's order."""
    noise = torch.randn(latents.shape, generator=generator)
    if options.noise_offset:
        offset: float | torch.Tensor = options.noise_offset
        if options.noise_offset_random_strength:  # kohya: torch.rand(1) * noise_offset
            offset = torch.rand(1, generator=generator) * options.noise_offset
        noise = apply_noise_offset(latents, noise, offset, options.adaptive_noise_scale, generator)
    if options.multires_noise_iterations:
        noise = pyramid_noise_like(noise, generator, options.multires_noise_iterations,
                                   options.multires_noise_discount)
    return noise


def apply_noise_offset(latents: torch.Tensor, noise: torch.Tensor, offset: float | torch.Tensor,
                       adaptive_noise_scale: float, generator: torch.Generator) -> torch.Tensor:
    """kohya ``custom_train_functions.apply_noise_offset``: noise + offset · randn(B, C, 1, 1); with an adaptive
    scale the offset grows by scale · |channel mean of the latent|, clamped at 0.

    kohya tests ``adaptive_noise_scale is not None``; here 0 means off, which gives the same numbers
    (offset + 0 · mean, clamped at 0, is the offset itself since the offset is never negative)."""
    if adaptive_noise_scale:
        latent_mean = torch.abs(latents.mean(dim=(2, 3), keepdim=True))
        offset = torch.clamp(offset + adaptive_noise_scale * latent_mean, 0.0, None)
    return noise + offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=generator)


def pyramid_noise_like(noise: torch.Tensor, generator: torch.Generator, iterations: int,
                       discount: float) -> torch.Tensor:
    """kohya ``custom_train_functions.pyramid_noise_like`` (multires noise): for i = 0, 1, …, noise at scale
    1/r^i (r uniform in [2, 4) each time), bilinearly upsampled and weighted discount^i, is added; stops
    after the 1-pixel level; then the whole is scaled back to unit std."""
    b, c, w, h = noise.shape  # kohya's names (w is really the height); kept so the code reads alike
    noise = noise.clone()  # kohya adds in place; the caller's tensor stays as it was here
    for i in range(iterations):
        # kohya: random.random() * 2 + 2 — a float64 from the generator instead of Python's RNG.
        r = float(torch.rand(1, generator=generator, dtype=torch.float64)) * 2 + 2
        wn, hn = max(1, int(w / (r**i))), max(1, int(h / (r**i)))
        coarse = torch.randn(b, c, wn, hn, generator=generator)
        # kohya: torch.nn.Upsample(size=(w, h), mode="bilinear"), i.e. this with align_corners=False.
        noise += F.interpolate(coarse, size=(w, h), mode="bilinear") * discount**i
        if wn == 1 or hn == 1:
            break  # the lowest resolution is 1x1
    return noise / noise.std()


def draw_timesteps(batch: int, generator: torch.Generator, options: TrainOptions,
                   num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> torch.Tensor:
    """Integer timesteps [batch] (int64), uniform in [min_timestep, max_timestep): kohya ``train_util.get_timesteps``
    (``--min_timestep`` / ``--max_timestep``; max is exclusive, equal bounds give that timestep).

    The default max_timestep stands for kohya's unset flag, i.e. the model's ``num_timesteps``, so defaults
    draw exactly ``randint(0, num_timesteps)``. A max past the model's range is cut to it (kohya would index
    out of range)."""
    low = options.min_timestep
    high = num_timesteps if options.max_timestep == NUM_TRAIN_TIMESTEPS else min(options.max_timestep, num_timesteps)
    if low < high:
        return torch.randint(low, high, (batch,), generator=generator)
    return torch.full((batch,), min(high, num_timesteps - 1), dtype=torch.long)
