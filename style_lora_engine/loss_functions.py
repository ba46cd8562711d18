"""The training loss with kohya's options: loss type (L2, Huber, smooth L1, L1), masked loss, min-SNR
weighting and debiased estimation.

Order as in sd-scripts' ``train_network.py``: per-element ``conditional_loss`` → mask
(``apply_masked_loss``) → mean per sample → ``post_process_loss`` (min-SNR, then debiased) → mean.
With default options and no mask the loss is exactly ``F.mse_loss(pred, target)``, as before.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .train_options import TrainOptions

PREDICTION_TYPES = ("epsilon", "v_prediction")
SNR_LIMIT = 1000.0  # kohya clamps SNR(t=0) (near infinite) to 1000 for debiased estimation


def snr(timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """kohya's ``all_snr[t]`` = ᾱ_t / (1 - ᾱ_t) (``prepare_scheduler_for_custom_training``)."""
    a = alphas_cumprod.to(torch.float32)[timesteps.cpu().long()]
    return (a.sqrt() / (1.0 - a).sqrt()) ** 2


def huber_c_for(timesteps: torch.Tensor, options: TrainOptions, alphas_cumprod: torch.Tensor) -> torch.Tensor | None:
    """kohya ``get_huber_threshold_if_needed``: the Huber threshold per sample (None for L1/L2)."""
    if options.loss_type not in ("huber", "smooth_l1"):
        return None
    t = timesteps.cpu().long()
    if options.huber_schedule == "exponential":
        alpha = -math.log(options.huber_c) / len(alphas_cumprod)
        return torch.exp(-alpha * t) * options.huber_scale
    if options.huber_schedule == "snr":
        a = alphas_cumprod.to(torch.float32)[t]
        sigmas = ((1.0 - a) / a) ** 0.5
        return (1 - options.huber_c) / (1 + sigmas) ** 2 + options.huber_c  # kohya applies no huber_scale here
    return torch.full((len(t),), options.huber_c * options.huber_scale)


def per_element_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str,
                     huber_c: torch.Tensor | None) -> torch.Tensor:
    """kohya ``train_util.conditional_loss(..., reduction="none")``."""
    if loss_type == "l2":
        return F.mse_loss(pred, target, reduction="none")
    if loss_type == "l1":
        return F.l1_loss(pred, target, reduction="none")
    c = huber_c.to(pred.device, pred.dtype).view(-1, *([1] * (pred.ndim - 1)))
    if loss_type == "huber":
        return 2 * c * (torch.sqrt((pred - target) ** 2 + c**2) - c)
    if loss_type == "smooth_l1":
        return 2 * (torch.sqrt((pred - target) ** 2 + c**2) - c)
    raise ValueError(f"unknown loss_type {loss_type!r}")


def apply_mask(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """kohya ``apply_masked_loss``: the mask [B,1,h,w] in [0,1] resized ("area") to the loss, multiplied in."""
    mask = F.interpolate(mask.to(loss.device, loss.dtype), size=loss.shape[2:], mode="area")
    return loss * mask


def training_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, *, options: TrainOptions,
                  alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                  mask: torch.Tensor | None = None) -> torch.Tensor:
    """The scalar loss of one step (float32), as kohya ``train_network.NetworkTrainer.process_batch`` computes it
    from ``conditional_loss`` on (``--loss_type``, ``--masked_loss``, ``--min_snr_gamma``,
    ``--debiased_estimation_loss``; ``prediction_type="v_prediction"`` is kohya's ``--v_parameterization``).

    ``mask`` is None or [B,1,h,w] in [0,1], at pixel or latent size."""
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"unknown prediction_type {prediction_type!r} (epsilon or v_prediction)")
    pred, target = pred.float(), target.float()  # kohya: conditional_loss(noise_pred.float(), target.float())
    weighted = options.min_snr_gamma or options.debiased_estimation_loss
    if options.loss_type == "l2" and mask is None and not weighted:
        return F.mse_loss(pred, target)  # the default path, bit for bit what it always was
    loss = per_element_loss(pred, target, options.loss_type, huber_c_for(timesteps, options, alphas_cumprod))
    if mask is not None:
        loss = apply_mask(loss, mask)
    loss = loss.mean(dim=list(range(1, loss.ndim)))
    v_prediction = prediction_type == "v_prediction"
    if options.min_snr_gamma:  # kohya apply_snr_weight
        s = snr(timesteps, alphas_cumprod)
        clipped = torch.minimum(s, torch.full_like(s, options.min_snr_gamma))
        loss = loss * (clipped / (s + 1) if v_prediction else clipped / s).to(loss.device)
    if options.debiased_estimation_loss:  # kohya apply_debiased_estimation
        s = snr(timesteps, alphas_cumprod)
        s = torch.minimum(s, torch.full_like(s, SNR_LIMIT))
        loss = loss * (1 / (s + 1) if v_prediction else 1 / torch.sqrt(s)).to(loss.device)
    return loss.mean()
