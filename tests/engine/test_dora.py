"""DoRA (LyCORIS dora_wd, input-axis): training forward == what ComfyUI's LoraLoader renders.

The reference is ComfyUI's own formula, copied below from comfy/weight_adapter/base.py
``weight_decompose`` (ComfyUI 0.33.0) and the LoRA diff of comfy/weight_adapter/lora.py
``LoRAAdapter.calculate_weight``; only ``comfy.model_management.cast_to_device`` is replaced by
``Tensor.to``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict
from peft.tuners.lora import LoraModel
from tiny_unets import TINY
from torch import nn

from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.lora_keys import find_lora_targets, peft_to_kohya
from style_lora_trainer.style_lora_engine.lora_network import (
    DORA_EPS,
    build_lora_config,
    install_dora,
    install_extras,
)
from style_lora_trainer.style_lora_engine.train_options import TrainOptions

ADAPTER = "style_lora"
RANK, ALPHA = 3, 2.0


# --- verbatim from comfy/weight_adapter/base.py (ComfyUI 0.33.0), cast_to_device -> .to --------
def weight_decompose(
    dora_scale, weight, lora_diff, alpha, strength, intermediate_dtype, function
):
    dora_scale = dora_scale.to(weight.device, intermediate_dtype)
    lora_diff *= alpha
    weight_calc = weight + function(lora_diff).type(weight.dtype)

    wd_on_output_axis = dora_scale.shape[0] == weight_calc.shape[0]
    if wd_on_output_axis:
        weight_norm = (
            weight.reshape(weight.shape[0], -1)
            .norm(dim=1, keepdim=True)
            .reshape(weight.shape[0], *[1] * (weight.dim() - 1))
        )
    else:
        weight_norm = (
            weight_calc.transpose(0, 1)
            .reshape(weight_calc.shape[1], -1)
            .norm(dim=1, keepdim=True)
            .reshape(weight_calc.shape[1], *[1] * (weight_calc.dim() - 1))
            .transpose(0, 1)
        )
    weight_norm = weight_norm + torch.finfo(weight.dtype).eps

    weight_calc *= (dora_scale / weight_norm).type(weight.dtype)
    if strength != 1.0:
        weight_calc -= weight
        weight += strength * (weight_calc)
    else:
        weight[:] = weight_calc
    return weight
# ------------------------------------------------------------------------------------------------


def comfy_render(weight: torch.Tensor, up: torch.Tensor, down: torch.Tensor, alpha: float,
                 dora_scale: torch.Tensor) -> torch.Tensor:
    """ComfyUI's LoRAAdapter.calculate_weight for a kohya LoRA with dora_scale at strength 1.0
    (mat1 = lora_up, mat2 = lora_down, alpha = file alpha / rank)."""
    weight = weight.clone().float()
    mat1, mat2 = up.float(), down.float()
    alpha = alpha / mat2.shape[0]
    lora_diff = torch.mm(mat1.flatten(start_dim=1), mat2.flatten(start_dim=1)).reshape(weight.shape)
    return weight_decompose(dora_scale, weight, lora_diff, alpha, 1.0, torch.float32, lambda a: a)


class Holder(nn.Module):
    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), (2, 7, 6)),
    "conv3x3": (lambda: nn.Conv2d(4, 5, 3, stride=2, padding=1), (2, 4, 9, 9)),
    "conv1x1": (lambda: nn.Conv2d(4, 5, 1), (2, 4, 5, 5)),
}


def dora_layer(kind: str, seed: int = 0, randomize_m: bool = True):  # noqa: ANN201
    torch.manual_seed(seed)
    make, x_shape = LAYERS[kind]
    holder = Holder(make())
    LoraModel(holder, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["layer"], init_lora_weights=True),
              ADAPTER)
    dora = install_dora(holder)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in holder.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        if randomize_m:
            for m in dora.parameters:
                m.mul_(1.0 + 0.5 * torch.rand(m.shape, generator=gen))
    x = torch.randn(x_shape, generator=gen)
    return holder, dora, x


def plain_forward(layer: nn.Module, weight: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    base = layer.get_base_layer()
    if isinstance(base, nn.Linear):
        return F.linear(x, weight, base.bias)
    return F.conv2d(x, weight, base.bias, base.stride, base.padding)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_training_forward_matches_comfyui_weight_decompose(kind: str) -> None:
    holder, dora, x = dora_layer(kind)
    layer = holder.layer
    with torch.no_grad():
        y = holder(x)
        m = dora.parameters[0]
        expected_shape = (1, m.shape[1], 1, 1) if kind.startswith("conv") else (1, m.shape[1])
        assert tuple(m.shape) == expected_shape and m.dtype == torch.float32
        merged = comfy_render(layer.get_base_layer().weight, layer.lora_B[ADAPTER].weight,
                              layer.lora_A[ADAPTER].weight, ALPHA, m)
        ref = plain_forward(layer, merged, x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    # DoRA is not a no-op here, and it is not peft's output-axis DoRA either
    with torch.no_grad():
        lora_only = plain_forward(layer, layer.get_base_layer().weight + layer.get_delta_weight(ADAPTER), x)
    assert not torch.allclose(y, lora_only, atol=1e-3)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_init_leaves_the_layer_unchanged(kind: str) -> None:
    torch.manual_seed(0)
    make, x_shape = LAYERS[kind]
    holder = Holder(make())
    x = torch.randn(x_shape)
    with torch.no_grad():
        before = holder(x)
    LoraModel(holder, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["layer"], init_lora_weights=True),
              ADAPTER)
    dora = install_dora(holder)
    with torch.no_grad():
        assert torch.equal(holder(x), before)
    base = holder.layer.get_base_layer().weight.detach()
    norms = base.transpose(0, 1).reshape(base.shape[1], -1).norm(dim=1)
    torch.testing.assert_close(dora.parameters[0].flatten(), norms + DORA_EPS)


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_gradients_equal_the_explicit_merged_weight(kind: str) -> None:
    """The norm is computed without forming W + dW; its gradient must be the exact one."""
    holder, dora, x = dora_layer(kind, seed=5)
    layer = holder.layer
    params = [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight, dora.parameters[0]]
    for p in params:
        p.requires_grad_(True)
    holder(x).square().sum().backward()
    ours = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    a, b, m = params
    w = layer.get_base_layer().weight.detach()
    delta = (b.flatten(1) @ a.flatten(1)).reshape(w.shape) * layer.scaling[ADAPTER]
    merged = w + delta
    norm = merged.transpose(0, 1).reshape(w.shape[1], -1).norm(dim=1)
    shape = (1, -1, 1, 1) if kind.startswith("conv") else (1, -1)
    weight = merged * (m.reshape(shape) / (norm.reshape(shape) + DORA_EPS))
    plain_forward(layer, weight, x).square().sum().backward()
    for got, p in zip(ours, params, strict=True):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-5)


def test_half_precision_base_under_autocast() -> None:
    holder, dora, x = dora_layer("linear", seed=7)
    layer = holder.layer
    with torch.no_grad():
        merged = comfy_render(layer.get_base_layer().weight, layer.lora_B[ADAPTER].weight,
                              layer.lora_A[ADAPTER].weight, ALPHA, dora.parameters[0])
        ref = plain_forward(layer, merged, x)
        layer.get_base_layer().to(torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = holder(x.to(torch.bfloat16))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), ref, rtol=3e-2, atol=3e-2)


def test_state_dict_round_trip_and_remove() -> None:
    holder, dora, x = dora_layer("conv3x3", seed=9)
    with torch.no_grad():
        y = holder(x)
    state = dora.state_dict()
    assert list(state) == ["layer.dora_scale"]
    holder2, dora2, _ = dora_layer("conv3x3", seed=9, randomize_m=False)
    with torch.no_grad():
        assert not torch.allclose(holder2(x), y)
    dora2.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(holder2(x), y)
    with pytest.raises(Exception, match="DoRA state"):
        dora2.load_state_dict({"other.dora_scale": state["layer.dora_scale"]})
    with pytest.raises(Exception, match="shape"):
        dora2.load_state_dict({"layer.dora_scale": state["layer.dora_scale"][:, :2]})
    dora2.remove()
    layer = holder2.layer
    with torch.no_grad():
        plain = plain_forward(layer, layer.get_base_layer().weight + layer.get_delta_weight(ADAPTER), x)
        torch.testing.assert_close(holder2(x), plain)


def test_disabled_adapter_skips_dora() -> None:
    holder, dora, x = dora_layer("linear", seed=11)
    holder.layer._disable_adapters = True
    with torch.no_grad():
        torch.testing.assert_close(holder(x), holder.layer.get_base_layer()(x))


# --------------------------------------------------------------------------------------------
# on a U-Net: the extras API and the kohya keys



@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("conv_dim", [0, 2])
def test_unet_dora_keys_pair_with_the_lora_keys(arch: str, conv_dim: int) -> None:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY[arch][0])
    config = TrainConfig(rank=4, alpha=2.0, options=TrainOptions(use_dora=True, conv_dim=conv_dim, conv_alpha=1.0))
    lora_model = LoraModel(unet, build_lora_config(unet, config), ADAPTER)
    extras = install_extras(unet, config)
    n_layers = len(find_lora_targets(unet)) if not conv_dim else None
    if n_layers is not None:
        assert len(extras.parameters) == n_layers
    lpb = TINY[arch][1]
    lora = peft_to_kohya(get_peft_model_state_dict(unet, adapter_name=ADAPTER), alpha=2.0, conv_alpha=1.0, arch=arch,
                         layers_per_block=lpb, source_naming="diffusers", dtype=torch.float16)
    scales = extras.kohya_tensors(arch=arch, layers_per_block=lpb, naming="diffusers", dtype=torch.float16)
    names = {k.rsplit(".", 2)[0] for k in lora if k.endswith(".lora_down.weight")}
    assert {k[: -len(".dora_scale")] for k in scales} == names
    for key, tensor in scales.items():
        down = lora[key.replace(".dora_scale", ".lora_down.weight")]
        assert tensor.dtype == torch.float16
        assert tuple(tensor.shape) == ((1, down.shape[1], 1, 1) if down.dim() == 4 else (1, down.shape[1]))
    assert set(extras.state_dict()) == {n for n, _ in extras.named_parameters()}
    extras.remove()
    # given the LoraModel instead of the U-Net: the same module paths
    other = install_extras(lora_model, config)
    assert set(other.state_dict()) == set(extras.state_dict())
    other.remove()


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_file_renders_like_the_trained_unet_layers(arch: str) -> None:
    """Through the kohya file: each layer's lora_down / lora_up / alpha / dora_scale, rendered by
    ComfyUI's formula, gives that layer's training output (Linear, 1x1 and 3x3 convs, upsamplers)."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**TINY[arch][0])
    config = TrainConfig(rank=4, alpha=2.0, options=TrainOptions(use_dora=True, conv_dim=2, conv_alpha=1.5))
    LoraModel(unet, build_lora_config(unet, config), ADAPTER)
    extras = install_extras(unet, config)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
        for m in extras.parameters:
            m.mul_(1.0 + 0.5 * torch.rand(m.shape, generator=gen))
    lpb = TINY[arch][1]
    tensors = peft_to_kohya(get_peft_model_state_dict(unet, adapter_name=ADAPTER), alpha=2.0, conv_alpha=1.5,
                            arch=arch, layers_per_block=lpb, source_naming="diffusers", dtype=torch.float32)
    tensors.update(extras.kohya_tensors(arch=arch, layers_per_block=lpb, naming="diffusers", dtype=torch.float32))
    layers = dict(unet.named_modules())
    paths = [p for p in layers if p.endswith(("attn1.to_q", "proj_in", "conv1", "time_emb_proj", "conv_shortcut",
                                              "downsamplers.0.conv", "upsamplers.0.conv"))]
    from style_lora_trainer.style_lora_engine.lora_keys import kohya_key, up_blocks_with_attention

    up_attention = up_blocks_with_attention(layers)
    for path in paths:
        layer = layers[path]
        name = kohya_key(path, arch, lpb, up_attention=up_attention)
        merged = comfy_render(layer.get_base_layer().weight, tensors[f"{name}.lora_up.weight"],
                              tensors[f"{name}.lora_down.weight"], tensors[f"{name}.alpha"].item(),
                              tensors[f"{name}.dora_scale"])
        base = layer.get_base_layer()
        if isinstance(base, nn.Linear):
            x = torch.randn(2, 3, base.in_features, generator=gen)
        else:
            x = torch.randn(2, base.in_channels, 8, 8, generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(layer(x), plain_forward(layer, merged, x), rtol=1e-5, atol=1e-5)
    assert any("upsamplers" in p for p in paths) and any("conv1" in p for p in paths)
    extras.remove()
