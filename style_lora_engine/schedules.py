"""Learning-rate schedules: the guide's constant / cosine / linear, each with optional warmup."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from .errors import ConfigError

_DIFFUSERS_NAMES = {"constant": "constant", "cosine": "cosine", "linear": "linear"}


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, name: str, *, warmup_steps: int, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """diffusers' schedule, stepped once per optimizer step.

    diffusers' plain "constant" ignores warmup, so constant + warmup uses "constant_with_warmup".
    """
    if name not in _DIFFUSERS_NAMES:
        raise ConfigError(f"Unknown LR scheduler {name!r}; choose constant, cosine or linear.")
    if warmup_steps >= total_steps > 0:
        raise ConfigError(
            f"lr_warmup_steps ({warmup_steps}) must be smaller than the run's {total_steps} steps."
        )
    diffusers_name = _DIFFUSERS_NAMES[name]
    if name == "constant" and warmup_steps > 0:
        diffusers_name = "constant_with_warmup"
    return get_scheduler(
        diffusers_name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps
    )
