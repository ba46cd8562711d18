"""The training loop on a tiny random-weight model: files, metadata, resume, stop, model restored."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from style_lora_trainer.dev.synthetic_data import make_style_dataset
from style_lora_trainer.dev.tiny_model import build_tiny_sd15, build_tiny_sdxl
from style_lora_trainer.headless.diffusers_backend import DiffusersBackend
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError, TrainingStopped
from style_lora_trainer.style_lora_engine.lora_file import read_lora_metadata
from style_lora_trainer.style_lora_engine.shuffle import ShuffleSettings
from style_lora_trainer.style_lora_engine.train_options import TrainOptions
from style_lora_trainer.style_lora_engine.trainer import (
    ADAPTER,
    TrainCallbacks,
    plan_epoch,
    steps_per_epoch,
    train_lora,
)

CONFIG = TrainConfig(rank=4, alpha=2.0, epochs=2, batch_size=2, seed=3)
# kohya's advanced options, all on (each formula is tested in test_noise / test_loss_functions / test_dora ...)
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


@pytest.fixture
def model(clip_tokenizer):
    return build_tiny_sd15(clip_tokenizer, seed=0)


def _unet_output(unet):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=g)
    ctx = torch.randn(1, 77, 32, generator=g)
    with torch.no_grad():
        return unet(x, torch.tensor([500]), encoder_hidden_states=ctx).sample


def test_plan_epoch_repeats_each_image_and_is_reproducible(dataset):
    batches = plan_epoch(dataset, 3, seed=1, epoch=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == sorted(list(range(4)) * 2)
    assert len(batches) == steps_per_epoch(dataset, 3) == 3
    assert batches == plan_epoch(dataset, 3, seed=1, epoch=1)
    assert any(plan_epoch(dataset, 1, seed=1, epoch=e) != plan_epoch(dataset, 1, seed=1, epoch=1) for e in (2, 3, 4))


def test_every_epoch_is_a_kohya_file_and_the_model_is_restored(tmp_path, dataset, model):
    before = _unet_output(model.unet)
    modules_before = {n: type(m) for n, m in model.unet.named_modules()}
    seen_captions = []
    backend = DiffusersBackend(model)
    original_predict = backend.predict

    def spy(latents, noise, timesteps, captions, geometry):
        seen_captions.append(list(captions))
        return original_predict(latents, noise, timesteps, captions, geometry)

    backend.predict = spy
    steps = []
    result = train_lora(backend, dataset, CONFIG, runs_root=tmp_path / "runs", output_name="demo",
                        callbacks=TrainCallbacks(on_step=steps.append))

    assert sorted(result.epoch_files) == [1, 2]
    assert [p.name for _, p in sorted(result.epoch_files.items())] == ["demo-000001.safetensors",
                                                                        "demo-000002.safetensors"]
    assert len(result.losses) == len(steps) == 2 * steps_per_epoch(dataset, 2) == 8
    assert result.epoch_end_steps == [4, 8]
    assert steps[-1].epoch == 2 and steps[-1].global_step == 8 and steps[-1].total_steps == 8
    assert all(s.dlr > 0 for s in steps)
    assert not [p for p in result.run_dir.iterdir() if ".tmp" in p.name]

    tensors = load_file(str(result.epoch_files[2]))
    assert all(k.startswith("lora_unet_") for k in tensors)
    alphas = {k: v for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas and all(float(v) == 2.0 for v in alphas.values())
    downs = [v for k, v in tensors.items() if k.endswith("lora_down.weight")]
    assert all(v.shape[0] == 4 and v.dtype == torch.float16 for v in downs)
    assert any(float(v.abs().sum()) > 0 for k, v in tensors.items() if k.endswith("lora_up.weight"))
    with safe_open(str(result.epoch_files[2]), "pt") as f:
        meta = f.metadata()
    assert meta["ss_epoch"] == "2" and meta["ss_num_epochs"] == "2" and meta["ss_steps"] == "8"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert meta["ss_shuffle_caption"] == "True" and meta["ss_keep_tokens"] == "1"
    assert meta["ss_num_train_images"] == "8"

    # Shuffling happened per step, with the first part fixed.
    first = dataset.items[0].caption
    variants = {c for batch in seen_captions for c in batch if c.split(",")[0] == first.split(",")[0]}
    assert len(variants) > 1
    assert all(v.split(",")[0] == first.split(",")[0] for v in variants)

    # The user's model is exactly as before: same modules, same output, nothing left trainable.
    assert {n: type(m) for n, m in model.unet.named_modules()} == modules_before
    assert torch.equal(_unet_output(model.unet), before)


@pytest.mark.parametrize("options", [TrainOptions(), ALL_ON], ids=["default", "every_option"])
def test_stop_keeps_finished_epochs_and_rerun_resumes_to_the_same_result(tmp_path, dataset, clip_tokenizer,
                                                                          options):
    config = dataclasses.replace(CONFIG, options=options)  # every option: DoRA state and dropout draws resume too
    reference = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), dataset, config,
                           runs_root=tmp_path / "a", output_name="r")

    def stop_in_epoch_two(info):
        if info.epoch == 2 and info.step_in_epoch == 2:
            raise Stop()

    model = build_tiny_sd15(clip_tokenizer, seed=0)
    with pytest.raises(Stop):
        train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path / "b", output_name="r",
                   callbacks=TrainCallbacks(on_step=stop_in_epoch_two))
    run_dirs = list((tmp_path / "b").iterdir())
    assert len(run_dirs) == 1
    assert sorted(p.name for p in run_dirs[0].glob("*.safetensors") if p.name.startswith("r-")) == [
        "r-000001.safetensors"]
    # What a kill in the middle of writing epoch 2 leaves (no cleanup runs): the re-run removes it.
    stale = run_dirs[0] / ".r-000002.safetensors.x1y2z3.tmp"
    stale.write_bytes(b"half a file")
    epoch_one = (run_dirs[0] / "r-000001.safetensors").read_bytes()

    resumed = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path / "b", output_name="r")
    assert resumed.resumed_from_epoch == 1
    assert not stale.exists()
    assert (run_dirs[0] / "r-000001.safetensors").read_bytes() == epoch_one  # finished epochs untouched
    assert len(resumed.losses) == len(reference.losses)
    assert resumed.losses == pytest.approx(reference.losses, abs=0)
    for epoch in (1, 2):
        a = load_file(str(reference.epoch_files[epoch]))
        b = load_file(str(resumed.epoch_files[epoch]))
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), f"epoch {epoch} differs after resume"

    # A finished run is not trained again.
    again = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path / "b", output_name="r")
    assert again.resumed_from_epoch == 2 and sorted(again.epoch_files) == [1, 2]


def test_changed_settings_start_a_new_run(tmp_path, dataset, model):
    a = train_lora(DiffusersBackend(model), dataset, dataclasses.replace(CONFIG, epochs=1),
                   runs_root=tmp_path, output_name="r")
    b = train_lora(DiffusersBackend(model), dataset, dataclasses.replace(CONFIG, epochs=1, rank=2),
                   runs_root=tmp_path, output_name="r")
    assert a.run_dir != b.run_dir and b.resumed_from_epoch == 0


def test_non_finite_loss_stops_with_advice_and_keeps_finished_epochs(tmp_path, dataset, model):
    backend = DiffusersBackend(model)
    original = backend.predict
    calls = []

    def nan_in_epoch_two(*args):
        if torch.is_grad_enabled():  # training steps only, not the validation loss's passes
            calls.append(1)
        pred, target = original(*args)
        return (pred * float("nan") if len(calls) == 6 else pred), target

    backend.predict = nan_in_epoch_two
    before = _unet_output(model.unet)
    with pytest.raises(TrainingStopped, match="epoch 2") as err:
        train_lora(backend, dataset, CONFIG, runs_root=tmp_path, output_name="r")
    assert "warmup" in str(err.value)
    files = sorted(p.name for p in next(tmp_path.iterdir()).glob("r-*.safetensors"))
    assert files == ["r-000001.safetensors"]
    assert torch.equal(_unet_output(model.unet), before)


def test_latent_caching_does_not_change_the_result(tmp_path, dataset, model):
    cached = train_lora(DiffusersBackend(model), dataset, dataclasses.replace(CONFIG, epochs=1),
                        runs_root=tmp_path, output_name="c")
    live = train_lora(DiffusersBackend(model), dataset, dataclasses.replace(CONFIG, epochs=1, cache_latents=False),
                      runs_root=tmp_path, output_name="c")
    assert live.losses == pytest.approx(cached.losses, rel=1e-4)


def test_gradient_checkpointing_gives_the_same_losses(tmp_path, dataset, model):
    plain = train_lora(DiffusersBackend(model), dataset, dataclasses.replace(CONFIG, epochs=1),
                       runs_root=tmp_path, output_name="g")
    ckpt = train_lora(DiffusersBackend(model), dataset,
                      dataclasses.replace(CONFIG, epochs=1, gradient_checkpointing=True),
                      runs_root=tmp_path, output_name="g")
    assert ckpt.losses == pytest.approx(plain.losses, rel=1e-5)
    assert not model.unet.is_gradient_checkpointing  # restored


def test_sdxl_trains_with_pooled_and_size_conditioning_and_ldm_key_names(tmp_path, dataset, clip_tokenizer):
    model = build_tiny_sdxl(clip_tokenizer, seed=0)
    backend = DiffusersBackend(model)
    context, pooled = backend.encode_text(["a caption", "another caption"])
    assert pooled is not None and pooled.shape[0] == 2
    assert context.shape[-1] == model.unet.config.cross_attention_dim
    result = train_lora(backend, dataset, dataclasses.replace(CONFIG, epochs=1), runs_root=tmp_path,
                        output_name="xl")
    keys = load_file(str(result.epoch_files[1])).keys()
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)
    assert any(k.startswith("lora_unet_output_blocks_") for k in keys)
    assert not any("down_blocks" in k or "up_blocks" in k for k in keys)
    with safe_open(str(result.epoch_files[1]), "pt") as f:
        assert f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"


def test_long_captions_are_encoded_in_chunks_not_cut(model):
    backend = DiffusersBackend(model)
    short, _ = backend.encode_text(["a red circle"])
    long_caption = ", ".join(f"detail number {i} in orange" for i in range(30))  # > 75 tokens
    long, _ = backend.encode_text([long_caption, "a red circle"])
    assert short.shape[1] == 77
    assert long.shape[1] in (154, 231)
    # The short caption in a batch with a long one keeps its own first window.
    assert torch.allclose(long[1, :77], short[0], atol=1e-5)


def test_out_of_memory_names_the_settings_to_change_in_order_with_what_each_saves(tmp_path, dataset, model):
    backend = DiffusersBackend(model)
    original = backend.predict
    calls = []

    def out_of_memory_in_epoch_two(*args):
        if torch.is_grad_enabled():  # training steps only, not the validation loss's passes
            calls.append(1)
        if len(calls) == 6:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return original(*args)

    backend.predict = out_of_memory_in_epoch_two
    before = _unet_output(model.unet)
    with pytest.raises(StyleLoRAError, match="Out of memory") as err:
        train_lora(backend, dataset, CONFIG, runs_root=tmp_path, output_name="r")
    text = str(err.value)
    order = ["gradient checkpointing", "mixed precision bf16", "batch size 1", "a lower resolution", "a lower rank"]
    positions = [text.index(item) for item in order]
    assert positions == sorted(positions), text
    # exact figures for this model: the frozen fp32 U-Net in bf16 saves half its bytes; halving the rank
    # saves half of LoRA weights + gradients + AdamW-style optimizer state
    frozen = sum(p.numel() * 2 for p in model.unet.parameters())
    assert frozen > 2**20  # a figure in MiB that means something
    assert f"saves {frozen / 2**20:.0f} MiB on this model" in text
    assert "rank 4 → 2 saves" in text
    files = sorted(p.name for p in next(tmp_path.iterdir()).glob("r-*.safetensors"))
    assert files == ["r-000001.safetensors"]  # the finished epoch is kept
    assert torch.equal(_unet_output(model.unet), before)


def test_bf16_lora_layers_take_their_input_as_autocast_gives_it_and_follow_the_fp32_losses(tmp_path, dataset, model,
                                                                                            monkeypatch):
    from peft.tuners.tuners_utils import BaseTunerLayer

    inputs: dict[int, set] = {}
    wrappers: list = []

    def record(module, args):
        if args and isinstance(args[0], torch.Tensor):
            inputs.setdefault(id(module), set()).add(args[0].dtype)
        if isinstance(module, BaseTunerLayer):
            wrappers.append(module)

    config = dataclasses.replace(CONFIG, epochs=1)
    fp32 = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path, output_name="p")
    weights = {name: p.detach().clone() for name, p in model.unet.named_parameters()}
    dtypes_in_training: set = set()
    original_predict = DiffusersBackend.predict

    def predict(self, *args, **kwargs):
        dtypes_in_training.update(p.dtype for p in self.model.unet.parameters() if not p.requires_grad)
        return original_predict(self, *args, **kwargs)

    monkeypatch.setattr(DiffusersBackend, "predict", predict)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        bf16 = train_lora(DiffusersBackend(model), dataset, dataclasses.replace(config, mixed_precision="bf16"),
                          runs_root=tmp_path, output_name="p")
    finally:
        hook.remove()
    # the frozen U-Net trained from its bf16 copy (as the ComfyUI backend and kohya), and its fp32 weights came
    # back bit for bit
    assert dtypes_in_training == {torch.bfloat16}
    assert all(torch.equal(p, weights[name]) and p.dtype == torch.float32 for name, p in model.unet.named_parameters())
    # each LoRA layer's A gets the very input of the layer it wraps (autocast casts for the matmul), not
    # an fp32 copy made by peft; the LoRA weights stay fp32
    assert wrappers and torch.bfloat16 in set().union(*(inputs[id(w)] for w in wrappers))
    for wrapper in dict.fromkeys(wrappers):
        lora_a = wrapper.lora_A[ADAPTER]
        assert inputs[id(lora_a)] == inputs[id(wrapper)] and lora_a.weight.dtype == torch.float32
    mean = sum(fp32.losses) / len(fp32.losses)
    assert abs(sum(bf16.losses) / len(bf16.losses) - mean) < 0.1 * mean
    assert bf16.losses != fp32.losses


# kohya's advanced options in the loop


def test_with_options_off_each_step_is_the_plain_mse_on_the_plain_draws(tmp_path, dataset, clip_tokenizer):
    """What every run did before the options existed: noise = randn, then t = randint(0, 1000), from one
    generator seeded with the run's seed, and loss = MSE(pred, target)."""
    backend = DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0))
    seen = []
    original = backend.predict

    def spy(latents, noise, timesteps, captions, geometry):
        pred, target = original(latents, noise, timesteps, captions, geometry)
        if torch.is_grad_enabled():  # a training step, not the validation loss
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


def test_options_change_the_training(tmp_path, dataset, clip_tokenizer):
    plain = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), dataset, CONFIG,
                       runs_root=tmp_path, output_name="r")
    snr = train_lora(DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0)), dataset,
                     dataclasses.replace(CONFIG, options=TrainOptions(min_snr_gamma=1.0)),
                     runs_root=tmp_path, output_name="r")
    assert snr.run_dir != plain.run_dir
    assert snr.losses != plain.losses
