"""kohya's advanced options in the training loop: defaults change nothing, every option trains, the
file carries LoCon / DoRA keys, and a stopped run resumes to the same result with all options on."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from style_lora_trainer.dev.diffusers_backend import DiffusersBackend
from style_lora_trainer.dev.synthetic_data import make_style_dataset
from style_lora_trainer.dev.tiny_model import build_tiny_sd15
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.lora_file import read_lora_metadata
from style_lora_trainer.style_lora_engine.shuffle import ShuffleSettings
from style_lora_trainer.style_lora_engine.train_options import TrainOptions
from style_lora_trainer.style_lora_engine.trainer import TrainCallbacks, train_lora

CONFIG = TrainConfig(rank=4, alpha=2.0, epochs=2, batch_size=2, seed=3)
ALL_ON = TrainOptions(min_snr_gamma=5.0, noise_offset=0.05, adaptive_noise_scale=0.01, multires_noise_iterations=3,
                      min_timestep=100, max_timestep=900, loss_type="huber", conv_dim=4, conv_alpha=1.0,
                      use_dora=True, network_dropout=0.1, rank_dropout=0.1, module_dropout=0.1)


class Stop(Exception):
    pass


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "data"
    make_style_dataset(folder, count=4, size=32, seed=1)
    ds = load_dataset(folder, repeats=2, resolution=32, buckets=BucketSettings(min_size=32, step=32))
    return ds.with_shuffle(ShuffleSettings(keep_tokens=1, seed=5))


def _unet_output(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample


def test_with_options_off_each_step_is_the_plain_mse_on_the_plain_draws(tmp_path, dataset, clip_tokenizer):
    """What every run did before the options existed: noise = randn, then t = randint(0, 1000), from one
    generator seeded with the run's seed, and loss = MSE(pred, target)."""
    backend = DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0))
    seen = []
    original = backend.predict

    def spy(latents, noise, timesteps, captions, geometry):
        pred, target = original(latents, noise, timesteps, captions, geometry)
        seen.append((latents.shape, noise, timesteps, F.mse_loss(pred.float(), target.float()).item()))
        return pred, target

    backend.predict = spy
    result = train_lora(backend, dataset, CONFIG, runs_root=tmp_path, output_name="r")
    generator = torch.Generator().manual_seed(CONFIG.seed)
    assert len(seen) == len(result.losses) == 8
    for (shape, noise, timesteps, mse), loss in zip(seen, result.losses, strict=True):
        assert torch.equal(noise, torch.randn(shape, generator=generator))
        assert torch.equal(timesteps, torch.randint(0, 1000, (shape[0],), generator=generator))
        assert loss == mse
    default = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), dataset,
                         dataclasses.replace(CONFIG, options=TrainOptions()), runs_root=tmp_path, output_name="r")
    assert default.run_dir == result.run_dir  # the same run: nothing to train again


def test_all_options_train_write_locon_and_dora_keys_and_leave_the_model_unchanged(tmp_path, dataset,
                                                                                  clip_tokenizer):
    model = build_tiny_sd15(clip_tokenizer, seed=0)
    before = _unet_output(model.unet)
    config = dataclasses.replace(CONFIG, options=ALL_ON)
    result = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path, output_name="r")
    assert all(torch.isfinite(torch.tensor(result.losses)))
    tensors = load_file(str(result.epoch_files[2]))
    conv_downs = [k for k in tensors if "resnets" in k and k.endswith("conv1.lora_down.weight")]
    assert conv_downs and all(tensors[k].shape[0] == 4 and tensors[k].ndim == 4 for k in conv_downs)
    scales = [k for k in tensors if k.endswith(".dora_scale")]
    assert scales and all(tensors[k].shape[0] == 1 for k in scales)  # input-axis, as ComfyUI applies it
    meta = read_lora_metadata(result.epoch_files[2])
    assert meta["ss_min_snr_gamma"] == "5.0" and meta["ss_loss_type"] == "huber"
    assert torch.equal(_unet_output(model.unet), before)  # LoRA, DoRA and dropout hooks all removed
    assert not any("lora" in n or "dora" in n for n, _ in model.unet.named_parameters())


def test_a_stopped_run_with_every_option_resumes_to_the_same_result(tmp_path, dataset, clip_tokenizer):
    config = dataclasses.replace(CONFIG, options=ALL_ON)
    reference = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), dataset, config,
                           runs_root=tmp_path / "a", output_name="r")

    def stop_in_epoch_two(info):
        if info.epoch == 2 and info.step_in_epoch == 2:
            raise Stop()

    model = build_tiny_sd15(clip_tokenizer, seed=0)
    with pytest.raises(Stop):
        train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path / "b", output_name="r",
                   callbacks=TrainCallbacks(on_step=stop_in_epoch_two))
    resumed = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path / "b", output_name="r")
    assert resumed.resumed_from_epoch == 1
    assert resumed.losses == pytest.approx(reference.losses, abs=0)
    a, b = load_file(str(reference.epoch_files[2])), load_file(str(resumed.epoch_files[2]))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_options_change_the_training(tmp_path, dataset, clip_tokenizer):
    plain = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), dataset, CONFIG,
                       runs_root=tmp_path, output_name="r")
    snr = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), dataset,
                     dataclasses.replace(CONFIG, options=TrainOptions(min_snr_gamma=1.0)),
                     runs_root=tmp_path, output_name="r")
    assert snr.run_dir != plain.run_dir
    assert snr.losses != plain.losses
