"""The validation loss (the sweet-spot finder's numbers) and samples during training, on the tiny model."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer

from style_lora_trainer.dev.synthetic_data import make_style_dataset
from style_lora_trainer.dev.tiny_model import build_tiny_sd15
from style_lora_trainer.headless.diffusers_backend import DiffusersBackend
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.captions import CaptionEdits, apply_edits
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.errors import DatasetError
from style_lora_trainer.style_lora_engine.lora_file import read_lora_metadata
from style_lora_trainer.style_lora_engine.shuffle import ShuffleSettings
from style_lora_trainer.style_lora_engine.trainer import SampleHook, TrainCallbacks, train_lora
from style_lora_trainer.style_lora_engine.validation_loss import ValidationLoss
from style_lora_trainer.style_lora_engine.validation_set import (
    MAX_TRAINING_IMAGES,
    hold_out_count,
    spread,
    validation_timesteps,
    with_folder_validation,
    with_held_out_validation,
)

CONFIG = TrainConfig(rank=4, alpha=2.0, epochs=3, batch_size=2, seed=3)
BUCKETS = BucketSettings(min_size=32, step=32)


class Stop(Exception):
    pass


def _load(folder, **kwargs):
    return load_dataset(folder, repeats=2, resolution=32, buckets=BUCKETS, **kwargs)


@pytest.fixture
def dataset(tmp_path):
    make_style_dataset(tmp_path / "data", count=6, size=32, seed=1)
    return _load(tmp_path / "data").with_shuffle(ShuffleSettings(keep_tokens=1, seed=5))


@pytest.fixture
def model(clip_tokenizer):
    return build_tiny_sd15(clip_tokenizer, seed=0)


def _values(result):
    return [(epoch, loss) for epoch, _, loss in result.validation]


# -- the validation set ------------------------------------------------------------------------------


def test_spread_and_hold_out_counts():
    assert spread(3, 30) == [5, 15, 25]
    assert spread(8, 8) == list(range(8))
    assert hold_out_count(0.1, 30) == 3 and hold_out_count(3, 30) == 3 and hold_out_count(0.01, 30) == 1
    with pytest.raises(DatasetError, match="leaving none to train"):
        hold_out_count(30, 30)
    with pytest.raises(DatasetError, match="neither a fraction"):
        hold_out_count(2.5, 30)
    with pytest.raises(DatasetError, match="hold_out"):
        hold_out_count(float("nan"), 30)
    assert validation_timesteps(1000) == [62, 187, 312, 437, 562, 687, 812, 937]


def test_default_validation_uses_some_training_images_with_their_current_captions(tmp_path):
    make_style_dataset(tmp_path / "big", count=20, size=32, seed=1)
    ds = _load(tmp_path / "big")
    vset = ds.validation_set()
    assert vset.source == "training images" and len(vset.items) == MAX_TRAINING_IMAGES
    assert vset.describe() == "training images (8 of 20)"
    edited = apply_edits(ds, CaptionEdits(prefix="zzstyle"))
    assert all(item.caption.startswith("zzstyle") for item in edited.validation_set().items)


def test_held_out_images_leave_training_and_get_the_caption_edits(dataset):
    held = with_held_out_validation(dataset, 2)
    names = {i.image_path.name for i in held.items}
    val_names = {i.image_path.name for i in held.validation_set().items}
    assert len(held.items) == 4 and len(val_names) == 2 and not names & val_names
    assert held.validation_set().describe() == "held out (2 images, not trained on)"
    edited = apply_edits(held, CaptionEdits(suffix="by nobody"))
    assert all(item.caption.endswith("by nobody") for item in edited.validation_set().items)


def test_folder_validation_refuses_the_dataset_folder_itself(tmp_path, dataset):
    make_style_dataset(tmp_path / "val", count=2, size=32, seed=9)
    ds = with_folder_validation(dataset, _load(tmp_path / "val"))
    assert ds.validation_set().describe() == "folder val (2 images)"
    with pytest.raises(DatasetError, match="dataset folder itself"):
        with_folder_validation(dataset, dataset)


# -- the numbers ---------------------------------------------------------------------------------------


def test_validation_is_deterministic_and_in_every_epoch_file(tmp_path, dataset, model, clip_tokenizer):
    seen = []
    result = train_lora(DiffusersBackend(model), dataset, CONFIG, runs_root=tmp_path / "a", output_name="r",
                        callbacks=TrainCallbacks(on_validation=seen.append))
    again = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), dataset, CONFIG,
                       runs_root=tmp_path / "b", output_name="r")
    assert [e for e, _ in _values(result)] == [0, 1, 2, 3]
    assert _values(result) == _values(again)  # same run, same values, bit for bit
    assert [(v.epoch, v.loss) for v in seen] == _values(result)
    assert result.validation[0][1] == 0 and result.validation[-1][1] == len(result.losses)
    assert result.validation_source == "training images (6 of 6)"
    for epoch, path in result.epoch_files.items():
        meta = read_lora_metadata(path)
        assert float(meta["ss_validation_loss"]) == result.validation_loss(epoch)
        assert float(meta["ss_validation_loss_base"]) == result.validation_loss(0)
        assert json.loads(meta["ss_validation_set"])["timesteps"] == validation_timesteps(1000)
        assert json.loads(meta["ss_validation_set"])["images"] == 6
        assert float(meta["ss_epoch_mean_loss"]) > 0


def test_validation_goes_down_with_training(tmp_path, dataset, model):
    result = train_lora(DiffusersBackend(model), dataset, dataclasses.replace(CONFIG, epochs=4),
                        runs_root=tmp_path, output_name="r")
    base, last = result.validation_loss(0), result.validation_loss(4)
    assert last < 0.9 * base, _values(result)


def test_validation_does_not_depend_on_batch_size_shuffle_or_image_order(tmp_path, dataset, model, clip_tokenizer):
    one = train_lora(DiffusersBackend(model), dataset, dataclasses.replace(CONFIG, epochs=1, batch_size=1),
                     runs_root=tmp_path, output_name="r")
    other = dataset.with_shuffle(ShuffleSettings(keep_tokens=0, seed=77))
    two = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), other,
                     dataclasses.replace(CONFIG, epochs=1, batch_size=3), runs_root=tmp_path, output_name="r")
    # Before training the LoRA is a no-op: the same number whatever the batches and shuffles will be.
    assert one.validation_loss(0) == two.validation_loss(0)
    # Each image's noise follows the image, not its position in the set.
    backend = DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0))
    backend.begin_training(dtype=torch.float32, gradient_checkpointing=False)
    vset = dataset.validation_set()
    forward = ValidationLoss(backend, vset, seed=3).measure(backend.lora_module())
    backwards = ValidationLoss(backend, dataclasses.replace(vset, items=vset.items[::-1]), seed=3)
    assert backwards.measure(backend.lora_module()) == pytest.approx(forward, rel=1e-6)
    backend.end_training()
    assert one.validation_loss(0) == pytest.approx(forward, rel=1e-6)


def test_held_out_images_never_train_but_are_validated(tmp_path, dataset, model):
    held = with_held_out_validation(dataset, 2)
    val_captions = {item.caption for item in held.validation_set().items}
    backend = DiffusersBackend(model)
    original = backend.predict
    trained, validated = [], []

    def spy(latents, noise, timesteps, captions, geometry):
        (trained if torch.is_grad_enabled() else validated).extend(captions)
        return original(latents, noise, timesteps, captions, geometry)

    backend.predict = spy
    train_lora(backend, held, dataclasses.replace(CONFIG, epochs=1, batch_size=1), runs_root=tmp_path,
               output_name="r")
    # Shuffling keeps the first part: a caption's first part tells which image a step trained on.
    first = {c.split(",")[0] for c in val_captions}
    assert trained and not {c.split(",")[0] for c in trained} & first
    assert set(validated) == val_captions


def test_resume_keeps_the_validation_history(tmp_path, dataset, model, clip_tokenizer):
    whole = train_lora(DiffusersBackend(model), dataset, CONFIG, runs_root=tmp_path / "whole", output_name="r")

    def stop_after_one(info):
        if info.epoch == 1:
            raise Stop

    backend = DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0))
    with pytest.raises(Stop):
        train_lora(backend, dataset, CONFIG, runs_root=tmp_path / "split", output_name="r",
                   callbacks=TrainCallbacks(on_epoch=stop_after_one))
    resumed = train_lora(backend, dataset, CONFIG, runs_root=tmp_path / "split", output_name="r")
    assert resumed.resumed_from_epoch == 1
    assert _values(resumed) == _values(whole)


# -- samples during training ---------------------------------------------------------------------------


def _render(model, epoch_path, base=False):
    settings = dict(seed=4, steps=2, cfg=3.0, width=32, height=32)
    if base:
        from style_lora_trainer.headless.diffusers_preview import render_base

        return render_base(model, ["a house"], **settings)
    return model.render_grid_cells([epoch_path], [0.8], ["a house"], **settings)[(epoch_path[0], 0.8)]


def test_samples_during_training_equal_the_saved_files_and_change_nothing(tmp_path, dataset, model, clip_tokenizer):
    plain = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), dataset, CONFIG,
                       runs_root=tmp_path / "plain", output_name="r")
    rendered, peft_layers = {}, []

    def render(epoch, path):
        peft_layers.append(sum(isinstance(m, BaseTunerLayer) for m in model.unet.modules()))
        rendered[epoch] = _render(model, (epoch, path), base=path is None)
        torch.manual_seed(1234)  # a host's seeding must not reach training

    hook = SampleHook(render=render, every_n_epochs=2)
    result = train_lora(DiffusersBackend(model), dataset, CONFIG, runs_root=tmp_path / "sampled", output_name="r",
                        callbacks=TrainCallbacks(sampler=hook))
    assert sorted(rendered) == [0, 2, 3]  # the base, every 2nd epoch and the last
    assert peft_layers == [0, 0, 0]  # the host sampled the U-Net without the training's LoRA layers
    assert result.losses == plain.losses and _values(result) == _values(plain)
    assert result.sampling_seconds > 0 and result.training_seconds > 0
    # After training, the saved files render exactly what was shown while training ran.
    assert not any(isinstance(m, BaseTunerLayer) for m in model.unet.modules())
    for epoch in (2, 3):
        after = _render(model, (epoch, result.epoch_files[epoch]))
        assert [np.asarray(i).tolist() for i in after] == [np.asarray(i).tolist() for i in rendered[epoch]]
    assert np.array_equal(np.asarray(_render(model, None, base=True)[0]), np.asarray(rendered[0][0]))
