"""kohya LoRA targets and key names, checked against diffusers' own kohya conversion and loaders."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DConditionModel
from peft import LoraConfig, get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import save_file
from torch import nn

from style_lora_trainer.dev.kohya_readers import (
    kohya_alphas,
    kohya_name_to_path,
    kohya_to_peft,
    load_unet_config,
    unet_config_path,
)
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError
from style_lora_trainer.style_lora_engine.lora_keys import (
    KOHYA_TARGET_NAMES,
    LoraKeyError,
    diffusers_to_ldm_path,
    find_lora_targets,
    kohya_key,
    ldm_to_diffusers_path,
    peft_to_kohya,
)

logging.getLogger("diffusers").setLevel(logging.ERROR)

RANK, ALPHA = 4, 2.0

SD15_TINY = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
)
# SDXL-shaped: first level without attention (as SDXL), two attention levels, linear projections,
# more transformer layers deeper down, text_time added conditioning (pooled 32 + 6 time ids x 8).
SDXL_TINY = dict(
    sample_size=16,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64, 64),
    layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 1, 2),
    cross_attention_dim=32,
    attention_head_dim=(2, 4, 4),
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=8 * 6 + 32,
)
TINY = {"sd15": (SD15_TINY, 1), "sdxl": (SDXL_TINY, 2)}


def make_unet(arch: str, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**TINY[arch][0]).eval()


def lora_unet(arch: str) -> tuple[UNet2DConditionModel, list[str]]:
    """A tiny U-Net with kohya's target set as a peft adapter whose weights are all non-zero."""
    unet = make_unet(arch)
    targets = find_lora_targets(unet)
    unet.add_adapter(
        LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets, init_lora_weights="gaussian")
    )
    # gaussian init leaves lora_B at zero (a no-op LoRA); make it matter for the output checks.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return unet, targets


def unet_inputs(arch: str) -> dict:
    gen = torch.Generator().manual_seed(2)
    kw = {
        "sample": torch.randn(1, 4, 16, 16, generator=gen),
        "timestep": 10,
        "encoder_hidden_states": torch.randn(1, 5, 32, generator=gen),
    }
    if arch == "sdxl":
        kw["added_cond_kwargs"] = {
            "text_embeds": torch.randn(1, 32, generator=gen),
            "time_ids": torch.randn(1, 6, generator=gen),
        }
    return kw


def run_unet(unet: nn.Module, arch: str) -> torch.Tensor:
    with torch.no_grad():
        return unet(**unet_inputs(arch)).sample


def export(unet: nn.Module, arch: str, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    return peft_to_kohya(
        get_peft_model_state_dict(unet),
        alpha=ALPHA,
        arch=arch,
        layers_per_block=TINY[arch][1],
        source_naming="diffusers",
        dtype=dtype,
    )


# --------------------------------------------------------------------------------------------
# targets


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_targets_are_kohya_set(arch: str) -> None:
    unet = make_unet(arch)
    targets = find_lora_targets(unet)
    transformers = [n for n, m in unet.named_modules() if type(m).__name__ == "Transformer2DModel"]
    blocks = [n for n, m in unet.named_modules() if type(m).__name__ == "BasicTransformerBlock"]
    assert len(targets) == 2 * len(transformers) + 10 * len(blocks)
    assert len(set(targets)) == len(targets)
    for t in targets:
        assert any(t.endswith("." + s) for s in KOHYA_TARGET_NAMES), t
        assert ".attentions." in t
    mods = dict(unet.named_modules())
    proj_in = mods[targets[0]]
    assert targets[0].endswith("proj_in")
    if arch == "sd15":  # use_linear_projection False -> 1x1 conv, as in SD1.5
        assert isinstance(proj_in, nn.Conv2d) and proj_in.kernel_size == (1, 1)
    else:  # SDXL uses linear projections
        assert isinstance(proj_in, nn.Linear)
    # Already wrapped by peft: same answer (the wrapper path, not base_layer / lora_A.default).
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets))
    assert find_lora_targets(unet) == targets


