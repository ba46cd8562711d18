"""The ComfyUI grid renderer (integration/comfy_preview.py) against recording stand-ins for ComfyUI's
nodes module: it must call LoraLoader + CLIPTextEncode + EmptyLatentImage + common_ksampler +
VAEDecode as a graph does (the e2e tier compares the pixels with a real LoraLoader + KSampler graph)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from comfy_fakes import comfy_objects, fake_model_management
from safetensors.torch import save_file

from style_lora_trainer.integration import comfy_modules, comfy_preview, host
from style_lora_trainer.integration.socket_types import EpochFile

UNET_KEY = "lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"
TEXT_KEY = "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"


@pytest.fixture
def comfy(monkeypatch):
    calls: list[tuple] = []
    mm = fake_model_management()

    class CLIPTextEncode:
        def encode(self, clip, text):
            calls.append(("encode", getattr(clip, "strength", 0.0), text))
            return ([[torch.full((1, 2, 4), float(len(text))), {}]],)

    class LoraLoader:
        def load_lora(self, model, clip, lora_name, strength_model, strength_clip):
            calls.append(("load_lora", lora_name, strength_model, strength_clip))
            if strength_model == 0 and strength_clip == 0:
                return model, clip  # as ComfyUI's LoraLoader does
            new = model.clone()
            new.strength = strength_model
            return new, SimpleNamespace(strength=strength_clip)

    class EmptyLatentImage:
        def generate(self, width, height, batch_size=1):
            calls.append(("empty_latent", width, height, batch_size))
            return ({"samples": torch.zeros(batch_size, 4, height // 8, width // 8)},)

    def common_ksampler(model, seed, steps, cfg, sampler_name, scheduler, positive, negative, latent, denoise=1.0):
        calls.append(("ksampler", getattr(model, "strength", 0.0), seed, steps, cfg, sampler_name, scheduler,
                      float(positive[0][0].mean()), float(negative[0][0].mean()), denoise))
        return ({"samples": latent["samples"] + getattr(model, "strength", 0.0)},)

    class VAEDecode:
        def decode(self, vae, samples):
            b, _, h, w = samples["samples"].shape
            return (torch.full((b, h * 8, w * 8, 3), 0.5) * samples["samples"].mean().clamp(0, 1),)

    nodes = SimpleNamespace(CLIPTextEncode=CLIPTextEncode, LoraLoader=LoraLoader, EmptyLatentImage=EmptyLatentImage,
                            common_ksampler=common_ksampler, VAEDecode=VAEDecode)
    modules = {"nodes": nodes, "comfy.model_management": mm}
    monkeypatch.setattr(comfy_modules, "comfy_module", lambda name: modules.get(name))
    return SimpleNamespace(calls=calls, mm=mm)


def lora_file(tmp_path, name, *keys):
    path = tmp_path / name
    save_file({k: torch.zeros(1, 1) for k in keys}, str(path))
    return path


def test_cells_follow_loraloader_and_ksampler(comfy, tmp_path):
    model, clip, vae = comfy_objects()
    files = [EpochFile(e, lora_file(tmp_path, f"s-00000{e}.safetensors", UNET_KEY), f"styles/s-00000{e}.safetensors")
             for e in (1, 2)]
    done = []
    cells = comfy_preview.render_grid_cells_comfy(
        model, clip, vae, files, [0.0, 0.8], ["a red circle", "a blue square"], negative="ugly", seed=7,
        images_per_prompt=2, steps=3, cfg=5.0, sampler="dpmpp_2m", scheduler="karras", width=32, height=24,
        on_cell=lambda d, t: done.append((d, t)))
    assert sorted(cells) == [(1, 0.0), (1, 0.8), (2, 0.0), (2, 0.8)]
    assert all(len(images) == 4 and images[0].size == (32, 24) for images in cells.values())
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    # LoraLoader by the name it lists, strength_model = strength_clip = the weight
    assert [c[1:] for c in comfy.calls if c[0] == "load_lora"] == [
        ("styles/s-000001.safetensors", 0.0, 0.0), ("styles/s-000001.safetensors", 0.8, 0.8),
        ("styles/s-000002.safetensors", 0.0, 0.0), ("styles/s-000002.safetensors", 0.8, 0.8)]
    samples = [c for c in comfy.calls if c[0] == "ksampler"]
    assert len(samples) == 2 * 2 * 2  # cells × prompts
    assert [s[1] for s in samples] == [0.0, 0.0, 0.8, 0.8] * 2  # weight 0 samples the base model
    assert all(s[2:7] == (7, 3, 5.0, "dpmpp_2m", "karras") and s[9] == 1.0 for s in samples)
    assert [s[7] for s in samples[:2]] == [len("a red circle"), len("a blue square")] and samples[0][8] == len("ugly")
    assert all(c[1:] == (32, 24, 2) for c in comfy.calls if c[0] == "empty_latent")
    assert comfy.mm.calls.count("interrupt_check") == 8  # Stop is checked before every sampling run
    # a U-Net-only file: the prompts are encoded once (CLIPTextEncode), for every cell
    assert [c[2] for c in comfy.calls if c[0] == "encode"] == ["a red circle", "a blue square", "ugly"]
    # the pixels are what VAEDecode gave, converted like SaveImage (255 × 0.4 in float32 truncates to 101)
    assert cells[(1, 0.8)][0].getpixel((0, 0)) == (101, 101, 101) and cells[(1, 0.0)][0].getpixel((0, 0)) == (0, 0, 0)


def test_a_file_with_text_encoder_keys_encodes_the_prompts_with_its_clip(comfy, tmp_path):
    model, clip, vae = comfy_objects()
    files = [EpochFile(3, lora_file(tmp_path, "t-000003.safetensors", UNET_KEY, TEXT_KEY), "t-000003.safetensors")]
    comfy_preview.render_grid_cells_comfy(model, clip, vae, files, [0.0, 1.0], ["a cat"], negative="")
    encodes = [c[1:] for c in comfy.calls if c[0] == "encode"]
    assert encodes == [(0.0, "a cat"), (0.0, ""), (1.0, "a cat"), (1.0, "")]
    assert comfy_preview.has_text_encoder_keys(files[0].path)
    assert not comfy_preview.has_text_encoder_keys(lora_file(tmp_path, "u.safetensors", UNET_KEY))


def test_host_renders_comfy_models_with_comfyuis_sampling(comfy, tmp_path, monkeypatch):
    model, clip, vae = comfy_objects()
    seen = {}

    def fake_render(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return {}

    monkeypatch.setattr(comfy_preview, "render_grid_cells_comfy", fake_render)
    files = [EpochFile(1, tmp_path / "a.safetensors", "a.safetensors")]
    assert host.render_grid_cells(model, clip, vae, files, [1.0], ["p"], seed=3) == {}
    assert seen["args"][:4] == (model, clip, vae, files) and seen["kwargs"] == {"seed": 3}
    with pytest.raises(Exception, match="Load Checkpoint"):
        host.render_grid_cells(object(), clip, vae, [], [1.0], ["p"])


def test_training_samples_apply_the_file_as_loraloader_does(comfy, tmp_path, monkeypatch):
    """Samples during training read the run's file with the two calls LoraLoader.load_lora makes
    (load_torch_file, then load_lora_for_models with its metadata), since the run folder is no loras folder."""
    model, clip, vae = comfy_objects()
    path = lora_file(tmp_path, "r-000002.safetensors", UNET_KEY)

    def load_torch_file(name, safe_load=False, return_metadata=False):
        comfy.calls.append(("load_torch_file", name, safe_load, return_metadata))
        return {"lora": "tensors"}, {"ss_epoch": "2"}

    def load_lora_for_models(model_in, clip_in, lora, strength_model, strength_clip, lora_metadata=None):
        comfy.calls.append(("load_lora_for_models", lora, strength_model, strength_clip, lora_metadata))
        new = model_in.clone()
        new.strength = strength_model
        return new, SimpleNamespace(strength=strength_clip)

    modules = {"nodes": comfy_modules.comfy_module("nodes"), "comfy.model_management": comfy.mm,
               "comfy.utils": SimpleNamespace(load_torch_file=load_torch_file),
               "comfy.sd": SimpleNamespace(load_lora_for_models=load_lora_for_models)}
    monkeypatch.setattr(comfy_modules, "comfy_module", lambda name: modules.get(name))
    out = host.render_samples(model, clip, vae, path, [0.8, 1.0], ["a cat"], seed=3, steps=2, cfg=4.0,
                              width=16, height=16)
    assert [w for w, _ in out] == [0.8, 1.0] and all(len(images) == 1 for _, images in out)
    assert [c for c in comfy.calls if c[0] == "load_torch_file"] == [("load_torch_file", str(path), True, True)]
    assert [c[1:] for c in comfy.calls if c[0] == "load_lora_for_models"] == [
        ({"lora": "tensors"}, 0.8, 0.8, {"ss_epoch": "2"}), ({"lora": "tensors"}, 1.0, 1.0, {"ss_epoch": "2"})]
    assert [c[1] for c in comfy.calls if c[0] == "ksampler"] == [0.8, 1.0]
    # the prompts are encoded with each weight's CLIP, as a LoraLoader → CLIPTextEncode graph does
    assert [c[1:] for c in comfy.calls if c[0] == "encode"] == [(0.8, "a cat"), (0.8, ""), (1.0, "a cat"), (1.0, "")]
    comfy.calls.clear()
    base = host.render_samples(model, clip, vae, None, [0.8], ["a cat"], seed=3, steps=2, width=16, height=16)
    assert [w for w, _ in base] == [None]
    assert [c[1] for c in comfy.calls if c[0] == "ksampler"] == [0.0]  # the user's model itself
    assert not [c for c in comfy.calls if c[0].startswith("load_")]
