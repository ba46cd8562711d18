"""LoCon (kohya conv_dim): targets, per-module rank/alpha, kohya key names and shapes, round trip.

Expectations are kohya's rules (sd-scripts networks/lora.py ``create_modules``): with conv_dim, the
Linear and Conv2d layers inside ResnetBlock2D / Downsample2D / Upsample2D are added; a Conv2d whose
kernel is not 1x1 gets conv_dim / conv_alpha (lora_down is a conv with the layer's kernel, stride
and padding, lora_up a 1x1 conv), Linear and 1x1 convs get the network dim / alpha. Names are
``lora_unet_<module path with . -> _>`` in kohya's naming (SD1.5 diffusers, SDXL LDM). The real
U-Nets' names are checked against ComfyUI's own key map (recorded in
tests/data/comfyui_conv_block_modules.json; no ComfyUI needed here).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from peft.tuners.lora import LoraModel
from tiny_unets import TINY
from torch import nn

from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.lora_keys import (
    LoraKeyError,
    diffusers_to_ldm_conv_path,
    find_conv_block_targets,
    find_lora_targets,
    is_conv_block_path,
    kohya_key,
    kohya_to_peft_state,
    ldm_to_diffusers_conv_path,
    peft_to_kohya,
    up_blocks_with_attention,
)
from style_lora_trainer.style_lora_engine.lora_network import (
    build_lora_config,
    find_targets,
    install_extras,
)
from style_lora_trainer.style_lora_engine.train_options import TrainOptions

logging.getLogger("diffusers").setLevel(logging.ERROR)

RANK, ALPHA, CONV_DIM, CONV_ALPHA = 4, 2.0, 3, 1.5
ADAPTER = "style_lora"

KOHYA_BLOCKS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")


def make_unet(arch: str, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY[arch][0]).eval()


def locon_config(**options) -> TrainConfig:
    opts = dict(conv_dim=CONV_DIM, conv_alpha=CONV_ALPHA)
    opts.update(options)
    return TrainConfig(rank=RANK, alpha=ALPHA, options=TrainOptions(**opts))


def unet_inputs(arch: str) -> dict:
    gen = torch.Generator().manual_seed(2)
    kw = {"sample": torch.randn(1, 4, 16, 16, generator=gen), "timestep": 10,
          "encoder_hidden_states": torch.randn(1, 5, 32, generator=gen)}
    if arch == "sdxl":
        kw["added_cond_kwargs"] = {"text_embeds": torch.randn(1, 32, generator=gen),
                                   "time_ids": torch.randn(1, 6, generator=gen)}
    return kw


def run_unet(unet: nn.Module, arch: str) -> torch.Tensor:
    with torch.no_grad():
        return unet(**unet_inputs(arch)).sample


def kohya_rule_modules(unet: nn.Module) -> dict[str, nn.Module]:
    """kohya's create_modules, written out: Linear / Conv2d children of its conv target blocks."""
    out = {}
    for name, block in unet.named_modules():
        if type(block).__name__ in KOHYA_BLOCKS:
            for child_name, child in block.named_modules():
                if type(child).__name__ in ("Linear", "Conv2d"):
                    out[f"{name}.{child_name}"] = child
    return out


def locon_unet(arch: str, **options) -> tuple[UNet2DConditionModel, LoraConfig]:
    """A tiny U-Net with the LoCon adapter, every LoRA weight non-zero."""
    unet = make_unet(arch)
    cfg = build_lora_config(unet, locon_config(**options))
    LoraModel(unet, cfg, ADAPTER)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return unet, cfg


