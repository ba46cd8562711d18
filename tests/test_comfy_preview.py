"""The ComfyUI grid renderer (nodes/comfy_preview.py) against recording stand-ins for comfy.sd,
comfy.utils, comfy.sample and comfy.model_management: it must make exactly the calls LoraLoader +
CLIPTextEncode + EmptyLatentImage + KSampler + VAEDecode make (the e2e tier compares pixels)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from comfy_fakes import comfy_objects, fake_model_management

from style_lora_trainer.nodes import comfy_bridge, comfy_preview, grid_node


@pytest.fixture
def comfy(monkeypatch):
    calls: list[tuple] = []
    mm = fake_model_management()

    def load_torch_file(path, safe_load=False, return_metadata=False):
        calls.append(("load_torch_file", path, safe_load))
        sd = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(1)}
        return (sd, {"ss_epoch": "1"}) if return_metadata else sd

    def load_lora_for_models(model, clip, lora, strength_model, strength_clip, lora_metadata=None):
        calls.append(("load_lora_for_models", strength_model, strength_clip, lora_metadata))
        new = model.clone()
        new.strength = strength_model
        return new, clip

    def fix_empty_latent_channels(model, latent, ratio=None, temporal=None):
        calls.append(("fix_empty_latent_channels", tuple(latent.shape), ratio))
        return latent

    def prepare_noise(latent, seed, inds=None):
        calls.append(("prepare_noise", seed, inds))
        return torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))

    def sample(model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image, **kw):
        calls.append(("sample", getattr(model, "strength", 0.0), steps, cfg, sampler_name, scheduler,
                      kw["denoise"], kw["seed"], kw["disable_noise"]))
        for step in range(steps):
            kw["callback"](step, None, None, steps)
        return noise * 0.1 + getattr(model, "strength", 0.0) + positive[0][0].mean()

    modules = {
        "comfy.model_management": mm,
        "comfy.utils": SimpleNamespace(load_torch_file=load_torch_file),
        "comfy.sd": SimpleNamespace(load_lora_for_models=load_lora_for_models),
        "comfy.sample": SimpleNamespace(fix_empty_latent_channels=fix_empty_latent_channels,
                                        prepare_noise=prepare_noise, sample=sample),
    }
    monkeypatch.setattr(comfy_bridge, "_comfy", lambda name: modules.get(name))
    return SimpleNamespace(calls=calls, mm=mm)


def test_cells_follow_loraloader_and_ksampler(comfy, tmp_path):
    model, clip, vae = comfy_objects()
    files = [(1, tmp_path / "s-000001.safetensors"), (2, tmp_path / "s-000002.safetensors")]
    done = []
    cells = comfy_preview.render_grid_cells_comfy(
        model, clip, vae, files, [0.0, 0.8], ["a red circle", "a blue square"], negative="ugly", seed=7,
        images_per_prompt=2, steps=3, cfg=5.0, sampler="dpmpp_2m", scheduler="karras", width=32, height=24,
        on_cell=lambda d, t: done.append((d, t)))
    assert sorted(cells) == [(1, 0.0), (1, 0.8), (2, 0.0), (2, 0.8)]
    assert all(len(images) == 4 and images[0].size == (32, 24) for images in cells.values())
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    names = [c[0] for c in comfy.calls]
    assert names.count("load_torch_file") == 2  # one read per epoch file
    assert ("load_torch_file", str(files[0][1]), True) in comfy.calls
    # strength 0 is the base model, as LoraLoader returns its inputs unchanged at 0 / 0
    assert [c[1:3] for c in comfy.calls if c[0] == "load_lora_for_models"] == [(0.8, 0.8), (0.8, 0.8)]
    assert all(c[3] == {"ss_epoch": "1"} for c in comfy.calls if c[0] == "load_lora_for_models")
    samples = [c for c in comfy.calls if c[0] == "sample"]
    assert len(samples) == 2 * 2 * 2  # cells × prompts
    assert all(s[2:] == (3, 5.0, "dpmpp_2m", "karras", 1.0, 7, False) for s in samples)
    assert ("fix_empty_latent_channels", (2, 4, 3, 4), 8) in comfy.calls
    assert all(c[1:] == (7, None) for c in comfy.calls if c[0] == "prepare_noise")
    assert comfy.mm.calls.count("interrupt_check") == 8 * 3  # Stop is checked at every sampling step
    # prompts: CLIPTextEncode's tokenize + encode_from_tokens_scheduled, once for all cells
    assert [c["text"] for c in clip.tokenize_calls] == ["a red circle", "a blue square", "ugly"]


def test_save_image_conversion_truncates_like_comfyui():
    image = torch.tensor([[[[0.0, 0.5, 1.0], [0.99999, 1.2, -0.1]]]])
    (pil,) = comfy_preview.to_pil_like_save_image(image)
    assert np.asarray(pil).tolist() == [[[0, 127, 255], [254, 255, 0]]]


def test_grid_node_dispatches_comfy_models(comfy, tmp_path, monkeypatch):
    model, clip, vae = comfy_objects()
    seen = {}

    def fake_render(*args, **kwargs):
        seen["args"], seen["kwargs"] = args, kwargs
        return {}

    monkeypatch.setattr(comfy_preview, "render_grid_cells_comfy", fake_render)
    assert grid_node.render_cells(model, clip, vae, [(1, tmp_path)], [1.0], ["p"], seed=3) == {}
    assert seen["args"][:3] == (model, clip, vae) and seen["kwargs"] == {"seed": 3}
    with pytest.raises(Exception, match="Load Checkpoint"):
        grid_node.render_cells(object(), clip, vae, [], [1.0], ["p"])
