"""Node inputs as ComfyUI's /prompt API or a link can send them: past the widgets' min/max and types."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from node_env import node_env

from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS as NODES
from style_lora_trainer.style_lora_engine import config as config_mod
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.errors import ConfigError, DatasetError, StyleLoRAError
from style_lora_trainer.style_lora_engine.trainer import TrainResult

LOAD = NODES["StyleLoRALoadDataset"]
LOAD_ARGS = dict(folder="style", caption_extension=".txt", repeats=2, resolution=32, enable_bucket=True,
                 min_bucket_size=32, max_bucket_size=64, bucket_step=32, bucket_no_upscale=False,
                 skip_unreadable=False)


@pytest.fixture
def env(tmp_path, monkeypatch):
    return node_env(tmp_path, monkeypatch, count=3)


def _load(**kw):
    return LOAD().load(**(LOAD_ARGS | kw))


# --------------------------------------------------------------------------- LoadDataset: IS_CHANGED


def test_is_changed_follows_the_folder_contents(env):
    folder = env / "input" / "style"
    before = LOAD.IS_CHANGED(**LOAD_ARGS)
    assert isinstance(before, str) and LOAD.IS_CHANGED(**LOAD_ARGS) == before
    image = sorted(folder.glob("*.png"))[0]
    caption = image.with_suffix(".txt")
    caption.write_text(caption.read_text(encoding="utf-8") + ", edited", encoding="utf-8")
    edited = LOAD.IS_CHANGED(**LOAD_ARGS)
    assert edited != before
    (folder / "extra.png").write_bytes(image.read_bytes())
    assert LOAD.IS_CHANGED(**LOAD_ARGS) not in (before, edited)
    (folder / "extra.png").unlink()
    assert LOAD.IS_CHANGED(**LOAD_ARGS) == edited
    assert LOAD.IS_CHANGED(**(LOAD_ARGS | {"caption_extension": ".caption"})) != edited


@pytest.mark.parametrize("bad", [{"folder": "missing"}, {"folder": "../outside"}, {"folder": None},
                                 {"folder": 7}, {"caption_extension": "../x"}, {"caption_extension": 7}])
def test_is_changed_never_raises_and_forces_a_rerun_for_a_bad_folder(env, bad):
    value = LOAD.IS_CHANGED(**(LOAD_ARGS | bad))
    assert isinstance(value, float) and math.isnan(value)  # NaN != NaN: ComfyUI runs load(), which reports it


def test_is_changed_accepts_the_inputs_comfyui_passes(env):
    # ComfyUI passes every input, linked ones (clip) as None.
    assert isinstance(LOAD.IS_CHANGED(**LOAD_ARGS, clip=None), str)


# --------------------------------------------------------------------------- LoadDataset: load


@pytest.mark.parametrize(
    ("kw", "named"),
    [({"folder": 7}, "folder"), ({"caption_extension": 7}, "caption_extension"),
     ({"caption_extension": "7"}, "caption_extension"), ({"caption_extension": ".txt\x00"}, "caption_extension"),
     ({"repeats": float("nan")}, "repeats"), ({"resolution": 33}, "resolution"),
     ({"max_bucket_size": 10**9}, "max_bucket_size"), ({"bucket_step": 0}, "bucket_step"),
     ({"min_bucket_size": 31.5}, "min_bucket_size"), ({"enable_bucket": "true"}, "enable_bucket"),
     ({"bucket_no_upscale": None}, "bucket_no_upscale"), ({"skip_unreadable": 1}, "skip_unreadable")],
)
def test_load_refuses_bad_values_naming_the_widget(env, kw, named):
    with pytest.raises(DatasetError, match=named):
        _load(**kw)


def test_load_skips_a_non_utf8_caption_with_a_warning(env, caplog):
    folder = env / "input" / "style"
    bad = sorted(folder.glob("*.txt"))[0]
    bad.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(DatasetError, match=f"{bad.name}.*Re-save it as UTF-8"):
        _load()
    with caplog.at_level(logging.WARNING, logger="style_lora_trainer"):
        dataset, report = _load(skip_unreadable=True)
    assert len(dataset.items) == 2
    assert bad.name in report and "Re-save it as UTF-8" in report
    assert any(bad.name in r.getMessage() and "UTF-8" in r.getMessage() for r in caplog.records)


def test_load_refuses_an_image_linked_from_outside(env):
    outside = env / "secret.png"
    outside.write_bytes(sorted((env / "input" / "style").glob("*.png"))[0].read_bytes())
    os.symlink(outside, env / "input" / "style" / "zz_link.png")
    with pytest.raises(DatasetError, match="zz_link.png: it is a link to .*outside the dataset folder"):
        _load()
    dataset, report = _load(skip_unreadable=True)
    assert len(dataset.items) == 3 and "zz_link.png" in report


# --------------------------------------------------------------------------- CaptionEditor


def _edit(dataset, **kw):
    args = dict(dataset=[dataset], prefix=[""], suffix=[""], find=[""], replace=[""], write_back=[False],
                edits=["{}"]) | kw
    return NODES["StyleLoRACaptionEditor"]().edit(**args)


@pytest.mark.parametrize("widget", ["prefix", "suffix", "find", "replace", "edits"])
def test_caption_editor_refuses_non_text_naming_the_widget(env, widget):
    dataset, _ = _load()
    with pytest.raises(StyleLoRAError, match=f"{widget} must be text"):
        _edit(dataset, **{widget: [7]})


def test_caption_editor_checks_the_caption_extension_before_writing(env):
    dataset, _ = _load()
    bad = dataclasses.replace(dataset, caption_extension="/../x")
    with pytest.raises(DatasetError, match="caption_extension"):
        _edit(bad, prefix=["sks"], write_back=[True])


@pytest.mark.parametrize("value", ["false", 0, None])
def test_caption_editor_write_back_must_be_a_boolean(env, value):
    dataset, _ = _load()
    before = {p.name: p.read_bytes() for p in dataset.folder.glob("*.txt")}
    with pytest.raises(DatasetError, match="write_back"):
        _edit(dataset, prefix=["sks"], write_back=[value])  # "false" is truthy: it used to write
    assert {p.name: p.read_bytes() for p in dataset.folder.glob("*.txt")} == before


# --------------------------------------------------------------------------- ShuffleCaption

SHUFFLE_ARGS = dict(enabled=True, separator=",", keep_tokens=1, seed=0, preview_count=3)


@pytest.mark.parametrize("widget, value", [("enabled", "false"), ("separator", 7), ("separator", None),
                                           ("separator", ""), ("separator", "," * 101), ("keep_tokens", 1.5),
                                           ("keep_tokens", math.nan), ("keep_tokens", 33), ("seed", -1),
                                           ("preview_count", 10**9), ("preview_count", 0)])
def test_shuffle_caption_refuses_values_past_its_widgets_naming_the_widget(env, widget, value):
    dataset, _ = _load()
    with pytest.raises(DatasetError, match=widget):
        NODES["StyleLoRAShuffleCaption"]().configure(dataset, **(SHUFFLE_ARGS | {widget: value}))


def test_shuffle_caption_accepts_its_widget_values(env):
    dataset, _ = _load()
    out = NODES["StyleLoRAShuffleCaption"]().configure(dataset, **SHUFFLE_ARGS)
    assert out["result"][0].shuffle.keep_tokens == 1 and "keep_tokens 1" in out["result"][1]


# --------------------------------------------------------------------------- TrainLoRA


TRAIN_ARGS = dict(model=None, clip=None, vae=None, dataset=None, preset="custom (use the widgets)",
                  output_name="my_style", rank=4, alpha=2.0, optimizer="AdamW", learning_rate=1e-4,
                  lr_scheduler="constant", lr_warmup_steps=0, epochs=2, batch_size=1, seed=0,
                  mixed_precision="auto", gradient_checkpointing=False, cache_latents=True)


@pytest.mark.parametrize(
    ("kw", "named"),
    [({"learning_rate": float("nan")}, "learning_rate"), ({"learning_rate": float("inf")}, "learning_rate"),
     ({"alpha": float("nan")}, "alpha"), ({"alpha": -1.0}, "alpha"), ({"rank": 10**6}, "rank"),
     ({"epochs": 2.5}, "epochs"), ({"batch_size": 0}, "batch_size"), ({"seed": -1}, "seed"),
     ({"lr_warmup_steps": -5}, "lr_warmup_steps"), ({"optimizer": "SGD"}, "optimizer"),
     ({"lr_scheduler": 3}, "lr_scheduler"), ({"mixed_precision": "fp8"}, "mixed_precision"),
     ({"gradient_checkpointing": "no"}, "gradient_checkpointing"), ({"cache_latents": None}, "cache_latents"),
     ({"output_name": "a/b"}, "output_name"), ({"output_name": "???"}, "output_name"),
     ({"output_name": 7}, "output_name"), ({"training_comment": 7}, "training_comment"),
     ({"preset": 7}, "preset")],
)
def test_train_refuses_bad_values_before_training_naming_the_widget(env, kw, named):
    with pytest.raises(ConfigError, match=named):
        NODES["StyleLoRATrain"]().train(**(TRAIN_ARGS | kw))


def test_train_says_when_the_output_name_was_shortened(env, monkeypatch, caplog):
    from style_lora_trainer.nodes import train_lora as train_node

    seen = {}

    def fake_train(backend, dataset, config, *, runs_root, output_name, callbacks, training_comment):
        seen["name"] = output_name
        run_dir = Path(runs_root) / "run"
        run_dir.mkdir(parents=True)
        return TrainResult(run_dir=run_dir, output_name=output_name, arch="sd15", config=config, epoch_files={},
                           losses=[0.5, 0.4], dlrs=[1e-4, 1e-4], epoch_end_steps=[1, 2], steps_per_epoch=1)

    monkeypatch.setattr(train_node, "train_lora", fake_train)
    monkeypatch.setattr(train_node.host, "training_backend", lambda *a: SimpleNamespace(device=torch.device("cpu")))
    monkeypatch.setattr(train_node, "make_plan", lambda *a, **k: SimpleNamespace(to_text=lambda: "plan"))
    with caplog.at_level(logging.WARNING, logger="style_lora_trainer"):
        out = NODES["StyleLoRATrain"]().train(**(TRAIN_ARGS | {"output_name": "s" * 130}))
    assert seen["name"] == "s" * 100
    summary = out["result"][2]
    assert f"saved as '{'s' * 100}' (the name was shortened to 100 characters)" in summary
    assert any("shortened to 100 characters" in r.getMessage() for r in caplog.records)


def test_train_widget_ranges_match_the_engine_checks():
    spec = NODES["StyleLoRATrain"].INPUT_TYPES()["required"]
    ints = {"rank": config_mod.RANK_RANGE, "epochs": config_mod.EPOCHS_RANGE,
            "batch_size": config_mod.BATCH_SIZE_RANGE, "seed": config_mod.SEED_RANGE,
            "lr_warmup_steps": config_mod.LR_WARMUP_STEPS_RANGE}
    for name, (low, high) in ints.items():
        assert (spec[name][1]["min"], spec[name][1]["max"]) == (low, high), name
    assert spec["alpha"][1]["max"] == config_mod.ALPHA_MAX
    assert spec["learning_rate"][1]["max"] == config_mod.LEARNING_RATE_MAX
    TrainConfig(alpha=spec["alpha"][1]["min"], learning_rate=spec["learning_rate"][1]["min"]).validate()


# --------------------------------------------------------------------------- SaveEpochs


@pytest.fixture
def run(env):
    run_dir = env / "output" / "run"
    run_dir.mkdir(parents=True)
    files = {}
    for epoch in (1, 2):
        files[epoch] = run_dir / f"x-{epoch:06d}.safetensors"
        files[epoch].write_bytes(f"epoch {epoch}".encode())
    return TrainResult(run_dir=run_dir, output_name="x", arch="sd15", config=TrainConfig(), epoch_files=files)


def _save(run, **kw):
    args = dict(run=run, name="my_style", save="all", n=1, subfolder="", overwrite=False) | kw
    return NODES["StyleLoRASaveEpochs"]().save(**args)


@pytest.mark.parametrize(
    ("subfolder", "fragment"),
    [("/tmp/x", "absolute path"), ("C:\\loras", "absolute path"), ("../x", "'..'"), ("a/../../x", "'..'"),
     ("a\x00b", "NUL"), ("???", "no usable characters"), (7, "must be text")],
)
def test_save_refuses_a_subfolder_outside_the_loras_folder_naming_the_widget(env, run, subfolder, fragment):
    with pytest.raises(ConfigError, match="^subfolder") as info:
        _save(run, subfolder=subfolder)
    assert fragment in str(info.value)
    assert not (env / "loras").exists() or not any((env / "loras").rglob("*.safetensors"))


@pytest.mark.parametrize("name", ["a/b", "???", "", 7])
def test_save_name_errors_name_the_name_widget(env, run, name):
    with pytest.raises(ConfigError, match="^name"):
        _save(run, name=name)


@pytest.mark.parametrize(("kw", "named"), [({"n": 0}, "n"), ({"n": 2.5}, "n"), ({"n": 10**9}, "n"),
                                            ({"save": "some"}, "save"), ({"overwrite": "yes"}, "overwrite")])
def test_save_refuses_bad_values_naming_the_widget(env, run, kw, named):
    with pytest.raises(ConfigError, match=f"^{named} "):
        _save(run, **kw)


def test_save_says_when_the_name_was_shortened(env, run, caplog):
    with caplog.at_level(logging.WARNING, logger="style_lora_trainer"):
        out = _save(run, name="n" * 120, subfolder="my: styles")
    names = out["result"][1].splitlines()
    assert names == [f"my_ styles/{'n' * 100}-00000{e}.safetensors" for e in (1, 2)]
    text = out["ui"]["text"][0]
    assert f"name: saved as '{'n' * 100}' (the name was shortened to 100 characters)" in text
    assert "subfolder: saved as 'my_ styles'" in text
    assert sum("saved as" in r.getMessage() for r in caplog.records) == 2


def test_save_of_an_ordinary_name_shows_only_the_names(env, run):
    out = _save(run, subfolder="styles")
    assert out["ui"]["text"] == ["styles/my_style-000001.safetensors\nstyles/my_style-000002.safetensors"]


def test_save_removes_what_a_killed_copy_left_in_loras_but_not_a_fresh_or_foreign_temp(env, run):
    loras = env / "loras"
    loras.mkdir()
    killed = loras / ".my_style-000001.safetensors.k1ll3d.tmp"
    fresh = loras / ".my_style-000002.safetensors.wr1t1ng.tmp"  # another process copying right now
    other = loras / ".someone_else.safetensors.zz.tmp"
    for path in (killed, fresh, other):
        path.write_bytes(b"half a lora")
    os.utime(killed, (1, 1))
    os.utime(other, (1, 1))
    _save(run)
    assert not killed.exists()
    assert fresh.exists() and other.exists()
    assert (loras / "my_style-000001.safetensors").read_bytes() == b"epoch 1"
