"""The LoRA's size from a checkpoint's header (the canvas plan before a model is loaded) equals what the trainer
counts on the loaded U-Net, for SD1.5 and SDXL, with and without LoCon's conv_dim."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from style_lora_trainer.headless.checkpoint import _on_meta, read_config
from style_lora_trainer.style_lora_engine.checkpoint_header import (
    lora_parameter_count,
    model_family,
    tensor_shapes,
)
from style_lora_trainer.style_lora_engine.config import TrainConfig, TrainOptions
from style_lora_trainer.style_lora_engine.errors import ConfigError
from style_lora_trainer.style_lora_engine.training_plan import lora_parameter_count as module_count

DATA = Path(__file__).resolve().parents[1] / "data"


def layout(arch: str) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v) for k, v in json.loads((DATA / f"ldm_layout_{arch}.json").read_text()).items()}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize(("rank", "conv_dim"), [(32, 0), (16, 8)])
def test_the_header_count_is_the_trainers_count_on_the_unet(arch, rank, conv_dim):
    from diffusers import UNet2DConditionModel

    unet = _on_meta(UNet2DConditionModel, read_config(f"{arch}_unet.json"))
    config = TrainConfig(rank=rank, options=TrainOptions(conv_dim=conv_dim, conv_alpha=1.0))
    shapes = layout(arch)
    assert model_family(shapes) == arch
    assert lora_parameter_count(shapes, rank, conv_dim) == module_count(unet, config)


def test_locon_adds_the_resnet_convs_and_scales_with_rank():
    shapes = layout("sd15")
    plain = lora_parameter_count(shapes, 32)
    assert lora_parameter_count(shapes, 16) * 2 == plain
    assert lora_parameter_count(shapes, 32, conv_dim=8) > plain


def test_the_header_is_read_without_the_weights(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_file({"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight": torch.zeros(8, 4),
               "model.diffusion_model.input_blocks.1.1.proj_in.weight": torch.zeros(8, 4, 1, 1),
               "model.diffusion_model.input_blocks.1.1.norm.weight": torch.zeros(4),
               "model.diffusion_model.input_blocks.1.0.in_layers.2.weight": torch.zeros(4, 4, 3, 3),
               "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(4)}, str(path))
    shapes = tensor_shapes(path)
    assert shapes["model.diffusion_model.input_blocks.1.1.proj_in.weight"] == (8, 4, 1, 1)
    assert model_family(shapes) == "sd15"
    assert lora_parameter_count(shapes, 2) == 2 * (4 + 8) * 2  # to_q and proj_in; the norm and 3x3 conv not
    assert lora_parameter_count(shapes, 2, conv_dim=3) == 2 * (4 + 8) * 2 + 3 * (4 * 9 + 4)


def test_a_torn_or_foreign_file_is_refused_by_name(tmp_path):
    torn = tmp_path / "torn.safetensors"
    torn.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    with pytest.raises(ConfigError, match="torn.safetensors"):
        tensor_shapes(torn)
    with pytest.raises(ConfigError, match="model.ckpt: only a .safetensors"):
        tensor_shapes(tmp_path / "model.ckpt")
    assert model_family({"lora_unet_x.lora_down.weight": (4, 4)}) is None
