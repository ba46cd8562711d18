"""Tiny offline SD model: CLIP-exact tokenizer, SD1.5/SDXL shapes, pretraining cache."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from style_lora_trainer.dev.tiny_model import (  # noqa: E402
    build_clip_tokenizer,
    build_tiny_sd15,
    build_tiny_sdxl,
    pretrained_tiny_sd15,
)
from style_lora_trainer.headless.model_bundle import DiffusersSD  # noqa: E402

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is None, reason="needs: pip install --no-deps open-clip-torch"
)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(tmp_path_factory.mktemp("tok"))


def test_tokenizer_ids_match_openai_clip(tokenizer, tmp_path):
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    ids = tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77 and ids[-1] == 49407  # padded with <|endoftext|>, as SD's tokenizer
    # Second build reuses the written vocab files.
    build_clip_tokenizer(tmp_path)
    mtime = (tmp_path / "clip_tokenizer" / "vocab.json").stat().st_mtime_ns
    again = build_clip_tokenizer(tmp_path)
    assert (tmp_path / "clip_tokenizer" / "vocab.json").stat().st_mtime_ns == mtime
    assert again("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_tiny_sd15_forward(tokenizer):
    m = build_tiny_sd15(tokenizer, seed=0)
    assert isinstance(m, DiffusersSD) and m.arch == "sd15"
    assert m.vae_scale_factor == 2 and m.layers_per_block == 1 and m.prediction_type == "epsilon"
    sched = m.noise_scheduler.config
    assert (sched.num_train_timesteps, sched.beta_schedule) == (1000, "scaled_linear")
    ids = tokenizer(["a red circle", "a blue star"], padding="max_length", max_length=77,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = m.text_encoder(ids)[0]
        assert hidden.shape == (2, 77, 32)
        out = m.unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), encoder_hidden_states=hidden).sample
        assert out.shape == (2, 4, 16, 16)
        latents = m.vae.encode(torch.rand(2, 3, 32, 32) * 2 - 1).latent_dist.mode()
        assert latents.shape == (2, 4, 16, 16)
    names = {n for n, _ in m.unet.named_modules()}
    # Cross-attention in both levels (LoRA targets at 16x16 and 8x8).
    assert "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k" in names
    assert "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k" in names
    # Same seed, same weights.
    m2 = build_tiny_sd15(tokenizer, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(m.unet.state_dict().values(), m2.unet.state_dict().values(),
                                                 strict=True))


def test_tiny_sdxl_forward_backward(tokenizer):
    m = build_tiny_sdxl(tokenizer, seed=0)
    assert m.arch == "sdxl" and m.tokenizer_2 is tokenizer and m.layers_per_block == 2
    ids = tokenizer(["a red circle", "a blue star"], padding="max_length", max_length=77,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        out1 = m.text_encoder(ids, output_hidden_states=True)
        out2 = m.text_encoder_2(ids, output_hidden_states=True)
    context = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
    assert context.shape == (2, 77, 64)
    pooled = out2.text_embeds
    assert pooled.shape == (2, 32)
    time_ids = torch.tensor([[32, 32, 0, 0, 32, 32]] * 2, dtype=torch.float32)
    m.unet.train()
    pred = m.unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 900]), encoder_hidden_states=context,
                  added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    assert pred.shape == (2, 4, 16, 16)
    pred.pow(2).mean().backward()
    grads = {n: p.grad for n, p in m.unet.named_parameters()}
    assert grads["add_embedding.linear_1.weight"] is not None
    q = "down_blocks.1.attentions.1.transformer_blocks.0.attn1.to_q.weight"  # 2nd layer of the block
    assert grads[q] is not None and grads[q].abs().sum() > 0
    assert not any(n.startswith("down_blocks.0.attentions") for n in grads)  # SDXL: no attention at level 0
    assert "up_blocks.0.attentions.2.proj_in.weight" in grads  # up blocks have layers_per_block + 1
    assert m.unet.config.cross_attention_dim == 64


@pytest.mark.slow
def test_pretrained_cache_roundtrip(tmp_path):
    # A very short pretraining (same code path as the real ~2 min one) keeps this test to seconds.
    first = pretrained_tiny_sd15(tmp_path, progress=False, steps_scale=0.02)
    folders = [p for p in tmp_path.iterdir() if p.name.startswith("tiny-sd15")]
    assert len(folders) == 1 and not any(p.name.startswith(".") for p in tmp_path.iterdir()), list(tmp_path.iterdir())
    cache = folders[0]
    marker = json.loads((cache / "tiny_model.json").read_text())
    assert marker["version"] == 1 and marker["eval_loss_after"] < marker["eval_loss_before"]
    files = [p for p in cache.rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert not any(p.suffix in (".bin", ".pt", ".pkl", ".ckpt") for p in files)

    second = pretrained_tiny_sd15(tmp_path, progress=False, steps_scale=0.02)  # from the cache
    assert second.vae.config.scaling_factor == pytest.approx(first.vae.config.scaling_factor)
    assert second.vae.config.scaling_factor != pytest.approx(0.18215)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=g)
    ids = second.tokenizer(["a large red circle, plain blue background"] * 2, padding="max_length",
                           max_length=77, return_tensors="pt").input_ids
    t = torch.tensor([100, 700])
    with torch.no_grad():
        a = first.unet(x, t, encoder_hidden_states=first.text_encoder(ids)[0]).sample
        b = second.unet(x, t, encoder_hidden_states=second.text_encoder(ids)[0]).sample
        assert torch.equal(a, b)
        # Deterministic posterior: sample() equals the mean.
        dist = second.vae.encode(torch.rand(1, 3, 32, 32) * 2 - 1).latent_dist
        assert torch.allclose(dist.sample(), dist.mean, atol=1e-5)
    assert second.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]

    # Deterministic: an independent build gives the same weights.
    other = pretrained_tiny_sd15(tmp_path / "again", progress=False, steps_scale=0.02)
    for a_sd, b_sd in ((first.unet.state_dict(), other.unet.state_dict()),
                       (first.vae.state_dict(), other.vae.state_dict())):
        assert all(torch.equal(a_sd[k], b_sd[k]) for k in a_sd)


def test_the_shipped_model_is_checked_by_hash_and_loads_as_saved(tokenizer, tmp_path):
    import shutil

    from style_lora_trainer.dev.tiny_model import SHIPPED_MODEL, load_shipped_model, save_shipped_model
    from style_lora_trainer.style_lora_engine.errors import ConfigError

    model = load_shipped_model(tokenizer)
    assert model.name == "tiny-sd15-v1" and not any(p.requires_grad for p in model.unet.parameters())
    assert model.vae.config.scaling_factor != pytest.approx(0.18215)  # the pretraining's own, restored
    # The weights are exactly the file's (fp16 values): writing them back gives the same file.
    assert save_shipped_model(model, tmp_path / "again.safetensors") == __import__("hashlib").sha256(
        SHIPPED_MODEL.read_bytes()).hexdigest()
    # A changed byte is refused, naming the file and the fix.
    broken = tmp_path / "tiny-sd15-v1.safetensors"
    shutil.copyfile(SHIPPED_MODEL, broken)
    data = bytearray(broken.read_bytes())
    data[-1] ^= 1
    broken.write_bytes(bytes(data))
    with pytest.raises(ConfigError, match=r"tiny-sd15-v1\.safetensors.*restore"):
        load_shipped_model(tokenizer, broken)
    with pytest.raises(ConfigError, match="missing"):
        load_shipped_model(tokenizer, tmp_path / "absent.safetensors")