def export(unet: nn.Module, arch: str, naming_arch: str | None = None) -> dict[str, torch.Tensor]:
    return peft_to_kohya(get_peft_model_state_dict(unet, adapter_name=ADAPTER), alpha=ALPHA, conv_alpha=CONV_ALPHA,
                         arch=naming_arch or arch, layers_per_block=TINY[arch][1], source_naming="diffusers",
                         dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# targets and the peft config


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_default_options_give_todays_config_and_install_nothing(arch: str) -> None:
    unet = make_unet(arch)
    config = TrainConfig(rank=RANK, alpha=ALPHA)
    cfg = build_lora_config(unet, config)
    today = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=find_lora_targets(unet), init_lora_weights=True,
                       lora_dropout=0.0)
    assert cfg == today
    assert cfg.rank_pattern == {} and cfg.alpha_pattern == {}
    assert find_targets(unet).modules == tuple(find_lora_targets(unet))
    LoraModel(unet, cfg, ADAPTER)
    hooks_before = sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules())
    extras = install_extras(unet, config, generator=None)
    assert extras.parameters == [] and extras.state_dict() == {}
    assert extras.kohya_tensors(arch=arch, layers_per_block=TINY[arch][1], naming="diffusers",
                                dtype=torch.float16) == {}
    assert sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in unet.modules()) == hooks_before
    extras.remove()


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_locon_targets_follow_kohya_rules(arch: str) -> None:
    unet = make_unet(arch)
    expected = kohya_rule_modules(unet)
    assert sorted(find_conv_block_targets(unet)) == sorted(expected)
    kinds = {type(m).__name__ + ("3x3" if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) else "")
             for m in expected.values()}
    assert kinds >= {"Linear", "Conv2d3x3"}
    targets = find_targets(unet, conv_dim=CONV_DIM)
    assert set(targets.modules) == set(find_lora_targets(unet)) | set(expected)
    assert set(targets.conv_modules) == {p for p, m in expected.items()
                                         if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)}


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_peft_layers_get_kohya_rank_and_alpha(arch: str) -> None:
    unet, _ = locon_unet(arch)
    expected = kohya_rule_modules(make_unet(arch))
    modules = dict(unet.named_modules())
    seen = 0
    for path in list(expected) + find_lora_targets(make_unet(arch)):
        layer = modules[path]
        base = layer.get_base_layer()
        conv3 = isinstance(base, nn.Conv2d) and base.kernel_size != (1, 1)
        assert layer.r[ADAPTER] == (CONV_DIM if conv3 else RANK), path
        assert layer.scaling[ADAPTER] == pytest.approx((CONV_ALPHA / CONV_DIM) if conv3 else (ALPHA / RANK))
        if conv3:
            a = layer.lora_A[ADAPTER]
            assert (a.kernel_size, a.stride, a.padding) == (base.kernel_size, base.stride, base.padding)
            assert layer.lora_B[ADAPTER].kernel_size == (1, 1)
        seen += 1
    assert seen == len(expected) + len(find_lora_targets(make_unet(arch)))


def test_pattern_keys_hit_exactly_their_module() -> None:
    # peft matches rank_pattern keys as regexes against the end of the module path: escaped full
    # paths must not also hit a sibling whose name differs only where the path has a dot.
    unet = make_unet("sd15")
    cfg = build_lora_config(unet, locon_config())
    for key in cfg.rank_pattern:
        hits = [n for n, _ in unet.named_modules() if re.match(rf"(.*\.)?({key})$", n)]
        assert len(hits) == 1, (key, hits)


# --------------------------------------------------------------------------------------------
# kohya names and shapes


def test_sd15_kohya_names_are_diffusers_paths() -> None:
    unet, _ = locon_unet("sd15")
    out = export(unet, "sd15")
    expected = kohya_rule_modules(make_unet("sd15"))
    for path, module in expected.items():
        name = "lora_unet_" + path.replace(".", "_")
        down, up, alpha = out[f"{name}.lora_down.weight"], out[f"{name}.lora_up.weight"], out[f"{name}.alpha"]
        if isinstance(module, nn.Linear):
            assert down.shape == (RANK, module.in_features) and up.shape == (module.out_features, RANK)
            assert alpha.item() == ALPHA
        elif module.kernel_size == (1, 1):
            assert down.shape == (RANK, module.in_channels, 1, 1) and up.shape == (module.out_channels, RANK, 1, 1)
            assert alpha.item() == ALPHA
        else:
            assert down.shape == (CONV_DIM, module.in_channels, *module.kernel_size)
            assert up.shape == (module.out_channels, CONV_DIM, 1, 1)
            assert alpha.item() == CONV_ALPHA
    # spot checks of the well-known names
    for name in ("lora_unet_down_blocks_0_resnets_0_conv1", "lora_unet_down_blocks_0_resnets_0_time_emb_proj",
                 "lora_unet_down_blocks_0_downsamplers_0_conv", "lora_unet_mid_block_resnets_1_conv2",
                 "lora_unet_up_blocks_0_resnets_0_conv_shortcut", "lora_unet_up_blocks_0_upsamplers_0_conv"):
        assert f"{name}.lora_down.weight" in out, name
    n_attn = len(find_lora_targets(make_unet("sd15")))
    assert len(out) == 3 * (n_attn + len(expected))


