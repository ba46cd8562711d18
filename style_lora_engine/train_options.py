"""The advanced training options kohya users tune, with kohya's names and defaults (all off).

Each field is named after its sd-scripts flag (``--min_snr_gamma`` → ``min_snr_gamma``) so a kohya
config means the same thing here. With every field at its default a run is exactly the default run
(same loss sequence, same run folder), which is why ``TrainConfig`` leaves them out of its JSON then.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .config_checks import check_bool, check_choice, check_float, check_int
from .errors import ConfigError

LOSS_TYPES = ("l2", "huber", "smooth_l1", "l1")
HUBER_SCHEDULES = ("snr", "exponential", "constant")
NUM_TRAIN_TIMESTEPS = 1000


@dataclass(frozen=True)
class TrainOptions:
    # Loss weighting (kohya --min_snr_gamma, --debiased_estimation_loss); 0 / False = off.
    min_snr_gamma: float = 0.0
    debiased_estimation_loss: bool = False
    # Noise (kohya --noise_offset, --noise_offset_random_strength, --adaptive_noise_scale,
    # --multires_noise_iterations, --multires_noise_discount).
    noise_offset: float = 0.0
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    # Timesteps drawn uniformly from [min_timestep, max_timestep) (kohya --min_timestep/--max_timestep).
    min_timestep: int = 0
    max_timestep: int = NUM_TRAIN_TIMESTEPS
    # Loss type (kohya --loss_type, --huber_schedule, --huber_c, --huber_scale).
    loss_type: str = "l2"
    huber_schedule: str = "snr"
    huber_c: float = 0.1
    huber_scale: float = 1.0
    # Loss weighted by each image's mask (kohya --masked_loss); the masks come from LoadDataset.
    masked_loss: bool = False
    # LoCon: LoRA on the ResNet blocks' 3x3 convolutions too (kohya network_args conv_dim/conv_alpha).
    conv_dim: int = 0
    conv_alpha: float = 1.0
    # DoRA (weight-decomposed LoRA, LyCORIS dora_wd): a learned magnitude per input channel.
    use_dora: bool = False
    # kohya's --network_dropout and network_args rank_dropout / module_dropout.
    network_dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0

    def validate(self) -> TrainOptions:
        """Check every field; raise ``ConfigError`` naming it (the Train Options widget) and the fix."""
        check_float(self.min_snr_gamma, "min_snr_gamma", 0.0, 100.0, fix="kohya users use 5; 0 turns it off.")
        check_bool(self.debiased_estimation_loss, "debiased_estimation_loss")
        check_float(self.noise_offset, "noise_offset", 0.0, 1.0, fix="0.0357 or 0.05-0.1 are usual; 0 is off.")
        check_bool(self.noise_offset_random_strength, "noise_offset_random_strength")
        check_float(self.adaptive_noise_scale, "adaptive_noise_scale", -1.0, 1.0,
                    fix="kohya suggests about noise_offset / 10; 0 is off.")
        check_int(self.multires_noise_iterations, "multires_noise_iterations", 0, 64, fix="6-10 are usual; 0 is off.")
        check_float(self.multires_noise_discount, "multires_noise_discount", 0.0, 1.0, fix="0.3 is kohya's default.")
        check_int(self.min_timestep, "min_timestep", 0, NUM_TRAIN_TIMESTEPS - 1)
        check_int(self.max_timestep, "max_timestep", 1, NUM_TRAIN_TIMESTEPS)
        if self.min_timestep >= self.max_timestep:
            raise ConfigError(f"min_timestep ({self.min_timestep}) must be below max_timestep ({self.max_timestep}); "
                              f"the full range is 0 to {NUM_TRAIN_TIMESTEPS}.")
        check_choice(self.loss_type, "loss_type", LOSS_TYPES)
        check_choice(self.huber_schedule, "huber_schedule", HUBER_SCHEDULES)
        check_float(self.huber_c, "huber_c", 0.0, 10.0, low_open=True, fix="0.1 is kohya's default.")
        check_float(self.huber_scale, "huber_scale", 0.0, 10.0, low_open=True, fix="1.0 is kohya's default.")
        check_bool(self.masked_loss, "masked_loss")
        check_int(self.conv_dim, "conv_dim", 0, 256, fix="0 is off (LoRA on attention only); 8-32 are usual.")
        check_float(self.conv_alpha, "conv_alpha", 0.0, 256.0, low_open=True, fix="kohya's default is 1.")
        check_bool(self.use_dora, "use_dora")
        for name in ("network_dropout", "rank_dropout", "module_dropout"):
            check_float(getattr(self, name), name, 0.0, 1.0, fix="0 is off; 0.1 is usual.")
            if getattr(self, name) >= 1.0:
                raise ConfigError(f"{name} must be below 1 (1 drops everything); 0.1 is usual.")
        if self.adaptive_noise_scale and not self.noise_offset:
            raise ConfigError("adaptive_noise_scale needs a noise_offset (kohya's rule): set noise_offset too, "
                              "or set adaptive_noise_scale to 0.")
        if self.noise_offset_random_strength and not self.noise_offset:
            raise ConfigError("noise_offset_random_strength needs a noise_offset: set noise_offset too.")
        return self

    def is_default(self) -> bool:
        return self == TrainOptions()

    def changed(self) -> dict[str, Any]:
        """The options set away from their defaults (what the run fingerprint and the log name)."""
        default = TrainOptions()
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) != getattr(default, f.name)}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> TrainOptions:
        """Options from a JSON-able dict (config.json, a workflow); unknown names are an error."""
        values = dict(values or {})
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ConfigError(f"Unknown training option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}.")
        return cls(**values)