def test_real_unet_target_counts_on_meta_device() -> None:
    from accelerate import init_empty_weights

    counts = {}
    for arch in ("sd15", "sdxl"):
        assert unet_config_path(arch).is_file()
        with init_empty_weights():  # no weight allocation
            unet = UNet2DConditionModel.from_config(load_unet_config(arch))
        assert next(unet.parameters()).device.type == "meta"
        targets = find_lora_targets(unet)
        counts[arch] = len(targets)
        if arch == "sdxl":
            keys = [kohya_key(t, "sdxl", 2) for t in targets]
            assert all(k.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_1_",
                                     "lora_unet_output_blocks_")) for k in keys)
            assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in keys
            assert "lora_unet_middle_block_1_transformer_blocks_9_ff_net_2" in keys
            assert "lora_unet_output_blocks_5_1_proj_out" in keys
        else:
            assert kohya_key(targets[0], "sd15", 2) == "lora_unet_down_blocks_0_attentions_0_proj_in"
        del unet
    assert counts == {"sd15": 192, "sdxl": 722}  # kohya's module counts


class SpatialTransformer(nn.Module):
    """Stand-in with ComfyUI's LDM class name, holding a diffusers transformer's children."""

    def __init__(self, source: nn.Module) -> None:
        super().__init__()
        for name, child in source.named_children():
            self.add_module(name, child)


def fake_ldm_unet(unet: nn.Module, lpb: int) -> nn.Module:
    """An LDM-named module tree (``input_blocks.N.1`` ...) plus non-target layers around it."""
    root = nn.Module()
    root.time_embed = nn.Sequential(nn.Linear(4, 8), nn.SiLU(), nn.Linear(8, 8))
    for name in ("input_blocks", "middle_block", "output_blocks"):
        root.add_module(name, nn.ModuleDict())
    for name, module in unet.named_modules():
        if type(module).__name__ != "Transformer2DModel":
            continue
        parts = diffusers_to_ldm_path(name, lpb).split(".")
        top = getattr(root, parts[0])
        if parts[0] == "middle_block":
            top["1"] = SpatialTransformer(module)
            top["0"] = nn.Conv2d(4, 4, 3)  # resnet-ish: not a target
        else:
            slot = top[parts[1]] if parts[1] in top else nn.ModuleDict()
            slot["0"] = nn.Sequential(nn.Conv2d(4, 4, 3), nn.Linear(4, 4))  # ResBlock: not a target
            slot["1"] = SpatialTransformer(module)
            top[parts[1]] = slot
    return root


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_ldm_named_unet_gives_same_kohya_keys(arch: str) -> None:
    lpb = TINY[arch][1]
    unet = make_unet(arch)
    diff_targets = find_lora_targets(unet)
    ldm_targets = find_lora_targets(fake_ldm_unet(make_unet(arch), lpb))
    assert len(ldm_targets) == len(diff_targets)
    assert all(t.split(".")[0] in ("input_blocks", "middle_block", "output_blocks") for t in ldm_targets)
    for kohya_arch in ("sd15", "sdxl"):
        from_diffusers = sorted(kohya_key(t, kohya_arch, lpb, naming="diffusers") for t in diff_targets)
        from_ldm = sorted(kohya_key(t, kohya_arch, lpb, naming="ldm") for t in ldm_targets)
        assert from_diffusers == from_ldm


# --------------------------------------------------------------------------------------------
# name mapping


