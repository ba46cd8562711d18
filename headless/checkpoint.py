"""A user's single-file SD1.5 / SDXL checkpoint (A1111/ComfyUI layout) as a ``DiffusersSD``, offline.

The key conversion is diffusers' own (``diffusers.loaders.single_file_utils``); the configs it
would fetch from the hub ship in ``model_configs/`` (the real SD1.5/SDXL U-Net, VAE, CLIP-L and
CLIP-G configs, the SD noise schedule) and the tokenizer is built from open-clip's BPE file
(``clip_tokenizer``). Nothing touches the network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..style_lora_engine.errors import ConfigError
from .clip_tokenizer import build_clip_tokenizer
from .model_bundle import DiffusersSD

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
UNET_PREFIX = "model.diffusion_model."
SD15_CLIP_PREFIX = "cond_stage_model.transformer."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
SDXL_CLIP_G_PREFIX = "conditioner.embedders.1.model."
VAE_PREFIX = "first_stage_model."
ARCHES = ("sd15", "sdxl")


def read_config(name: str) -> dict[str, Any]:
    path = CONFIG_DIR / name
    if not path.is_file():
        raise ConfigError(f"The model config {path} is missing from this checkout; restore it with "
                          "'git checkout -- headless/model_configs'.")
    return json.loads(path.read_text(encoding="utf-8"))


def detect_arch(keys: set[str] | list[str], path: Path | str = "the checkpoint") -> str:
    """``"sd15"`` or ``"sdxl"`` from a checkpoint's key names; anything else is refused, saying what it is."""
    keys = set(keys)
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise ConfigError(f"{path} has no U-Net ({UNET_PREFIX}* keys): it is not a full SD checkpoint (a LoRA, "
                          "a VAE or a diffusers folder?). Give a single-file SD1.5 or SDXL checkpoint.")
    if any(k.startswith(SDXL_CLIP_G_PREFIX) for k in keys):
        if not any(k.startswith(SDXL_CLIP_L_PREFIX) for k in keys):
            raise ConfigError(f"{path} looks like an SDXL refiner (one OpenCLIP encoder): train on an SDXL base "
                              "checkpoint instead.")
        return "sdxl"
    if any(k.startswith(SD15_CLIP_PREFIX) for k in keys):
        return "sd15"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        raise ConfigError(f"{path} is an SD2.x checkpoint (OpenCLIP text encoder); this trainer supports SD1.5 "
                          "and SDXL.")
    raise ConfigError(f"{path} has no text encoder keys ({SD15_CLIP_PREFIX}* or conditioner.embedders.*): "
                      "save the checkpoint with its CLIP, e.g. with ComfyUI's Save Checkpoint node.")


def _load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, path: Path) -> None:
    expected = set(module.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        raise ConfigError(f"{path}: the {what} weights do not match the {what} this trainer builds "
                          f"({len(missing)} missing, e.g. {missing[:3]}; {len(unexpected)} unexpected, e.g. "
                          f"{unexpected[:3]}). Is it a merged or pruned file of another architecture?")
    module.load_state_dict(state, strict=True, assign=True)


def _on_meta(cls: Any, config: dict[str, Any]) -> Any:
    # Built on the meta device and filled with assign=True: no random init of ~1 B parameters.
    with torch.device("meta"):
        return cls.from_config(config)


def _text_model(cls: Any, config_name: str, convert: Any, what: str, path: Path) -> Any:
    """``convert(model)`` gives the diffusers-named state dict (diffusers' converters take the model)."""
    from transformers import CLIPTextConfig

    with torch.device("meta"):
        model = cls(CLIPTextConfig(**read_config(config_name)))
    state = convert(model)
    # transformers >= 5.6 flattened CLIPTextModel (no text_model. prefix); the converters emit the old names.
    if not any(k.startswith("text_model.") for k in model.state_dict()):
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    state = {k: v for k, v in state.items() if not k.endswith("position_ids")}
    expected = {k for k in model.state_dict() if not k.endswith("position_ids")}
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ConfigError(f"{path}: the {what} weights do not match ({len(missing)} missing, e.g. {missing[:3]}; "
                          f"{len(unexpected)} unexpected, e.g. {unexpected[:3]}).")
    model.load_state_dict(state, strict=False, assign=True)
    # position_ids is a computed buffer, never in a checkpoint that transformers would load: made here.
    for name, buffer in list(model.named_buffers()):
        if buffer.is_meta and name.endswith("position_ids"):
            owner = model.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buffer.shape[-1]).expand(buffer.shape),
                                  persistent=False)
    return model.eval()


