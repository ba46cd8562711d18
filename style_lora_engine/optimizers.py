"""Build the optimizer a run asks for, with defaults that are stable for LoRA training.

The guide's "DAdaptAdamW" is dadaptation's ``DAdaptAdam`` with ``decouple=True`` (there is no
class of that name; kohya maps it the same way). Defaults, and why:

- ``decouple=True``: without it DAdapt "learns nothing or burns" (kohya/LoRA_Easy_Training_Scripts
  reports); decoupled decay is what makes it AdamW.
- ``use_bias_correction=True``: without it d grows for ~50 steps and the loss turns NaN on a small
  pretrained model; with it d settles (measured on the demo's tiny model).
- ``weight_decay=0.01``, ``betas=(0.9, 0.999)``: the common kohya DAdapt presets.
- One parameter group: DAdaptAdam refuses groups with different learning rates.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable
from typing import Any

import torch

from .config import TrainConfig
from .errors import ConfigError

# Optimizers whose "learning rate" is a multiplier on an adapted step size (d).
ADAPTIVE_OPTIMIZERS = ("DAdaptAdamW", "Prodigy")


def optimizer_defaults(config: TrainConfig) -> dict[str, Any]:
    """Keyword arguments passed to the optimizer class, user ``optimizer_args`` last."""
    wd = config.weight_decay
    defaults: dict[str, dict[str, Any]] = {
        "DAdaptAdamW": {"decouple": True, "use_bias_correction": True, "weight_decay": wd,
                        "betas": (0.9, 0.999)},
        "Prodigy": {"decouple": True, "use_bias_correction": True, "safeguard_warmup": True,
                    "weight_decay": wd, "betas": (0.9, 0.99)},
        "AdamW": {"weight_decay": wd, "betas": (0.9, 0.999)},
        "AdamW8bit": {"weight_decay": wd, "betas": (0.9, 0.999)},
        # kohya's Adafactor settings for a fixed learning rate.
        "Adafactor": {"scale_parameter": False, "relative_step": False, "warmup_init": False,
                      "weight_decay": wd},
    }
    kwargs = dict(defaults[config.optimizer])
    for key, value in config.optimizer_args.items():
        kwargs[key] = tuple(value) if key == "betas" else value
    return kwargs


def build_optimizer(params: Iterable[torch.nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("No trainable LoRA parameters were found in the U-Net.")
    kwargs = optimizer_defaults(config)
    lr = config.learning_rate
    name = config.optimizer
    try:
        if name == "DAdaptAdamW":
            import dadaptation

            return dadaptation.DAdaptAdam(params, lr=lr, **kwargs)
        if name == "Prodigy":
            import prodigyopt

            return prodigyopt.Prodigy(params, lr=lr, **kwargs)
        if name == "AdamW":
            return torch.optim.AdamW(params, lr=lr, **kwargs)
        if name == "AdamW8bit":
            if importlib.util.find_spec("bitsandbytes") is None:
                raise ConfigError(
                    "AdamW8bit needs the bitsandbytes package, which is not installed. Install it into "
                    "ComfyUI's Python (`pip install bitsandbytes`; NVIDIA GPUs only) or choose AdamW."
                )
            import bitsandbytes as bnb

            return bnb.optim.AdamW8bit(params, lr=lr, **kwargs)
        if name == "Adafactor":
            from transformers.optimization import Adafactor

            return Adafactor(params, lr=lr, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"Invalid optimizer_args for {name}: {exc}") from exc
    raise ConfigError(f"Unknown optimizer {name!r}.")


def describe_optimizer(config: TrainConfig) -> str:
    """kohya-style ``ss_optimizer`` text, e.g. ``dadaptation.dadapt_adam.DAdaptAdam(decouple=True,...)``."""
    qualified = {
        "DAdaptAdamW": "dadaptation.dadapt_adam.DAdaptAdam",
        "Prodigy": "prodigyopt.prodigy.Prodigy",
        "AdamW": "torch.optim.adamw.AdamW",
        "AdamW8bit": "bitsandbytes.optim.adamw.AdamW8bit",
        "Adafactor": "transformers.optimization.Adafactor",
    }[config.optimizer]
    args = ",".join(f"{k}={v}" for k, v in optimizer_defaults(config).items())
    return f"{qualified}({args})"


def effective_lr(optimizer: torch.optim.Optimizer) -> tuple[float, float]:
    """(lr, d*lr) of the first group; d*lr equals lr for non-adaptive optimizers."""
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    d = float(group.get("d", 1.0))
    return lr, d * lr