def test_path_mapping_examples() -> None:
    # SD1.5 / SDXL (L = 2): the well-known kohya SDXL names.
    assert diffusers_to_ldm_path("down_blocks.1.attentions.0", 2) == "input_blocks.4.1"
    assert diffusers_to_ldm_path("down_blocks.2.attentions.1.proj_in", 2) == "input_blocks.8.1.proj_in"
    assert diffusers_to_ldm_path("down_blocks.0.attentions.0.proj_in", 2) == "input_blocks.1.1.proj_in"
    assert diffusers_to_ldm_path("mid_block.attentions.0.proj_out", 2) == "middle_block.1.proj_out"
    assert diffusers_to_ldm_path("up_blocks.0.attentions.2.transformer_blocks.3.attn2.to_k", 2) == (
        "output_blocks.2.1.transformer_blocks.3.attn2.to_k"
    )
    assert diffusers_to_ldm_path("up_blocks.3.attentions.2.proj_out", 2) == "output_blocks.11.1.proj_out"
    # L = 1
    assert diffusers_to_ldm_path("down_blocks.1.attentions.0", 1) == "input_blocks.3.1"
    assert diffusers_to_ldm_path("up_blocks.1.attentions.1", 1) == "output_blocks.3.1"
    assert ldm_to_diffusers_path("input_blocks.4.1.transformer_blocks.0.attn1.to_q", 2) == (
        "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    )
    assert kohya_key("down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q", "sdxl", 2) == (
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q"
    )
    assert kohya_key("input_blocks.4.1.transformer_blocks.0.attn1.to_out.0", "sd15", 2, naming="ldm") == (
        "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn1_to_out_0"
    )


@pytest.mark.parametrize(
    "bad",
    [
        "conv_in",
        "down_blocks.0.resnets.0.conv1",
        "down_blocks.0.attentions.2.proj_in",  # only 2 attentions per down block at L=2
    ],
)
def test_diffusers_to_ldm_rejects_non_attention(bad: str) -> None:
    with pytest.raises(LoraKeyError):
        diffusers_to_ldm_path(bad, 2)


@pytest.mark.parametrize(
    "bad",
    ["input_blocks.0.0", "input_blocks.3.1.proj_in", "output_blocks.2.1.conv", "time_embed.0"],
)
def test_ldm_to_diffusers_rejects_non_attention(bad: str) -> None:
    # input_blocks.3 is SD's first downsampler, output_blocks.2.1 an upsampler.
    with pytest.raises(StyleLoRAError):
        ldm_to_diffusers_path(bad, 2)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_mapping_round_trips_and_matches_diffusers_sgm_mapping(arch: str) -> None:
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    lpb = TINY[arch][1]
    unet = make_unet(arch)
    targets = find_lora_targets(unet)
    for t in targets:
        assert ldm_to_diffusers_path(diffusers_to_ldm_path(t, lpb), lpb) == t
        for kohya_arch in ("sd15", "sdxl"):
            name = kohya_key(t, kohya_arch, lpb)
            assert kohya_name_to_path(name, lpb, naming="diffusers") == t
            assert kohya_name_to_path(name, lpb, naming="ldm") == diffusers_to_ldm_path(t, lpb)
    # diffusers' own sgm -> diffusers block remap plus its kohya converter must turn our LDM-named
    # kohya keys into the same diffusers keys as our diffusers-named ones (an independent check
    # of the block index formula).
    def kohya_file(kohya_arch: str) -> dict[str, torch.Tensor]:
        out = {}
        for t in targets:
            name = kohya_key(t, kohya_arch, lpb)
            out[name + ".lora_down.weight"] = torch.zeros(1)
            out[name + ".lora_up.weight"] = torch.zeros(1)
        return out

    via_sgm = _maybe_map_sgm_blocks_to_diffusers(kohya_file("sdxl"), unet.config)
    converted_ldm, _ = _convert_non_diffusers_lora_to_diffusers(via_sgm)
    converted_diffusers, _ = _convert_non_diffusers_lora_to_diffusers(kohya_file("sd15"))
    assert set(converted_ldm) == set(converted_diffusers)
    assert len(converted_ldm) == 2 * len(targets)


@pytest.mark.parametrize("bad_lpb", [0, -1, True, 1.5, "2"])
def test_layers_per_block_is_validated(bad_lpb) -> None:  # noqa: ANN001
    with pytest.raises(LoraKeyError, match="layers_per_block"):
        diffusers_to_ldm_path("mid_block.attentions.0", bad_lpb)


def test_kohya_name_to_path_rejects_unknown() -> None:
    for bad in ("lora_unet_conv_in", "lora_te_text_model_encoder_layers_0_mlp_fc1",
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_norm1"):
        with pytest.raises(LoraKeyError):
            kohya_name_to_path(bad, 2)


# --------------------------------------------------------------------------------------------
# state dicts


def test_sd15_keys_match_diffusers_kohya_converter_except_alpha() -> None:
    from diffusers.utils import convert_state_dict_to_kohya

    unet, _ = lora_unet("sd15")
    ours = export(unet, "sd15")
    peft_sd = get_peft_model_state_dict(unet)
    # The `unet.` prefix is what makes diffusers emit `lora_unet_` (see tiny-model findings).
    theirs = convert_state_dict_to_kohya({f"unet.{k}": v for k, v in peft_sd.items()})
    assert set(ours) == set(theirs)
    for key, value in ours.items():
        if key.endswith(".alpha"):
            assert value.dim() == 0 and float(value) == ALPHA
            assert float(theirs[key]) == RANK  # diffusers' bug: alpha = rank
        else:
            assert torch.equal(value, theirs[key].to(value.dtype)), key
            assert value.is_contiguous()
    n_modules = len(find_lora_targets(make_unet("sd15")))
    assert len(ours) == 3 * n_modules


def test_sd15_proj_shapes_keep_conv_layout() -> None:
    unet, _ = lora_unet("sd15")
    ours = export(unet, "sd15")
    down = ours["lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight"]
    up = ours["lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight"]
    assert tuple(down.shape) == (RANK, 32, 1, 1)
    assert tuple(up.shape) == (32, RANK, 1, 1)
    q = ours["lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight"]
    assert tuple(q.shape) == (RANK, 32)


def test_sdxl_keys_use_ldm_names_and_linear_proj() -> None:
    unet, _ = lora_unet("sdxl")
    ours = export(unet, "sdxl")
    names = {k.split(".")[0] for k in ours}
    assert all(n.startswith(("lora_unet_input_blocks_", "lora_unet_middle_block_1_",
                             "lora_unet_output_blocks_")) for n in names)
    # first attention level is down_blocks.1 -> input_blocks.4 (L=2)
    assert "lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q" in names
    assert "lora_unet_middle_block_1_transformer_blocks_1_ff_net_0_proj" in names
    assert "lora_unet_output_blocks_5_1_proj_out" in names  # up_blocks.1.attentions.2
    assert ours["lora_unet_input_blocks_4_1_proj_in.lora_down.weight"].dim() == 2
    assert all(float(v) == ALPHA for k, v in ours.items() if k.endswith(".alpha"))


def test_export_dtype_and_prefixes() -> None:
    unet, _ = lora_unet("sd15")
    peft_sd = get_peft_model_state_dict(unet)
    plain = export(unet, "sd15")
    half = peft_to_kohya(
        {f"base_model.model.{k}": v for k, v in peft_sd.items()},
        alpha=ALPHA, arch="sd15", layers_per_block=1, source_naming="diffusers", dtype=torch.float16,
    )
    assert set(half) == set(plain)
    assert all(v.dtype == torch.float16 for v in half.values())
    assert all(v.is_contiguous() for v in half.values())
    # the export must not alias the training parameters
    key = next(k for k in peft_sd if k.endswith("lora_A.weight"))
    assert plain[kohya_key(key[: -len(".lora_A.weight")], "sd15", 1) + ".lora_down.weight"].data_ptr() != (
        peft_sd[key].data_ptr()
    )


@pytest.mark.parametrize(
    "bad_key",
    [
        "conv_in.lora_A.weight",
        "down_blocks.0.resnets.0.conv1.lora_A.weight",
        "down_blocks.0.attentions.0.proj_in.lora_magnitude_vector",
        "down_blocks.0.attentions.0.proj_in.lora_B.bias",
    ],
)
def test_export_raises_on_unmappable_key(bad_key: str) -> None:
    unet, _ = lora_unet("sd15")
    peft_sd = dict(get_peft_model_state_dict(unet))
    peft_sd[bad_key] = torch.zeros(RANK, 32)
    with pytest.raises(LoraKeyError):
        export_dict(peft_sd)


def export_dict(peft_sd: dict) -> dict:
    return peft_to_kohya(peft_sd, alpha=ALPHA, arch="sd15", layers_per_block=1,
                         source_naming="diffusers", dtype=torch.float32)


def test_export_raises_on_half_pair_and_bad_args() -> None:
    unet, _ = lora_unet("sd15")
    peft_sd = dict(get_peft_model_state_dict(unet))
    key = next(k for k in peft_sd if k.endswith("lora_B.weight"))
    del peft_sd[key]
    with pytest.raises(LoraKeyError, match="both"):
        export_dict(peft_sd)
    with pytest.raises(LoraKeyError):
        peft_to_kohya({}, alpha=1.0, arch="sd21", layers_per_block=1, source_naming="diffusers",
                      dtype=torch.float32)
    with pytest.raises(LoraKeyError):
        peft_to_kohya({}, alpha=0.0, arch="sd15", layers_per_block=1, source_naming="diffusers",
                      dtype=torch.float32)


@pytest.mark.parametrize("arch", ["sd15", "sdxl"])
def test_round_trip_kohya_to_peft(arch: str) -> None:
    lpb = TINY[arch][1]
    unet, targets = lora_unet(arch)
    original = get_peft_model_state_dict(unet)
    kohya = export(unet, arch)
    back = kohya_to_peft(kohya, layers_per_block=lpb, expected_alpha=ALPHA)
    assert set(back) == set(original)
    for k, v in original.items():
        assert torch.equal(back[k], v), k
    # module_paths resolves exactly, and the LDM naming works as a target too
    assert kohya_to_peft(kohya, layers_per_block=lpb, module_paths=targets).keys() == back.keys()
    ldm = kohya_to_peft(kohya, layers_per_block=lpb, target_naming="ldm")
    assert {k.split(".")[0] for k in ldm} <= {"input_blocks", "middle_block", "output_blocks"}
    # load into a fresh adapter: identical output
    fresh = make_unet(arch)
    fresh.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=targets))
    result = set_peft_model_state_dict(fresh, back)
    assert not [k for k in result.unexpected_keys if "lora_" in k]
    assert torch.equal(run_unet(fresh, arch), run_unet(unet, arch))