def test_sdxl_kohya_names_use_ldm_blocks() -> None:
    unet, _ = locon_unet("sdxl")
    out = export(unet, "sdxl")
    names = {k.split(".")[0] for k in out}
    # tiny SDXL, L = 2: level 0 has no attention, up levels 0 and 1 do, level 2 does not.
    expected_present = {
        "lora_unet_input_blocks_1_0_in_layers_2", "lora_unet_input_blocks_1_0_emb_layers_1",
        "lora_unet_input_blocks_2_0_out_layers_3", "lora_unet_input_blocks_3_0_op",
        "lora_unet_input_blocks_4_0_skip_connection", "lora_unet_input_blocks_6_0_op",
        "lora_unet_middle_block_0_in_layers_2", "lora_unet_middle_block_2_out_layers_3",
        "lora_unet_output_blocks_0_0_skip_connection", "lora_unet_output_blocks_2_2_conv",
        "lora_unet_output_blocks_5_2_conv", "lora_unet_output_blocks_8_0_emb_layers_1",
    }
    assert expected_present <= names
    assert not any("resnets" in n or "samplers" in n or "down_blocks" in n for n in names)
    assert "lora_unet_output_blocks_8_1_conv" not in names  # the last level has no upsampler
    assert out["lora_unet_input_blocks_3_0_op.lora_down.weight"].shape == (CONV_DIM, 32, 3, 3)
    assert out["lora_unet_input_blocks_3_0_op.alpha"].item() == CONV_ALPHA
    assert out["lora_unet_input_blocks_1_0_emb_layers_1.lora_down.weight"].dim() == 2
    assert out["lora_unet_input_blocks_1_0_emb_layers_1.alpha"].item() == ALPHA


def test_upsampler_slot_depends_on_attention() -> None:
    assert diffusers_to_ldm_conv_path("up_blocks.0.upsamplers.0.conv", 2, up_attention={0}) == "output_blocks.2.2.conv"
    assert diffusers_to_ldm_conv_path("up_blocks.0.upsamplers.0.conv", 2, up_attention={1}) == "output_blocks.2.1.conv"
    with pytest.raises(LoraKeyError, match="up_attention"):
        diffusers_to_ldm_conv_path("up_blocks.0.upsamplers.0.conv", 2)
    assert ldm_to_diffusers_conv_path("output_blocks.2.1.conv", 2) == "up_blocks.0.upsamplers.0.conv"
    assert ldm_to_diffusers_conv_path("output_blocks.5.2.conv", 2) == "up_blocks.1.upsamplers.0.conv"
    assert up_blocks_with_attention(["up_blocks.1.attentions.0.proj_in", "up_blocks.0.resnets.0.conv1"]) == {1}
    # kohya_key infers nothing: peft_to_kohya passes what the state's keys show
    with pytest.raises(LoraKeyError):
        kohya_key("up_blocks.0.upsamplers.0.conv", "sdxl", 2)
    assert kohya_key("up_blocks.0.upsamplers.0.conv", "sd15", 2) == "lora_unet_up_blocks_0_upsamplers_0_conv"


@pytest.mark.parametrize("bad", ["input_blocks.3.0.in_layers.2", "input_blocks.2.0.op", "output_blocks.1.1.conv",
                                 "input_blocks.0.0", "middle_block.1.proj_in", "out.2"])
