"""What Train LoRA samples while it trains (the Training Samples node's widgets), checked.

The engine only decides when (``every_n_epochs``, ``include_base``: the trainer's ``SampleHook``); the
host renders with its own sampler (ComfyUI's KSampler in the pack), so the settings are the KSampler's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from .config_checks import check_bool, check_float, check_int, check_text
from .errors import ConfigError

MAX_PROMPTS = 8
MAX_WEIGHTS = 8


def parse_weight_list(text: str, name: str = "weights") -> tuple[float, ...]:
    """'0.8, 1.0' → (0.8, 1.0): finite numbers separated by commas or spaces."""
    try:
        values = tuple(float(p) for p in re.split(r"[,\s]+", check_text(text, name).strip()) if p)
    except ValueError as exc:
        raise ConfigError(f"{name} must be numbers separated by commas, e.g. '0.8, 1.0' ({exc}).") from exc
    if not values:
        raise ConfigError(f"Give at least one LoRA weight in {name}, e.g. '0.8, 1.0'.")
    for value in values:
        check_float(value, name, -10.0, 10.0, fix="The guide compares weights 0.8 to 1.0.")
    return values


@dataclass(frozen=True)
class SampleSettings:
    prompts: tuple[str, ...]
    negative: str = ""
    weights: tuple[float, ...] = (0.8, 1.0)
    every_n_epochs: int = 1
    include_base: bool = True
    seed: int = 0
    steps: int = 20
    cfg: float = 7.0
    sampler: str = "euler"
    scheduler: str = "normal"
    width: int = 512
    height: int = 512
    images_per_prompt: int = 1

    def validate(self) -> SampleSettings:
        if not self.prompts:
            raise ConfigError("Training Samples has no prompt: enter at least one prompt (one per line).")
        if len(self.prompts) > MAX_PROMPTS:
            raise ConfigError(f"Training Samples has {len(self.prompts)} prompts; use at most {MAX_PROMPTS} "
                              "(each costs a full sampling per weight and epoch).")
        if len(self.weights) > MAX_WEIGHTS:
            raise ConfigError(f"Training Samples has {len(self.weights)} weights; use at most {MAX_WEIGHTS}.")
        check_int(self.every_n_epochs, "every_n_epochs", 1, 1000, fix="1 samples after every epoch.")
        check_bool(self.include_base, "include_base")
        check_int(self.seed, "seed", 0, 0xFFFFFFFFFFFFFFFF)
        check_int(self.steps, "steps", 1, 150)
        check_float(self.cfg, "cfg", 0.0, 100.0)
        check_int(self.images_per_prompt, "images_per_prompt", 1, 8)
        for name in ("width", "height"):
            check_int(getattr(self, name), name, 16, 4096, fix="512 for SD1.5, 1024 for SDXL.")
        return self

    def render_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``host.render_samples`` (the grid's settings)."""
        return {"negative": self.negative, "seed": self.seed, "images_per_prompt": self.images_per_prompt,
                "steps": self.steps, "cfg": self.cfg, "sampler": self.sampler, "scheduler": self.scheduler,
                "width": self.width, "height": self.height}
