"""The Train Options node: one widget per TrainOptions field, defaults off, checks on the way in."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS as NODES
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.errors import ConfigError
from style_lora_trainer.style_lora_engine.train_options import TrainOptions

OPTIONS = NODES["StyleLoRATrainOptions"]


def _defaults() -> dict:
    return {name: entry[1]["default"] for name, entry in OPTIONS.INPUT_TYPES()["required"].items()}


def test_one_widget_per_option_with_its_default():
    widgets = OPTIONS.INPUT_TYPES()["required"]
    assert list(widgets) == [f.name for f in dataclasses.fields(TrainOptions)]
    (options,) = OPTIONS().options(**_defaults())
    assert options == TrainOptions() and options.is_default()
    for entry in widgets.values():
        assert any(word in entry[1]["tooltip"] for word in ("kohya", "LyCORIS", "LoCon"))


def test_widget_ranges_are_what_validate_accepts():
    for name, (kind, opts) in OPTIONS.INPUT_TYPES()["required"].items():
        if kind not in ("INT", "FLOAT"):
            continue
        for value in (opts["min"], opts["max"]):
            values = _defaults()
            values[name] = value
            if name == "min_timestep":
                values["max_timestep"] = 1000
            if name == "max_timestep" and value <= values["min_timestep"]:
                continue
            if name == "adaptive_noise_scale":
                values["noise_offset"] = 0.1
            OPTIONS().options(**values)  # raises if a widget offers what the engine refuses


@pytest.mark.parametrize(("changes", "message"), [
    ({"min_timestep": 500, "max_timestep": 400}, "min_timestep"),
    ({"adaptive_noise_scale": 0.01}, "needs a noise_offset"),
    ({"rank_dropout": float("nan")}, "rank_dropout"),
    ({"loss_type": "l3"}, "loss_type"),
    ({"conv_dim": -1}, "conv_dim"),
])
def test_bad_values_are_refused_naming_the_widget(changes, message):
    values = {**_defaults(), **changes}
    with pytest.raises(ConfigError, match=message):
        OPTIONS().options(**values)


def test_train_lora_takes_options_and_default_configs_keep_their_run_folder():
    train = NODES["StyleLoRATrain"]
    assert "options" in train.INPUT_TYPES()["optional"]
    assert inspect.signature(train.train).parameters["options"].default is None
    plain, with_defaults = TrainConfig(), TrainConfig(options=TrainOptions())
    assert "options" not in plain.to_json_dict() and plain.to_json_dict() == with_defaults.to_json_dict()
    changed = TrainConfig(options=TrainOptions(min_snr_gamma=5.0)).to_json_dict()
    assert changed["options"] == {"min_snr_gamma": 5.0}


def test_unknown_option_names_are_an_error():
    with pytest.raises(ConfigError, match="Unknown training option"):
        TrainOptions.from_dict({"min_snr": 5})