def test_ldm_conv_paths_reject_non_locon(bad: str) -> None:
    # input_blocks.3 is SD's first downsampler (no ResBlock), input_blocks.2 a ResBlock (no op),
    # output_blocks.1 not the last of its level (no upsampler).
    with pytest.raises(LoraKeyError):
        ldm_to_diffusers_conv_path(bad, 2)


@pytest.mark.parametrize("bad", ["down_blocks.0.resnets.2.conv1", "up_blocks.0.resnets.3.conv1",
                                 "down_blocks.0.resnets.0.norm1", "conv_in", "mid_block.resnets.2.conv1"])
def test_diffusers_conv_paths_reject_non_locon(bad: str) -> None:
    with pytest.raises(LoraKeyError):
        diffusers_to_ldm_conv_path(bad, 2, up_attention=set())


def test_locon_needs_conv_alpha_in_the_file() -> None:
    unet, _ = locon_unet("sd15")
    with pytest.raises(LoraKeyError, match="conv_alpha"):
        peft_to_kohya(get_peft_model_state_dict(unet, adapter_name=ADAPTER), alpha=ALPHA, arch="sd15",
                      layers_per_block=1, source_naming="diffusers", dtype=torch.float32)


# --------------------------------------------------------------------------------------------
# round trip


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
@pytest.mark.parametrize("naming_arch", ["sd15", "sdxl"])
def test_round_trip_through_kohya_file(arch: str, naming_arch: str) -> None:
    lpb = TINY[arch][1]
    unet, cfg = locon_unet(arch)
    original = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    kohya = export(unet, arch, naming_arch)
    targets = find_targets(make_unet(arch), CONV_DIM)
    back, alphas, dora = kohya_to_peft_state(kohya, targets.modules, layers_per_block=lpb, naming="diffusers")
    assert dora == {}
    assert set(back) == set(original)
    for key, value in original.items():
        assert torch.equal(back[key], value), key
    assert {p for p, a in alphas.items() if a == CONV_ALPHA} == set(targets.conv_modules)
    assert {a for p, a in alphas.items() if p not in targets.conv_modules} == {ALPHA}
    fresh = make_unet(arch)
    LoraModel(fresh, build_lora_config(fresh, locon_config()), ADAPTER)
    result = set_peft_model_state_dict(fresh, back, adapter_name=ADAPTER)
    assert not [k for k in result.unexpected_keys if "lora_" in k]
    assert torch.equal(run_unet(fresh, arch), run_unet(unet, arch))
    # the LoCon layers matter for the output
    plain = make_unet(arch)
    assert not torch.allclose(run_unet(plain, arch), run_unet(unet, arch))


def test_round_trip_rejects_foreign_names() -> None:
    unet, _ = locon_unet("sd15")
    kohya = export(unet, "sd15")
    kohya["lora_unet_down_blocks_7_resnets_0_conv1.lora_down.weight"] = torch.zeros(1, 1, 3, 3)
    with pytest.raises(LoraKeyError, match="does not match"):
        kohya_to_peft_state(kohya, find_targets(make_unet("sd15"), 1).modules, layers_per_block=1, naming="diffusers")


# --------------------------------------------------------------------------------------------
# ComfyUI's real U-Nets (recorded module list and LoRA key map)

DATA = json.loads((Path(__file__).parents[1] / "data" / "comfyui_conv_block_modules.json").read_text())
PREFIX = "diffusion_model."
LOCON_COUNTS = {"sd15": 86, "sdxl": 66}  # 278 / 788 with the transformers' 192 / 722, as kohya logs


