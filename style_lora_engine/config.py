"""Training options, the guide's presets, and a stable fingerprint for resuming runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

OPTIMIZERS = ("DAdaptAdamW", "AdamW", "AdamW8bit", "Adafactor", "Prodigy")
LR_SCHEDULERS = ("constant", "cosine", "linear")
MIXED_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
ARCHITECTURES = ("sd15", "sdxl")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what a training run produces.

    Defaults are the guide's: rank 32 / alpha 16, DAdapt-AdamW at lr 1.0, 20 epochs, U-Net only.
    """

    rank: int = 32
    alpha: float = 16.0
    optimizer: str = "DAdaptAdamW"
    learning_rate: float = 1.0
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0
    epochs: int = 20
    batch_size: int = 1
    seed: int = 0
    mixed_precision: str = "auto"
    gradient_checkpointing: bool = False
    cache_latents: bool = True
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    save_precision: str = "fp16"
    # Extra optimizer keyword arguments, e.g. {"betas": [0.9, 0.99]}; JSON-able values only.
    optimizer_args: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> TrainConfig:
        if self.rank < 1:
            raise ConfigError(f"rank must be at least 1, got {self.rank}.")
        if self.alpha <= 0:
            raise ConfigError(f"alpha must be positive, got {self.alpha} (the guide uses half the rank).")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"Unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}.")
        if self.lr_scheduler not in LR_SCHEDULERS:
            raise ConfigError(
                f"Unknown LR scheduler {self.lr_scheduler!r}; choose one of {', '.join(LR_SCHEDULERS)}."
            )
        if self.learning_rate <= 0:
            raise ConfigError("learning_rate must be positive (DAdapt and Prodigy want 1.0).")
        if self.epochs < 1 or self.batch_size < 1:
            raise ConfigError("epochs and batch_size must be at least 1.")
        if self.lr_warmup_steps < 0:
            raise ConfigError("lr_warmup_steps cannot be negative.")
        if self.mixed_precision not in MIXED_PRECISIONS:
            raise ConfigError(f"mixed_precision must be one of {', '.join(MIXED_PRECISIONS)}.")
        if self.save_precision not in SAVE_PRECISIONS:
            raise ConfigError(f"save_precision must be one of {', '.join(SAVE_PRECISIONS)}.")
        return self

    def to_json_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    overrides: dict[str, Any]


PRESETS: dict[str, Preset] = {
    "SD1.5 (guide: rank 32 / alpha 16)": Preset(
        "SD1.5 (guide: rank 32 / alpha 16)",
        "The guide's SD1.5 setting: rank 32, alpha 16, DAdapt-AdamW lr 1.0.",
        {"rank": 32, "alpha": 16.0, "optimizer": "DAdaptAdamW", "learning_rate": 1.0},
    ),
    "SDXL (guide: rank 64 / alpha 32)": Preset(
        "SDXL (guide: rank 64 / alpha 32)",
        "The guide's SDXL setting: rank 64, alpha 32, DAdapt-AdamW lr 1.0, gradient checkpointing.",
        {"rank": 64, "alpha": 32.0, "optimizer": "DAdaptAdamW", "learning_rate": 1.0,
         "gradient_checkpointing": True},
    ),
    "SD1.5 low VRAM": Preset(
        "SD1.5 low VRAM",
        "For ~4-6 GB cards: rank 16 / alpha 8, AdamW8bit at 1e-4, gradient checkpointing.",
        {"rank": 16, "alpha": 8.0, "optimizer": "AdamW8bit", "learning_rate": 1e-4,
         "gradient_checkpointing": True},
    ),
}
CUSTOM_PRESET = "custom (use the widgets)"
PRESET_NAMES = (*PRESETS.keys(), CUSTOM_PRESET)


def apply_preset(config: TrainConfig, preset_name: str) -> TrainConfig:
    """Return ``config`` with the preset's values; the custom preset leaves it unchanged."""
    if preset_name == CUSTOM_PRESET:
        return config
    if preset_name not in PRESETS:
        raise ConfigError(f"Unknown preset {preset_name!r}; choose one of {', '.join(PRESET_NAMES)}.")
    return dataclasses.replace(config, **PRESETS[preset_name].overrides)


def fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (config, dataset captions, model id) naming a run."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]
