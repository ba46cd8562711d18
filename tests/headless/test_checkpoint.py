"""A user's single-file checkpoint read offline into diffusers modules (headless/checkpoint.py)."""

from __future__ import annotations

import pytest
import torch
from random_checkpoint import read_layout
from safetensors import safe_open

from style_lora_trainer.headless.checkpoint import detect_arch, load_checkpoint, model_from_state_dict
from style_lora_trainer.style_lora_engine.errors import ConfigError


def meta_state(arch: str) -> dict[str, torch.Tensor]:
    """The recorded layout on the meta device: every key and shape of a real file, no memory."""
    return {k: (torch.arange(s[-1]).reshape(s) if k.endswith("position_ids")
                else torch.empty(s, device="meta", dtype=torch.float16)) for k, s in read_layout(arch).items()}


def test_architecture_is_read_from_the_key_names():
    assert detect_arch(read_layout("sd15")) == "sd15"
    assert detect_arch(read_layout("sdxl")) == "sdxl"
    unet = [k for k in read_layout("sd15") if k.startswith("model.diffusion_model.")]
    with pytest.raises(ConfigError, match="no U-Net.*a LoRA"):
        detect_arch(["lora_unet_x.lora_down.weight"], "x.safetensors")
    with pytest.raises(ConfigError, match="SD2"):
        detect_arch(unet + ["cond_stage_model.model.token_embedding.weight"])
    with pytest.raises(ConfigError, match="refiner"):
        detect_arch(unet + ["conditioner.embedders.1.model.ln_final.weight"])
    with pytest.raises(ConfigError, match="no text encoder keys.*Save Checkpoint"):
        detect_arch(unet, "unet_only.safetensors")


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_every_tensor_of_a_real_layout_lands_in_the_diffusers_modules(arch, clip_tokenizer, tmp_path):
    # strict loading: a key the converter misses or invents raises, naming the module
    model = model_from_state_dict(meta_state(arch), path=tmp_path / f"{arch}.safetensors", cache_dir=tmp_path)
    assert model.arch == arch
    assert model.prediction_type == "epsilon"
    assert model.unet.config.cross_attention_dim == (2048 if arch == "sdxl" else 768)
    if arch == "sdxl":
        assert model.text_encoder_2.config.projection_dim == 1280
        assert model.tokenizer_2.pad_token_id == 0  # OpenCLIP-G pads with "!"
        assert model.unet.config.addition_embed_type == "text_time"
    else:
        assert model.text_encoder_2 is None
    assert model.tokenizer.pad_token_id == model.tokenizer.eos_token_id == 49407


def test_a_missing_tensor_is_refused_naming_the_file_and_module(tmp_path):
    state = meta_state("sd15")
    del state["model.diffusion_model.out.2.weight"]
    with pytest.raises(ConfigError, match=r"broken\.safetensors: the U-Net weights do not match.*1 missing"):
        model_from_state_dict(state, path=tmp_path / "broken.safetensors", cache_dir=tmp_path)


def test_v_prediction_comes_from_comfyuis_marker_key(tmp_path):
    state = meta_state("sd15")
    state["v_pred"] = torch.tensor([])
    model = model_from_state_dict(state, path=tmp_path / "v.safetensors", cache_dir=tmp_path)
    assert model.prediction_type == "v_prediction"
    forced = model_from_state_dict(state, path=tmp_path / "v.safetensors", cache_dir=tmp_path,
                                   prediction_type="epsilon")
    assert forced.prediction_type == "epsilon"


def test_only_an_existing_safetensors_file_is_read(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_checkpoint(tmp_path / "nope.safetensors", cache_dir=tmp_path)
    pickle_file = tmp_path / "model.ckpt"
    pickle_file.write_bytes(b"\x80\x04")
    with pytest.raises(ConfigError, match="only .safetensors.*no pickle"):
        load_checkpoint(pickle_file, cache_dir=tmp_path)
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(ConfigError, match="torn.safetensors as safetensors.*complete"):
        load_checkpoint(torn, cache_dir=tmp_path)


@pytest.mark.slow
def test_weights_reach_the_modules_they_belong_to(sd15_single_file, tmp_path):
    model = load_checkpoint(sd15_single_file, cache_dir=tmp_path)
    with safe_open(str(sd15_single_file), "pt") as fh:
        pairs = {
            "model.diffusion_model.input_blocks.0.0.weight": model.unet.conv_in.weight,
            "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight":
                model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_k.weight,
            "model.diffusion_model.out.2.bias": model.unet.conv_out.bias,
            "first_stage_model.encoder.conv_in.weight": model.vae.encoder.conv_in.weight,
            "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight":
                model.text_encoder.get_input_embeddings().weight,
        }
        for key, param in pairs.items():
            assert param.dtype == torch.float32
            assert torch.equal(fh.get_tensor(key).float(), param), key
    assert not any(p.is_meta for p in model.unet.parameters())
    assert not any(b.is_meta for b in model.text_encoder.buffers())
    assert not any(p.requires_grad for p in model.unet.parameters())