def _comfy_modules(arch: str) -> list[dict]:
    return DATA[arch]["conv_block_modules"]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_comfyui_accepts_every_locon_name(arch: str) -> None:
    key_map = DATA[arch]["lora_unet_keys"]
    modules = _comfy_modules(arch)
    assert len(modules) == LOCON_COUNTS[arch]
    ldm_paths = [m["path"][len(PREFIX):] for m in modules]
    diffusers_paths = [ldm_to_diffusers_conv_path(p, 2) for p in ldm_paths]
    up_attention = {0, 1} if arch == "sdxl" else {1, 2, 3}
    names = set()
    for module, ldm, diff in zip(modules, ldm_paths, diffusers_paths, strict=True):
        assert is_conv_block_path(ldm, "ldm") and is_conv_block_path(diff, "diffusers")
        weight = module["path"] + ".weight"
        # both spellings ComfyUI knows for this weight are ours, from either module naming
        assert key_map["lora_unet_" + ldm.replace(".", "_")] == weight
        assert key_map["lora_unet_" + diff.replace(".", "_")] == weight
        assert diffusers_to_ldm_conv_path(diff, 2, up_attention) == ldm
        from_ldm = kohya_key(ldm, arch, 2, naming="ldm")
        from_diff = kohya_key(diff, arch, 2, naming="diffusers", up_attention=up_attention)
        assert from_ldm == from_diff and key_map[from_ldm] == weight
        names.add(from_ldm)
    assert len(names) == LOCON_COUNTS[arch]
    assert len(key_map) == 2 * LOCON_COUNTS[arch]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_comfyui_locon_file_from_ldm_paths(arch: str) -> None:
    """The file the ComfyUI backend writes (LDM module paths): every key is one ComfyUI loads, and
    the shapes compose to the layer's weight shape (ComfyUI's mm(up.flatten(1), down.flatten(1)))."""
    key_map = DATA[arch]["lora_unet_keys"]
    by_weight = {m["path"] + ".weight": m for m in _comfy_modules(arch)}
    peft_state = {}
    for m in _comfy_modules(arch):
        path = m["path"][len(PREFIX):]
        conv3 = m["type"] == "Conv2d3x3"
        r = CONV_DIM if conv3 else RANK
        if m["type"] == "Linear":
            down, up = (r, m["in"]), (m["out"], r)
        else:
            k = 3 if conv3 else 1
            down, up = (r, m["in"], k, k), (m["out"], r, 1, 1)
        peft_state[f"{path}.lora_A.weight"] = torch.zeros(down)
        peft_state[f"{path}.lora_B.weight"] = torch.zeros(up)
    out = peft_to_kohya(peft_state, alpha=ALPHA, conv_alpha=CONV_ALPHA, arch=arch, layers_per_block=2,
                        source_naming="ldm", dtype=torch.float16)
    assert len(out) == 3 * LOCON_COUNTS[arch]
    for key, tensor in out.items():
        name, suffix = key.split(".", 1)
        module = by_weight[key_map[name]]
        conv3 = module["type"] == "Conv2d3x3"
        if suffix == "alpha":
            assert tensor.item() == (CONV_ALPHA if conv3 else ALPHA)
        elif suffix == "lora_down.weight":
            assert tensor.shape[:2] == ((CONV_DIM if conv3 else RANK), module["in"])
            assert tensor.shape[2:] == ((3, 3) if conv3 else (1, 1) if module["type"] == "Conv2d1x1" else ())
        else:
            assert suffix == "lora_up.weight" and tensor.shape[0] == module["out"]


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_find_conv_block_targets_on_comfyui_paths(arch: str) -> None:
    """ComfyUI's class names (ResBlock / Downsample / Upsample) and module layout, on the meta device."""
    classes = {name: type(name, (nn.Module,), {}) for name in ("ResBlock", "Downsample", "Upsample")}
    root = nn.Module()

    def node(parts: list[str], cls: type | None) -> nn.Module:
        current = root
        for i, part in enumerate(parts):
            child = current._modules.get(part)
            if child is None:
                child = cls() if (cls is not None and i == len(parts) - 1) else nn.Module()
                current.add_module(part, child)
            current = child
        return current

    paths = []
    for m in _comfy_modules(arch):
        path = m["path"][len(PREFIX):]
        parts = path.split(".")
        if parts[-1] in ("op", "conv"):
            block = parts[:-1]
            cls = classes["Downsample" if parts[-1] == "op" else "Upsample"]
        else:
            block = parts[:2] if parts[0] == "middle_block" else parts[:3]
            cls = classes["ResBlock"]
        node(block, cls)
        parent = node(parts[:-1], None)
        if m["type"] == "Linear":
            layer = nn.Linear(m["in"], m["out"], device="meta")
        else:
            k = 3 if m["type"] == "Conv2d3x3" else 1
            layer = nn.Conv2d(m["in"], m["out"], k, device="meta")
        parent.add_module(parts[-1], layer)
        paths.append(path)
    root.add_module("time_embed", nn.Sequential(nn.Linear(320, 1280, device="meta")))
    root.add_module("out", nn.Sequential(nn.GroupNorm(32, 320, device="meta"), nn.SiLU(),
                                         nn.Conv2d(320, 4, 3, device="meta")))
    assert sorted(find_conv_block_targets(root)) == sorted(paths)
    targets = find_targets(root, conv_dim=8)
    assert set(targets.conv_modules) == {m["path"][len(PREFIX):] for m in _comfy_modules(arch)
                                         if m["type"] == "Conv2d3x3"}