def test_kohya_to_peft_checks_alpha_and_pairs() -> None:
    unet, targets = lora_unet("sd15")
    kohya = export(unet, "sd15")
    with pytest.raises(LoraKeyError, match="alpha"):
        kohya_to_peft(kohya, layers_per_block=1, expected_alpha=4.0)
    assert set(kohya_alphas(kohya).values()) == {ALPHA}
    no_alpha = {k: v for k, v in kohya.items() if not k.endswith(".alpha")}
    assert set(kohya_alphas(no_alpha).values()) == {float(RANK)}  # kohya: missing alpha = rank
    broken = dict(kohya)
    del broken[next(k for k in kohya if k.endswith(".lora_up.weight"))]
    with pytest.raises(LoraKeyError):
        kohya_to_peft(broken, layers_per_block=1)
    foreign = dict(kohya)
    foreign["lora_unet_down_blocks_9_attentions_0_proj_in.lora_down.weight"] = torch.zeros(RANK, 32)
    foreign["lora_unet_down_blocks_9_attentions_0_proj_in.lora_up.weight"] = torch.zeros(32, RANK)
    with pytest.raises(LoraKeyError, match="does not match"):
        kohya_to_peft(foreign, layers_per_block=1, module_paths=targets)
    with pytest.raises(LoraKeyError):
        kohya_to_peft({"lora_te_text_model_x.lora_down.weight": torch.zeros(1, 1)}, layers_per_block=1)