def load_checkpoint(path: Path | str, *, cache_dir: Path, prediction_type: str = "auto",
                    dtype: torch.dtype = torch.float32) -> DiffusersSD:
    """The checkpoint's U-Net, VAE and text encoder(s) as diffusers modules (weights in ``dtype``).

    ``prediction_type`` "auto" reads ComfyUI's ``v_pred`` marker key; "epsilon" / "v_prediction" force it.
    ``cache_dir`` keeps the tokenizer files built from open-clip's BPE vocabulary.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"Checkpoint {path} not found: give the path of a .safetensors SD1.5 or SDXL file.")
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"{path}: only .safetensors checkpoints are read (no pickle). Convert it first, e.g. "
                          "load it in ComfyUI and save it with the Save Checkpoint node.")
    try:
        checkpoint = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise ConfigError(f"Cannot read {path} as safetensors ({exc}); is the file complete?") from exc
    return model_from_state_dict(checkpoint, path=path, cache_dir=cache_dir, prediction_type=prediction_type,
                                 dtype=dtype)


def model_from_state_dict(checkpoint: dict[str, torch.Tensor], *, path: Path, cache_dir: Path,
                          prediction_type: str = "auto", dtype: torch.dtype = torch.float32) -> DiffusersSD:
    """:func:`load_checkpoint` on a state dict already read (``path`` names it in messages)."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    arch = detect_arch(checkpoint, path)
    if prediction_type == "auto":
        prediction_type = "v_prediction" if "v_pred" in checkpoint else "epsilon"
    checkpoint = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in checkpoint.items()}

    unet_config = read_config(f"{arch}_unet.json")
    unet = _on_meta(UNet2DConditionModel, unet_config)
    _load_strict(unet, sfu.convert_ldm_unet_checkpoint(checkpoint, unet_config), "U-Net", path)
    vae_config = read_config(f"{arch}_vae.json")
    vae = _on_meta(AutoencoderKL, vae_config)
    _load_strict(vae, sfu.convert_ldm_vae_checkpoint(checkpoint, vae_config), "VAE", path)

    tokenizer = build_clip_tokenizer(cache_dir)
    if arch == "sd15":
        clip_l = {k: v for k, v in checkpoint.items() if k.startswith(SD15_CLIP_PREFIX)}
        text_encoder = _text_model(CLIPTextModel, "clip_l.json", lambda _m: sfu.convert_ldm_clip_checkpoint(clip_l),
                                   "CLIP-L text encoder", path)
        text_encoder_2 = tokenizer_2 = None
    else:
        clip_l = {k: v for k, v in checkpoint.items() if k.startswith(SDXL_CLIP_L_PREFIX)}
        text_encoder = _text_model(CLIPTextModel, "clip_l.json", lambda _m: sfu.convert_ldm_clip_checkpoint(clip_l),
                                   "CLIP-L text encoder", path)
        clip_g = {k: v for k, v in checkpoint.items() if k.startswith(SDXL_CLIP_G_PREFIX)}
        text_encoder_2 = _text_model(
            CLIPTextModelWithProjection, "clip_g.json",
            lambda m: sfu.convert_open_clip_checkpoint(m, clip_g, prefix=SDXL_CLIP_G_PREFIX),
            "OpenCLIP-G text encoder", path)
        tokenizer_2 = build_clip_tokenizer(cache_dir, pad_token="!")  # SDXL's second encoder pads with "!" (id 0)
    del checkpoint
    scheduler = DDPMScheduler(**{**read_config("scheduler.json"), "prediction_type": prediction_type})
    for module in (unet, vae, text_encoder, text_encoder_2):
        if module is not None:
            module.requires_grad_(False)
    return DiffusersSD(unet=unet.eval(), vae=vae.eval(), text_encoder=text_encoder, tokenizer=tokenizer,
                       noise_scheduler=scheduler, arch=arch, text_encoder_2=text_encoder_2,
                       tokenizer_2=tokenizer_2, name=path.stem)