def test_aliased_layer_is_refused() -> None:
    class Downsample2D(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            conv = nn.Conv2d(4, 4, 3)
            self.Conv2d_0 = conv
            self.conv = conv

    root = nn.Module()
    root.down = Downsample2D()
    with pytest.raises(LoraKeyError, match="same layer"):
        find_conv_block_targets(root)


# --------------------------------------------------------------------------------------------
# the trainer's flow, end to end on a tiny U-Net


def test_trainer_flow_with_every_option() -> None:
    """build_lora_config -> LoraModel -> install_extras -> optimizer over LoRA + DoRA params ->
    steps (gradient checkpointing on) -> file tensors and resume state -> remove + unload."""
    from diffusers.training_utils import cast_training_params

    config = locon_config(use_dora=True, network_dropout=0.1, rank_dropout=0.1, module_dropout=0.1)
    unet = make_unet("sd15").train()
    unet.enable_gradient_checkpointing()
    lora_model = LoraModel(unet, build_lora_config(unet, config), ADAPTER)
    lora_params = [p for n, p in unet.named_parameters() if "lora_" in n]
    cast_training_params(unet, dtype=torch.float32)
    rng = torch.Generator().manual_seed(0)
    extras = install_extras(unet, config, rng)
    assert extras.parameters and not any(p is q for p in extras.parameters for q in lora_params)
    optimizer = torch.optim.AdamW(lora_params + extras.parameters, lr=1e-2)
    start = [p.detach().clone() for p in extras.parameters]
    kw = unet_inputs("sd15")
    for _ in range(3):
        loss = unet(**kw).sample.square().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lora_params + extras.parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        assert torch.isfinite(loss)
    assert any(not torch.equal(a, p) for a, p in zip(start, extras.parameters, strict=True))
    peft_state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
    tensors = peft_to_kohya(peft_state, alpha=ALPHA, conv_alpha=CONV_ALPHA, arch="sd15", layers_per_block=1,
                            source_naming="diffusers", dtype=torch.float16)
    tensors.update(extras.kohya_tensors(arch="sd15", layers_per_block=1, naming="diffusers", dtype=torch.float16))
    n_modules = len(find_targets(make_unet("sd15"), CONV_DIM).modules)
    assert len(tensors) == 4 * n_modules
    resume = extras.state_dict()
    assert len(resume) == n_modules and all(v.dtype == torch.float32 for v in resume.values())
    # resume into a fresh run: same outputs in eval mode (no dropout)
    fresh = make_unet("sd15")
    LoraModel(fresh, build_lora_config(fresh, config), ADAPTER)
    set_peft_model_state_dict(fresh, peft_state, adapter_name=ADAPTER)
    fresh_extras = install_extras(fresh, config, torch.Generator().manual_seed(0))
    fresh_extras.load_state_dict(resume)
    fresh.eval()  # (peft's new LoRA layers start in training mode, where the dropouts act)
    unet.eval()
    torch.testing.assert_close(run_unet(fresh, "sd15"), run_unet(unet, "sd15"))
    # the file alone reproduces it too
    back, _, dora = kohya_to_peft_state({k: v.float() for k, v in tensors.items()},
                                        find_targets(make_unet("sd15"), CONV_DIM).modules,
                                        layers_per_block=1, naming="diffusers")
    assert len(dora) == n_modules
    extras.remove()
    fresh_extras.remove()
    lora_model.unload()
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in unet.modules())
