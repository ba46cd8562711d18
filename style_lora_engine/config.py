"""Training options, the guide's presets, and a stable fingerprint for resuming runs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from .config_checks import check_bool, check_choice, check_float, check_int, check_text
from .errors import ConfigError
from .train_options import TrainOptions

__all__ = ["check_bool", "check_choice", "check_float", "check_int", "check_text", "TrainConfig", "TrainOptions"]

OPTIMIZERS = ("DAdaptAdamW", "AdamW", "AdamW8bit", "Adafactor", "Prodigy")
LR_SCHEDULERS = ("constant", "cosine", "linear")
MIXED_PRECISIONS = ("auto", "fp32", "bf16", "fp16")
SAVE_PRECISIONS = ("fp16", "bf16", "fp32")
ARCHITECTURES = ("sd15", "sdxl")

# The ranges TrainLoRA's widgets offer (tests/nodes check the widgets agree). ComfyUI checks a typed
# widget value against them, but not NaN and not a value arriving over a link, so validate() does.
RANK_RANGE = (1, 256)
ALPHA_MAX = 256.0
LEARNING_RATE_MAX = 10.0
LR_WARMUP_STEPS_RANGE = (0, 100_000)
EPOCHS_RANGE = (1, 1000)
BATCH_SIZE_RANGE = (1, 64)
SEED_RANGE = (0, 0xFFFFFFFF)
WEIGHT_DECAY_MAX = 1.0


def _check_json_value(value: object, name: str) -> None:
    """Optimizer arguments reach the optimizer as keyword arguments: plain JSON values only."""
    if isinstance(value, (list, tuple)):
        for element in value:
            _check_json_value(element, name)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} holds {value!r}; use finite numbers only.")
    elif value is not None and not isinstance(value, (bool, int, float, str)):
        raise ConfigError(f"{name} holds a {type(value).__name__}; use numbers, text, true/false or lists.")


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
    # kohya's advanced options (loss weighting, noise, masks, LoCon, DoRA, dropout), all off by default.
    options: TrainOptions = field(default_factory=TrainOptions)

    def validate(self) -> TrainConfig:
        """Check every field (type, range, finiteness); raise ``ConfigError`` naming it and the fix."""
        check_int(self.rank, "rank", *RANK_RANGE, fix="The guide uses 32 for SD1.5 and 64 for SDXL.")
        check_float(self.alpha, "alpha", 0.0, ALPHA_MAX, low_open=True,
                    fix="The guide uses half the rank (16 for rank 32).")
        check_choice(self.optimizer, "optimizer", OPTIMIZERS)
        check_float(self.learning_rate, "learning_rate", 0.0, LEARNING_RATE_MAX, low_open=True,
                    fix="Use 1.0 for DAdaptAdamW and Prodigy, about 1e-4 for AdamW, AdamW8bit and Adafactor.")
        check_choice(self.lr_scheduler, "lr_scheduler", LR_SCHEDULERS)
        check_int(self.lr_warmup_steps, "lr_warmup_steps", *LR_WARMUP_STEPS_RANGE, fix="0 means no warmup.")
        check_int(self.epochs, "epochs", *EPOCHS_RANGE, fix="The guide trains 20 epochs.")
        check_int(self.batch_size, "batch_size", *BATCH_SIZE_RANGE,
                  fix="The guide uses 1; raise it only if memory allows.")
        check_int(self.seed, "seed", *SEED_RANGE)
        check_choice(self.mixed_precision, "mixed_precision", MIXED_PRECISIONS)
        check_bool(self.gradient_checkpointing, "gradient_checkpointing")
        check_bool(self.cache_latents, "cache_latents")
        check_float(self.weight_decay, "weight_decay", 0.0, WEIGHT_DECAY_MAX, fix="0.01 is the usual value.")
        check_float(self.max_grad_norm, "max_grad_norm", 0.0, math.inf,
                    fix="1.0 is the usual value; 0 turns clipping off.")
        check_choice(self.save_precision, "save_precision", SAVE_PRECISIONS)
        self._check_optimizer_args()
        if not isinstance(self.options, TrainOptions):
            raise ConfigError(f"options must come from a Train Options node, got {type(self.options).__name__}.")
        self.options.validate()
        return self

    def _check_optimizer_args(self) -> None:
        args = self.optimizer_args
        if not isinstance(args, dict) or not all(isinstance(key, str) for key in args):
            raise ConfigError(f"optimizer_args must map argument names to values, e.g. {{\"betas\": [0.9, 0.99]}}; "
                              f"got {args!r}.")
        for key, value in args.items():
            _check_json_value(value, f"optimizer_args[{key!r}]")

    def to_json_dict(self) -> dict[str, Any]:
        """The config as JSON; ``options`` only when some are set, so default runs keep the run folder
        (fingerprint) they had before the options existed."""
        values = dataclasses.asdict(self)
        values.pop("options")
        if not self.options.is_default():
            values["options"] = self.options.changed()
        return values


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
    if not isinstance(preset_name, str) or preset_name not in PRESETS:
        raise ConfigError(f"Unknown preset {preset_name!r}; choose one of {', '.join(PRESET_NAMES)}.")
    return dataclasses.replace(config, **PRESETS[preset_name].overrides)


def fingerprint(*parts: Any) -> str:
    """Short stable hash of JSON-able parts (config, dataset captions, model id) naming a run."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=True)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]
