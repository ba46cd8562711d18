"""TrainConfig.validate(): every field checked for type, range and finiteness, the message naming it."""

from __future__ import annotations

import dataclasses
import math

import pytest

from style_lora_trainer.style_lora_engine.config import (
    PRESETS,
    TrainConfig,
    apply_preset,
    check_float,
    check_int,
)
from style_lora_trainer.style_lora_engine.errors import ConfigError

NAN, INF = float("nan"), float("inf")


def test_defaults_and_presets_are_valid() -> None:
    assert TrainConfig().validate() == TrainConfig()
    for name in PRESETS:
        apply_preset(TrainConfig(), name).validate()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("learning_rate", NAN), ("learning_rate", INF), ("learning_rate", -INF), ("learning_rate", 0.0),
        ("learning_rate", -1e-4), ("learning_rate", 11.0), ("learning_rate", "1.0"), ("learning_rate", True),
        ("alpha", NAN), ("alpha", INF), ("alpha", 0.0), ("alpha", -16.0), ("alpha", 1e6), ("alpha", None),
        ("weight_decay", NAN), ("weight_decay", -0.01), ("weight_decay", INF), ("weight_decay", 2.0),
        ("max_grad_norm", NAN), ("max_grad_norm", INF), ("max_grad_norm", -1.0),
        ("rank", 0), ("rank", 257), ("rank", 32.0), ("rank", 2.5), ("rank", True), ("rank", "32"), ("rank", NAN),
        ("epochs", 0), ("epochs", 1001), ("epochs", 20.5), ("epochs", INF),
        ("batch_size", 0), ("batch_size", 65), ("batch_size", False),
        ("lr_warmup_steps", -1), ("lr_warmup_steps", 100_001), ("lr_warmup_steps", NAN),
        ("seed", -1), ("seed", 2**32), ("seed", 1.5),
        ("optimizer", "SGD"), ("optimizer", ["AdamW"]), ("optimizer", None),
        ("lr_scheduler", "step"), ("lr_scheduler", 1),
        ("mixed_precision", "fp8"), ("save_precision", "int8"),
        ("gradient_checkpointing", "false"), ("gradient_checkpointing", 1), ("cache_latents", None),
        ("optimizer_args", []), ("optimizer_args", {1: 2}), ("optimizer_args", {"betas": [0.9, NAN]}),
        ("optimizer_args", {"eps": INF}), ("optimizer_args", {"x": object()}),
    ],
)
def test_every_field_is_checked_naming_it(field: str, value) -> None:
    config = dataclasses.replace(TrainConfig(), **{field: value})
    with pytest.raises(ConfigError, match=field):
        config.validate()


def test_messages_say_what_to_enter() -> None:
    with pytest.raises(ConfigError) as info:
        TrainConfig(learning_rate=NAN).validate()
    text = str(info.value)
    assert text.startswith("learning_rate must be a finite number above 0") and "nan" in text
    assert "1.0 for DAdaptAdamW" in text
    with pytest.raises(ConfigError, match=r"rank must be a whole number from 1 to 256, got 0\. The guide"):
        TrainConfig(rank=0).validate()


def test_boundaries_are_accepted() -> None:
    TrainConfig(rank=1, alpha=0.01, learning_rate=1e-7, epochs=1, batch_size=1, seed=0).validate()
    TrainConfig(rank=256, alpha=256.0, learning_rate=10.0, epochs=1000, batch_size=64, seed=2**32 - 1,
                lr_warmup_steps=100_000, weight_decay=0.0, max_grad_norm=0.0).validate()
    TrainConfig(alpha=16, optimizer_args={"betas": [0.9, 0.99], "decouple": True}).validate()  # an int alpha


def test_check_helpers() -> None:
    assert check_int(3, "n", 1, 5) == 3
    assert check_float(2, "x", 0, 5, low_open=True) == 2.0
    assert check_float(0.0, "x", 0, math.inf) == 0.0
    with pytest.raises(ConfigError, match="x must be a finite number above 0, got 0"):
        check_float(0, "x", 0, math.inf, low_open=True)


def test_an_unknown_preset_is_named() -> None:
    with pytest.raises(ConfigError, match="Unknown preset"):
        apply_preset(TrainConfig(), ["SD1.5"])  # type: ignore[arg-type]
