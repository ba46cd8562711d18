"""Pick Epoch: the rule, ties, the table/epochs/lora_name inputs, and the LoRA applied as LoraLoader does."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from comfy_fakes import comfy_objects
from epoch_fixtures import LOSSES, OwnHostModel, loras_folder, write_epochs

from style_lora_trainer.integration import comfy_modules, host
from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
from style_lora_trainer.style_lora_engine.epoch_stats import build_table
from style_lora_trainer.style_lora_engine.errors import ConfigError

PICK = NODE_CLASS_MAPPINGS["StyleLoRAPickEpoch"]


@pytest.fixture
def loras(tmp_path, monkeypatch) -> Path:
    return loras_folder(tmp_path, monkeypatch)


@pytest.fixture
def lora_loader(monkeypatch):
    """ComfyUI's ``nodes`` module stood in for by a recording LoraLoader (as test_comfy_preview does)."""
    calls: list[tuple] = []

    class LoraLoader:
        def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
            calls.append((model, clip, lora_name, strength_model, strength_clip))
            return SimpleNamespace(base=model, lora=lora_name), SimpleNamespace(base=clip, lora=lora_name)

    modules = {"nodes": SimpleNamespace(LoraLoader=LoraLoader)}
    monkeypatch.setattr(comfy_modules, "comfy_module", lambda name: modules.get(name))
    return calls


def table_text(epoch_set) -> str:
    files = [(f.epoch, f.path, f.lora_name) for f in epoch_set.files]
    return json.dumps(build_table(epoch_set.output_name, files, [0.8, 1.0]))


def pick(**kw):
    args = dict(rule="lowest validation loss", epoch=1, weight=1.0)
    args.update(kw)
    return PICK().pick(**args)


def test_registered_with_the_documented_sockets():
    assert NODE_DISPLAY_NAME_MAPPINGS["StyleLoRAPickEpoch"] == "Pick Epoch (Style LoRA)"
    spec = PICK.INPUT_TYPES()
    assert list(spec["required"]) == ["rule", "epoch", "weight"]
    assert spec["required"]["rule"][0] == ["lowest validation loss", "chosen cell"]
    epoch = spec["required"]["epoch"][1]
    assert (epoch["default"], epoch["min"], epoch["max"]) == (1, 1, 1000)
    weight = spec["required"]["weight"][1]
    assert (weight["default"], weight["min"], weight["max"], weight["step"]) == (1.0, 0.0, 2.0, 0.05)
    assert list(spec["optional"]) == ["table", "epochs", "lora_name", "model", "clip"]
    assert spec["optional"]["table"][0] == "STRING" and spec["optional"]["table"][1]["forceInput"] is True
    assert PICK.RETURN_TYPES == ("MODEL", "CLIP", "STRING", "FLOAT", "STRING")
    assert PICK.RETURN_NAMES == ("model", "clip", "lora_name", "strength", "info")


def test_lowest_validation_loss_from_the_table_ties_to_the_later_epoch(loras):
    epochs = write_epochs(loras, "my_style", LOSSES, subfolder="sub")
    out = pick(table=table_text(epochs), epoch=1, weight=0.9)
    model, clip, name, strength, info = out["result"]
    assert (model, clip) == (None, None)  # nothing connected: nothing applied
    assert name == "sub/my_style-000004.safetensors" and strength == 0.9
    assert out["ui"]["text"] == [info]
    assert "epoch 4" in info and "lowest validation loss" in info and "0.1200" in info
    assert "training images (8 images)" in info and "looks right at weight 1.0" in info
    assert "not how the style looks" in info and "overtrained" in info  # weight 0.9 is not 1.0


def test_chosen_cell_uses_epoch_and_weight(loras):
    epochs = write_epochs(loras, "my_style", LOSSES)
    _, _, name, strength, info = pick(rule="chosen cell", epoch=3, weight=0.8, table=table_text(epochs))["result"]
    assert name == "my_style-000003.safetensors" and strength == 0.8
    assert "chosen cell" in info
    with pytest.raises(ConfigError, match=r"Epoch 9 is not among the epochs \[1, 2, 3, 4, 5\]"):
        pick(rule="chosen cell", epoch=9, table=table_text(epochs))


def test_epochs_input_and_lora_name_input(loras):
    epochs = write_epochs(loras, "my_style", LOSSES, subfolder="styles")
    assert pick(epochs=epochs)["result"][2] == "styles/my_style-000004.safetensors"
    assert pick(lora_name="styles/my_style")["result"][2] == "styles/my_style-000004.safetensors"
    assert pick(lora_name="styles/my_style", rule="chosen cell", epoch=2)["result"][2] == \
        "styles/my_style-000002.safetensors"
    # the table wins over the other inputs (it is what the grid showed)
    only_1_and_5 = json.dumps(build_table("my_style", [(f.epoch, f.path, f.lora_name) for f in epochs.files
                                                       if f.epoch in (1, 5)], [1.0]))
    assert pick(table=only_1_and_5, epochs=epochs)["result"][2] == "styles/my_style-000001.safetensors"
    # an empty table string (a link from nothing) falls back to the other inputs
    assert pick(table="  ", epochs=epochs)["result"][2] == "styles/my_style-000004.safetensors"
    with pytest.raises(ConfigError, match="needs epochs to pick from"):
        pick()


def test_old_files_without_validation_numbers(loras):
    epochs = write_epochs(loras, "old", {1: None, 2: None})
    with pytest.raises(ConfigError, match="Train with this version.*'chosen cell'"):
        pick(epochs=epochs)
    assert pick(epochs=epochs, rule="chosen cell", epoch=2)["result"][2] == "old-000002.safetensors"


@pytest.mark.parametrize("bad", ["not json", "[1, 2]", '{"rows": 3}', '{"rows": [{"epoch": "3"}]}',
                                 '{"rows": [{"epoch": 1, "lora_name": "a", "validation_loss": "low"}]}'])
def test_bad_table_json_is_a_clear_error(bad):
    with pytest.raises(ConfigError, match="table input.*Epoch × Weight Grid"):
        pick(table=bad)


def test_comfy_model_goes_through_lora_loader(loras, lora_loader):
    epochs = write_epochs(loras, "my_style", LOSSES, subfolder="sub")
    model, clip, _ = comfy_objects()
    out_model, out_clip, name, strength, info = pick(table=table_text(epochs), weight=0.85, model=model,
                                                     clip=clip)["result"]
    assert lora_loader == [(model, clip, "sub/my_style-000004.safetensors", 0.85, 0.85)]
    assert out_model.base is model and out_clip.base is clip and out_model.lora == name
    assert strength == 0.85 and "Applied" in info


def test_own_host_model_applies_the_file_and_others_are_refused(loras):
    epochs = write_epochs(loras, "my_style", LOSSES, subfolder="sub")
    model = OwnHostModel()
    out_model, out_clip, *_ = pick(table=table_text(epochs), rule="chosen cell", epoch=2, weight=0.6,
                                   model=model, clip=model)["result"]
    assert [(p.resolve(), w) for p, w in model.applied] == [(epochs.files[1].path.resolve(), 0.6)]
    assert out_model == ("model with", "my_style-000002.safetensors", 0.6) and out_clip[0] == "clip with"
    with pytest.raises(ConfigError, match="Cannot apply a LoRA to a object"):
        pick(table=table_text(epochs), model=object(), clip=object())


def test_host_apply_lora_needs_the_file_for_an_own_host():
    with pytest.raises(ConfigError, match="Cannot find the LoRA file 'x.safetensors'"):
        host.apply_lora(OwnHostModel(), None, "x.safetensors", None, 1.0)
