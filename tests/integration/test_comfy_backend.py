"""The ComfyUI training backend (integration/comfy_backend.py) on stand-ins for ComfyUI's objects (CI has no
ComfyUI; tests/e2e runs the same code against the real ones)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from comfy_fakes import comfy_objects, fake_attention_module, fake_model_management, model_sampling
from PIL import Image
from safetensors.torch import load_file

from style_lora_trainer.integration import comfy_modules, host
from style_lora_trainer.integration.comfy_backend import (
    ComfyBackend,
    _builds_weight_per_call,
    detect_arch,
    make_autograd_usable,
    noisy_input_and_target,
    pad_to_common_length,
    parameterisation,
)
from style_lora_trainer.integration.text_encoder_precision import TextEncoderInComputeDtype, text_encoders
from style_lora_trainer.style_lora_engine.backend import SampleGeometry
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.errors import ConfigError, StyleLoRAError
from style_lora_trainer.style_lora_engine.lora_file import read_lora_metadata
from style_lora_trainer.style_lora_engine.trainer import train_lora


@pytest.fixture
def mm(monkeypatch):
    fake = fake_model_management()
    real = comfy_modules.comfy_module
    monkeypatch.setattr(comfy_modules, "comfy_module",
                        lambda name: fake if name == "comfy.model_management" else real(name))
    return fake


def _dataset(tmp_path, count=3, size=32):
    folder = tmp_path / "ds"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"i{i}.png")
        (folder / f"i{i}.txt").write_text(f"style, thing {i}" + ", detail" * (4 * i), "utf-8")
    return load_dataset(folder, repeats=1, resolution=size,
                        buckets=BucketSettings(min_size=size, max_size=size, step=size))


def test_host_trains_comfy_objects_with_the_comfy_backend():
    model, clip, vae = comfy_objects()
    backend = host.training_backend(model, clip, vae)
    assert isinstance(backend, ComfyBackend)
    assert (backend.arch, backend.naming, backend.layers_per_block) == ("sd15", "ldm", 1)
    assert backend.prediction_type == "epsilon"
    assert backend.model_name == "my_model.safetensors"
    with pytest.raises(ConfigError, match="Load Checkpoint"):
        host.training_backend(object(), clip, vae)
    with pytest.raises(ConfigError, match="CLIP and VAE"):
        ComfyBackend(model, None, vae)


def test_model_identity_tracks_weights_and_upstream_patches():
    model, clip, vae = comfy_objects(seed=0)
    first = ComfyBackend(model, clip, vae).model_identity
    assert ComfyBackend(model, clip, vae).model_identity == first  # stable
    other, _, _ = comfy_objects(seed=1)
    assert ComfyBackend(other, clip, vae).model_identity != first
    patched = model.clone()
    patched.add_patches({"diffusion_model.out.2.weight": torch.ones(1)}, 0.8)
    assert ComfyBackend(patched, clip, vae).model_identity != first
    # a currently applied patch does not change the identity: the original weight is in the backup
    name = "diffusion_model.input_blocks.0.0.weight"
    weight = model.model.diffusion_model.input_blocks[0][0].weight
    model.backup[name] = type("Backup", (), {"weight": weight.detach().clone()})()
    with torch.no_grad():
        weight.add_(1.0)
    assert ComfyBackend(model, clip, vae).model_identity == first


def test_arch_and_parameterisation_detection():
    model, _, _ = comfy_objects("sdxl", "v")
    assert detect_arch(model.model) == "sdxl"
    assert parameterisation(model.model.model_sampling) == "v"
    with pytest.raises(ConfigError, match="SD1.5 or SDXL"):
        detect_arch(comfy_objects("sd20")[0].model)
    inpaint = comfy_objects()[0].model
    inpaint.concat_keys = ("mask", "masked_image")
    with pytest.raises(ConfigError, match="inpainting"):
        detect_arch(inpaint)
    with pytest.raises(ConfigError):
        parameterisation(model_sampling("x0"))
    with pytest.raises(ConfigError):
        parameterisation(object())


@pytest.mark.parametrize("kind", ["eps", "v"])
def test_noise_and_target_equal_ddpm_training(kind):
    """ComfyUI's sigma-space noising, its U-Net input scaling and our target are exactly diffusers'
    DDPM ``add_noise`` and eps / ``get_velocity`` at the same integer timestep."""
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear",
                          prediction_type="epsilon" if kind == "eps" else "v_prediction")
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(4, 4, 8, 8, generator=gen)
    noise = torch.randn(4, 4, 8, 8, generator=gen)
    timesteps = torch.tensor([0, 10, 500, 999])
    x_in, t_in, target = noisy_input_and_target(model_sampling(kind), latents, noise, timesteps, kind)
    assert torch.equal(t_in, timesteps.float())
    torch.testing.assert_close(x_in, sched.add_noise(latents, noise, timesteps), rtol=1e-5, atol=1e-5)
    expected = noise if kind == "eps" else sched.get_velocity(latents, noise, timesteps)
    torch.testing.assert_close(target, expected, rtol=1e-5, atol=1e-5)


def test_padding_by_repetition_leaves_cross_attention_unchanged():
    a, b = torch.randn(1, 77, 16), torch.randn(1, 154, 16)
    padded = pad_to_common_length([a, b])
    assert padded.shape == (2, 154, 16)
    q = torch.randn(1, 5, 16)
    plain = torch.nn.functional.scaled_dot_product_attention(q, a, a)
    repeated = torch.nn.functional.scaled_dot_product_attention(q, padded[:1], padded[:1])
    torch.testing.assert_close(plain, repeated)
    assert pad_to_common_length([torch.zeros(1, 231, 2), torch.zeros(1, 154, 2)]).shape[1] == 462


def test_inference_mode_weights_become_autograd_usable_in_place():
    with torch.inference_mode():
        layer = torch.nn.Linear(4, 4)
        layer.weight.tag = "kept"
    weight = layer.weight
    assert make_autograd_usable(layer) == 2
    assert layer.weight is weight and not weight.is_inference() and weight.tag == "kept"
    x = torch.randn(2, 4, requires_grad=True)
    layer(x).sum().backward()
    assert x.grad is not None
    # a Parameter made in inference mode and then given new .data (what Module.to does when a model
    # is moved to the GPU outside inference mode) says is_inference() False but has no version counter
    with torch.inference_mode():
        moved = torch.nn.Linear(4, 4)
    with torch.inference_mode(False):
        moved.to(torch.float64)
    assert not moved.weight.is_inference()
    assert make_autograd_usable(moved) == 2
    moved(x.double()).sum().backward()


def test_train_on_comfy_objects_saves_loadable_kohya_files_and_leaves_the_model_alone(tmp_path, mm):
    with torch.inference_mode():  # ComfyUI builds models and runs nodes in inference mode
        model, clip, vae = comfy_objects()
    unet = model.model.diffusion_model
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    dataset = _dataset(tmp_path)
    backend = ComfyBackend(model, clip, vae)
    config = TrainConfig(rank=2, alpha=1.0, epochs=2, batch_size=2, optimizer="AdamW", learning_rate=1e-2,
                         mixed_precision="fp32", gradient_checkpointing=True)
    with torch.inference_mode():
        result = train_lora(backend, dataset, config, runs_root=tmp_path / "runs", output_name="fake")
    assert sorted(result.epoch_files) == [1, 2] and all(np.isfinite(result.losses))
    # the user's MODEL: same weights, same modules, eval mode, no forward wrappers left behind
    after = unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert not any("lora" in n or "base_layer" in n for n, _ in unet.named_modules())
    assert not unet.training and not any(p.requires_grad for p in unet.parameters())
    assert not any("forward" in m.__dict__ for m in unet.modules())
    # ComfyUI's memory handling: models offloaded first; weights patched/unpatched on a clone only
    assert mm.calls[0] == "unload_all_models" and mm.in_training is False
    events = [e for e in model.log if e[0] in ("patch_model", "unpatch_model")]
    assert [e[0] for e in events] == ["patch_model", "unpatch_model"]
    assert all(e[1] != id(model) for e in events)
    # captions are text (no prompt-weight syntax), pixels reach the VAE as BHWC in [0, 1]
    assert all(c.get("disable_weights") is True for c in clip.tokenize_calls)
    assert vae.encode_inputs[0].shape[1:] == (32, 32, 3)
    # kohya SD1.5 names converted from the LDM paths the LoRA was trained on
    tensors = load_file(str(result.epoch_files[2]))
    names = {k.split(".")[0] for k in tensors}
    assert "lora_unet_down_blocks_0_attentions_0_proj_in" in names
    assert "lora_unet_mid_block_attentions_0_transformer_blocks_0_attn2_to_k" in names
    assert "lora_unet_up_blocks_0_attentions_0_transformer_blocks_0_ff_net_2" in names
    assert len(names) == 3 * 12
    assert any(float(t.abs().max()) > 0 for k, t in tensors.items() if k.endswith("lora_up.weight"))
    meta = read_lora_metadata(result.epoch_files[2])
    assert meta["ss_sd_model_name"] == "my_model.safetensors" and meta["modelspec.prediction_type"] == "epsilon"


def test_resume_and_run_identity(tmp_path, mm):
    model, clip, vae = comfy_objects()
    dataset = _dataset(tmp_path, count=2)
    config = TrainConfig(rank=2, alpha=1.0, epochs=1, batch_size=1, optimizer="AdamW", learning_rate=1e-3,
                         mixed_precision="fp32")
    first = train_lora(ComfyBackend(model, clip, vae), dataset, config, runs_root=tmp_path, output_name="r")
    again = train_lora(ComfyBackend(model, clip, vae), dataset, config, runs_root=tmp_path, output_name="r")
    assert again.run_dir == first.run_dir and not again.losses[len(first.losses):]
    other_model, _, _ = comfy_objects(seed=3)
    other = train_lora(ComfyBackend(other_model, clip, vae), dataset, config, runs_root=tmp_path, output_name="r")
    assert other.run_dir != first.run_dir  # other weights never resume this run


def test_sdxl_loss_uses_pooled_output_and_size_conditioning(mm):
    model, clip, vae = comfy_objects("sdxl", "v")
    backend = ComfyBackend(model, clip, vae)
    assert backend.prediction_type == "v_prediction"
    unet = backend.lora_module()
    backend.begin_training(dtype=torch.float32, gradient_checkpointing=False)
    try:
        geometry = [SampleGeometry((48, 40), (4, 0), (32, 32)), SampleGeometry((32, 64), (0, 16), (32, 32))]
        pred, target = backend.predict(torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([10, 900]),
                                       ["a short one", "a much longer caption " * 3], geometry)
    finally:
        backend.end_training()
    assert torch.isfinite(pred).all() and pred.shape == target.shape
    call = unet.calls[-1]
    assert call["y"].shape == (2, 8 + 6)
    assert model.model.adm_calls == [
        {"width": 40, "height": 48, "crop_w": 0, "crop_h": 4, "target_width": 32, "target_height": 32},
        {"width": 64, "height": 32, "crop_w": 16, "crop_h": 0, "target_width": 32, "target_height": 32},
    ]
    assert call["context"].shape == (2, 2 * 77, 16)  # 1 and 2 windows, padded to the LCM


def test_fp32_training_on_half_weights_uses_comfyui_manual_cast(mm):
    model, clip, vae = comfy_objects()
    model.model.diffusion_model.half()
    backend = ComfyBackend(model, clip, vae)
    unet = backend.lora_module()
    backend.begin_training(dtype=torch.float32, gradient_checkpointing=False)
    try:
        assert ("set_model_compute_dtype", id(backend._mp), torch.float32) in model.log
        assert backend._input_dtype == torch.float32
    finally:
        backend.end_training()
    assert model.model.manual_cast_dtype is None
    assert unet is model.model.diffusion_model


@pytest.mark.parametrize("module", ["comfy_backend", "comfy_preview"])
def test_comfy_modules_never_import_comfyui(module):
    """ComfyUI is reached through comfy_modules only: no ``import comfy...`` / ``import nodes`` etc."""
    import ast
    import importlib

    source = inspect_source(importlib.import_module(f"style_lora_trainer.integration.{module}"))
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [] if node.level else [node.module or ""]
        else:
            continue
        for name in names:
            assert name.split(".")[0] not in ("comfy", "nodes", "folder_paths", "server", "comfy_extras"), name


def inspect_source(module):
    import inspect

    return inspect.getsource(module)


@pytest.fixture
def attention(monkeypatch, mm):
    fake = fake_attention_module()
    real = comfy_modules.comfy_module
    monkeypatch.setattr(comfy_modules, "comfy_module",
                        lambda name: fake if name == "comfy.ldm.modules.attention" else real(name))
    return fake


def test_training_steps_use_pytorch_sdpa_through_the_attention_override(attention):
    model, clip, vae = comfy_objects()
    backend = ComfyBackend(model, clip, vae)
    unet = backend.lora_module()
    backend.begin_training(dtype=torch.float32, gradient_checkpointing=False)
    try:
        pred, _ = backend.predict(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.tensor([10]), ["a caption"],
                                  [SampleGeometry((32, 32), (0, 0), (32, 32))])
    finally:
        backend.end_training()
    assert torch.isfinite(pred).all() and "optimized_attention_override" in unet.calls[-1]["transformer_options"]
    # 3 transformer blocks × (self + cross attention), each through attention_pytorch, outside the wrapper
    assert len(attention.calls) == 6 and all(c["inside_wrapper"] for c in attention.calls)
    # the override lives in the options of training steps only: the MODEL's own options are untouched
    assert "transformer_options" not in getattr(model, "model_options", {})
    attention.calls.clear()
    unet(torch.randn(1, 4, 4, 4), torch.tensor([10]), context=torch.randn(1, 77, 16))
    assert attention.calls == []


@pytest.mark.parametrize("weights", [torch.float32, torch.float16])
def test_bf16_training_runs_on_a_copy_and_leaves_the_model_bit_for_bit(tmp_path, mm, monkeypatch, weights):
    monkeypatch.setenv("STYLE_LORA_OUTPUT_DIR", str(tmp_path / "out"))
    model, clip, vae = comfy_objects()
    unet = model.model.diffusion_model.to(weights)
    params = dict(unet.named_parameters())
    before = {k: v.detach().clone() for k, v in params.items()}
    backend = ComfyBackend(model, clip, vae)
    config = TrainConfig(rank=2, alpha=1.0, epochs=1, batch_size=2, optimizer="AdamW", learning_rate=1e-2,
                         mixed_precision="bf16")
    result = train_lora(backend, _dataset(tmp_path), config, runs_root=tmp_path / "runs", output_name="bf")
    assert all(np.isfinite(result.losses))
    # training ran from bf16 weights (not fp32/fp16 weights under autocast), inputs in bf16 too
    assert {c["weight_dtype"] for c in unet.calls} == {torch.bfloat16}
    assert {c["dtype"] for c in unet.calls} == {torch.bfloat16}
    # the same Parameter objects hold the very same values and dtype again (fp16 → bf16 → fp16 would not)
    assert all(p is params[n] for n, p in unet.named_parameters())
    for name, value in before.items():
        assert params[name].dtype == weights and torch.equal(params[name].detach(), value), name
    # the set-aside originals went to an unlinked temporary file: nothing is left on disk
    assert not any(p.is_file() for p in (tmp_path / "out").rglob("*") if "style_lora_weights_" in p.name)
    assert backend._half is None


class _CountingCLIP:
    def __init__(self, clip):
        self.clip, self.encode_calls = clip, 0

    def tokenize(self, *args, **kwargs):
        return self.clip.tokenize(*args, **kwargs)

    def encode_from_tokens(self, *args, **kwargs):
        self.encode_calls += 1
        return self.clip.encode_from_tokens(*args, **kwargs)


def test_the_captions_of_a_step_are_encoded_in_one_call_equal_to_one_by_one(mm):
    model, clip, vae = comfy_objects()
    counting = _CountingCLIP(clip)
    backend = ComfyBackend(model, counting, vae)
    captions = ["short", "a caption of three windows " * 5, "two windows here " * 4, "short"]
    context, pooled = backend.encode_text(captions)
    assert counting.encode_calls == 1 and pooled is None
    one_by_one = [clip.encode_from_tokens(clip.tokenize(c, disable_weights=True)) for c in captions]
    assert [c.shape[1] for c in one_by_one] == [77, 3 * 77, 2 * 77, 77]
    assert torch.allclose(context, pad_to_common_length(one_by_one), atol=1e-6)
    assert context.shape == (4, 6 * 77, 16)  # padded by repetition to the LCM of 1, 3 and 2 windows


def test_with_cached_latents_the_vae_is_set_aside_while_training_and_comes_back(tmp_path, mm, monkeypatch):
    monkeypatch.setenv("STYLE_LORA_OUTPUT_DIR", str(tmp_path / "out"))
    model, clip, vae = comfy_objects()
    before = {k: v.clone() for k, v in vae.first_stage_model.state_dict().items()}
    backend = ComfyBackend(model, clip, vae)
    sizes_in_training = []
    real_predict = backend.predict

    def predict(*args):
        sizes_in_training.append(sum(p.numel() for p in vae.first_stage_model.parameters()))
        return real_predict(*args)

    backend.predict = predict
    config = TrainConfig(rank=2, alpha=1.0, epochs=1, batch_size=2, optimizer="AdamW", learning_rate=1e-2,
                         mixed_precision="fp32", cache_latents=True)
    train_lora(backend, _dataset(tmp_path), config, runs_root=tmp_path / "runs", output_name="v")
    assert sizes_in_training and set(sizes_in_training) == {0}  # nothing of the VAE held while training
    after = vae.first_stage_model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    with torch.inference_mode():  # and ComfyUI can run it again (its weights are inference tensors)
        vae.first_stage_model(torch.rand(1, 3, 8, 8))
    # without caching the VAE encodes every step and stays where it is
    sizes_in_training.clear()
    config = TrainConfig(rank=2, alpha=1.0, epochs=1, batch_size=2, optimizer="AdamW", learning_rate=1e-2,
                         mixed_precision="fp32", cache_latents=False)
    (tmp_path / "b").mkdir()
    train_lora(backend, _dataset(tmp_path / "b"), config, runs_root=tmp_path / "runs", output_name="v")
    assert set(sizes_in_training) == {sum(v.numel() for v in before.values())}


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_text_encoder_computes_in_the_training_dtype_and_comes_back_bit_for_bit(tmp_path, mm, monkeypatch,
                                                                                precision):
    monkeypatch.setenv("STYLE_LORA_OUTPUT_DIR", str(tmp_path / "out"))
    model, clip, vae = comfy_objects()
    encoder = clip.cond_stage_model.clip_l
    params = dict(clip.cond_stage_model.named_parameters())
    before = {k: (v.detach().clone(), v.requires_grad) for k, v in params.items()}
    tokens = clip.tokenize("style, thing 1, detail", disable_weights=True)
    cond_before = clip.encode_from_tokens(tokens)
    encoder.transformer.calls.clear()
    backend = ComfyBackend(model, clip, vae)
    config = TrainConfig(rank=2, alpha=1.0, epochs=1, batch_size=2, optimizer="AdamW", learning_rate=1e-2,
                         mixed_precision=precision)
    train_lora(backend, _dataset(tmp_path), config, runs_root=tmp_path / "runs", output_name="te")
    seen = {tuple(c.values()) for c in encoder.transformer.calls}
    if precision == "bf16":
        # one copy in bf16, computed in bf16: no per-layer cast from ComfyUI's fp16 weights to fp32
        assert seen == {(torch.bfloat16, torch.bfloat16, torch.bfloat16)}
    else:
        # fp32 leaves ComfyUI's fp16 weights and fp32 compute as they are
        assert seen == {(torch.float32, torch.float32, torch.float16)}
    assert "forward" not in encoder.transformer.__dict__ and backend._text is None
    assert all(p is params[n] for n, p in clip.cond_stage_model.named_parameters())
    for name, (value, requires_grad) in before.items():
        assert params[name].dtype == value.dtype and torch.equal(params[name].detach(), value), name
        assert params[name].requires_grad == requires_grad
    with torch.inference_mode():  # as ComfyUI runs nodes
        assert torch.equal(clip.encode_from_tokens(tokens), cond_before)


def test_text_encoder_in_bf16_stays_close_to_comfyuis_fp32_encoding(tmp_path):
    _model, clip, _vae = comfy_objects()
    captions = ["style, thing 1, detail", "a caption of three windows " * 5]
    reference = [clip.encode_from_tokens(clip.tokenize(c, disable_weights=True)) for c in captions]
    precision = TextEncoderInComputeDtype(clip, torch.bfloat16, spill_dir=tmp_path)
    assert precision.apply() and precision.apply()  # idempotent
    for caption, ref in zip(captions, reference):
        got = clip.encode_from_tokens(clip.tokenize(caption, disable_weights=True))
        assert got.dtype == torch.float32 and not torch.equal(got, ref)
        assert float((got - ref).norm() / ref.norm()) < 0.02
    precision.restore()
    precision.restore()
    assert torch.equal(clip.encode_from_tokens(clip.tokenize(captions[0], disable_weights=True)), reference[0])


def test_text_encoder_of_an_unknown_layout_is_left_alone(tmp_path):
    _model, clip, _vae = comfy_objects()
    assert text_encoders(clip.cond_stage_model) == [clip.cond_stage_model.clip_l]
    meta = comfy_objects()[1]
    meta.cond_stage_model.clip_l.to("meta")  # weights ComfyUI streams in (dynamic VRAM) are not materialised
    for odd in (meta, SimpleNamespace(cond_stage_model=torch.nn.Linear(2, 2)), SimpleNamespace()):
        assert TextEncoderInComputeDtype(odd, torch.bfloat16, spill_dir=tmp_path).apply() is False
    dynamic = comfy_objects()[1]
    dynamic.patcher = SimpleNamespace(is_dynamic=lambda: True)
    assert TextEncoderInComputeDtype(dynamic, torch.bfloat16, spill_dir=tmp_path).apply() is False
    assert dynamic.cond_stage_model.clip_l.transformer.proj.weight.dtype == torch.float16
    # a LoRA on the CLIP upstream: ComfyUI replaces patched Parameters, so the CLIP is left as it is
    patched = comfy_objects()[1]
    patched.patcher = SimpleNamespace(patches={"clip_l.transformer.proj.weight": [(1.0, ("diff", ()))]})
    assert TextEncoderInComputeDtype(patched, torch.bfloat16, spill_dir=tmp_path).apply() is False
    patched.patcher.patches = {}
    assert TextEncoderInComputeDtype(patched, torch.bfloat16, spill_dir=tmp_path).apply() is True


def test_a_failed_restore_of_the_text_encoder_still_puts_the_unet_and_vae_back(tmp_path, mm, monkeypatch):
    monkeypatch.setenv("STYLE_LORA_OUTPUT_DIR", str(tmp_path / "out"))
    model, clip, vae = comfy_objects()
    unet = model.model.diffusion_model.half()
    before = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    vae_before = {k: v.clone() for k, v in vae.first_stage_model.state_dict().items()}

    def broken(self):
        raise OSError("the temporary copy of the model weights is truncated")

    monkeypatch.setattr(TextEncoderInComputeDtype, "restore", broken)
    config = TrainConfig(rank=2, alpha=1.0, epochs=1, batch_size=2, optimizer="AdamW", learning_rate=1e-2,
                         mixed_precision="bf16", cache_latents=True)
    with pytest.raises(StyleLoRAError, match="truncated.*Finished epoch 1 is kept"):
        train_lora(ComfyBackend(model, clip, vae), _dataset(tmp_path), config, runs_root=tmp_path / "runs",
                   output_name="f")
    after = unet.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert all(torch.equal(vae.first_stage_model.state_dict()[k], v) for k, v in vae_before.items())
    assert mm.in_training is False  # ComfyUI's flag is put back too


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sampling_while_training_sees_the_users_model_and_changes_no_number(tmp_path, mm, monkeypatch, precision):
    """Train LoRA's samples: the host samples the user's own weights (not the bf16 copy, no training LoRA
    layers), and the run's losses and validation losses are those of a run without samples."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from style_lora_trainer.style_lora_engine.trainer import SampleHook, TrainCallbacks

    monkeypatch.setenv("STYLE_LORA_OUTPUT_DIR", str(tmp_path / "out"))
    config = TrainConfig(rank=2, alpha=1.0, epochs=2, batch_size=2, optimizer="AdamW", learning_rate=1e-2,
                         mixed_precision=precision)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    plain_model, clip, vae = comfy_objects()
    plain = train_lora(ComfyBackend(plain_model, clip, vae), _dataset(tmp_path / "a"), config,
                       runs_root=tmp_path / "runs_a", output_name="s")
    model, clip, vae = comfy_objects()
    unet = model.model.diffusion_model
    before = {k: v.detach().clone() for k, v in unet.named_parameters()}
    seen = []

    def render(epoch, path):
        weights_now = dict(unet.named_parameters())
        seen.append((epoch, path is None, any(isinstance(m, BaseTunerLayer) for m in unet.modules()),
                     weights_now.keys() == before.keys()
                     and all(torch.equal(weights_now[k].detach(), v) for k, v in before.items())))

    result = train_lora(ComfyBackend(model, clip, vae), _dataset(tmp_path / "b"), config,
                        runs_root=tmp_path / "runs_b", output_name="s",
                        callbacks=TrainCallbacks(sampler=SampleHook(render=render)))
    assert seen == [(0, True, False, True), (1, False, False, True), (2, False, False, True)]
    assert result.losses == plain.losses
    assert result.validation == plain.validation
    for name, value in before.items():
        assert torch.equal(dict(unet.named_parameters())[name].detach(), value), name


def test_small_convs_compute_as_one_gemm_while_training_and_comfyuis_cast_layers_keep_their_own(mm):
    model, clip, vae = comfy_objects()
    backend = ComfyBackend(model, clip, vae)
    unet = backend.lora_module()
    convs = [m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    cast = convs[0]
    cast.comfy_cast_weights = True  # ComfyUI casts this layer's weight per call: its own forward, always
    backend.begin_training(dtype=torch.bfloat16, gradient_checkpointing=False)
    try:
        assert all("forward" in m.__dict__ for m in convs[1:]) and "forward" not in cast.__dict__
        pred, _ = backend.predict(torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4), torch.tensor([10]),
                                  ["a caption"], [SampleGeometry((32, 32), (0, 0), (32, 32))])
        assert torch.isfinite(pred).all()
    finally:
        backend.end_training()
    assert not any("forward" in m.__dict__ for m in convs)
    plain = torch.nn.Conv2d(2, 2, 3)
    assert not _builds_weight_per_call(plain)
    plain.weight_function = [lambda w: w]
    assert _builds_weight_per_call(plain)