# --------------------------------------------------------------------------------------------
# loading the saved file with diffusers' kohya loaders


class UnhandledKeys:
    """Capture what diffusers' load_lora_adapter reports as unexpected / missing LoRA keys."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        import diffusers.loaders.peft as dpeft

        self.calls: list = []
        original = dpeft._maybe_warn_for_unhandled_keys

        def spy(incompatible_keys, adapter_name):  # noqa: ANN001 - diffusers' signature
            self.calls.append((incompatible_keys, adapter_name))
            return original(incompatible_keys, adapter_name)

        monkeypatch.setattr(dpeft, "_maybe_warn_for_unhandled_keys", spy)

    def assert_clean(self) -> None:
        assert self.calls, "diffusers did not report its load result"
        for keys, adapter in self.calls:
            assert not [k for k in keys.unexpected_keys if "lora" in k]
            assert not [k for k in keys.missing_keys if ".lora_" in k and adapter in k]


def tiny_sd15_pipeline(unet: UNet2DConditionModel):  # noqa: ANN201 - diffusers pipeline
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    # A hand-made CLIP BPE vocab: single letters, word-final letters and the two specials.
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({c + "</w>": 26 + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": 52, "<|endoftext|>": 53})
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)
    torch.manual_seed(3)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, bos_token_id=52, eos_token_id=53,
        pad_token_id=53,
    )).eval()
    vae = AutoencoderKL(
        block_out_channels=(32, 64), latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
    ).eval()
    return StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler(num_train_timesteps=1000, steps_offset=1, clip_sample=False), safety_checker=None,
        feature_extractor=None, image_encoder=None, requires_safety_checker=False,
    )


def test_sd15_file_loads_in_diffusers_pipeline_exactly(tmp_path: Path, monkeypatch) -> None:
    unet, _ = lora_unet("sd15")
    path = tmp_path / "style-000001.safetensors"
    save_file(export(unet, "sd15"), str(path), metadata={"ss_network_module": "networks.lora"})

    spy = UnhandledKeys(monkeypatch)
    pipe = tiny_sd15_pipeline(make_unet("sd15"))  # same base weights, no adapter
    pipe.set_progress_bar_config(disable=True)
    pipe.load_lora_weights(str(path), adapter_name="style")
    spy.assert_clean()

    # U-Net level: the loaded adapter equals the in-memory one exactly.
    loaded = run_unet(pipe.unet, "sd15")
    assert torch.allclose(loaded, run_unet(unet, "sd15"), atol=1e-6, rtol=0)
    pipe.unet.disable_adapters()
    assert (run_unet(pipe.unet, "sd15") - loaded).abs().max() > 1e-3  # the LoRA does something
    pipe.unet.enable_adapters()

    # Pipeline level: same images as a pipeline built around the in-memory adapter.
    ref = tiny_sd15_pipeline(unet)
    ref.set_progress_bar_config(disable=True)

    def render(p) -> torch.Tensor:  # noqa: ANN001
        out = p("abc", num_inference_steps=2, height=32, width=32, guidance_scale=1.0,
                generator=torch.Generator().manual_seed(0), output_type="pt")
        return out.images

    assert torch.allclose(render(pipe), render(ref), atol=1e-6, rtol=0)


def test_sdxl_ldm_named_file_loads_via_diffusers_sdxl_conversion(tmp_path: Path, monkeypatch) -> None:
    from diffusers.loaders import StableDiffusionXLLoraLoaderMixin

    unet, _ = lora_unet("sdxl")
    path = tmp_path / "xl-000001.safetensors"
    save_file(export(unet, "sdxl"), str(path))

    # What StableDiffusionXLPipeline.load_lora_weights does for the U-Net: sgm remap with the
    # U-Net config, kohya -> diffusers conversion (raises on any leftover key), load_lora_into_unet.
    state, alphas = StableDiffusionXLLoraLoaderMixin.lora_state_dict(str(path), unet_config=make_unet("sdxl").config)
    assert set(alphas.values()) == {ALPHA}
    spy = UnhandledKeys(monkeypatch)
    fresh = make_unet("sdxl")
    StableDiffusionXLLoraLoaderMixin.load_lora_into_unet(state, alphas, fresh, adapter_name="style")
    spy.assert_clean()
    assert torch.allclose(run_unet(fresh, "sdxl"), run_unet(unet, "sdxl"), atol=1e-6, rtol=0)
