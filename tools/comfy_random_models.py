"""Random-weight SD1.5 / SDXL models built with ComfyUI's own classes (e2e tests only).

Run with ComfyUI's interpreter (``$COMFYUI_PYTHON``) and ``comfy_dir`` = the ComfyUI folder. Nothing
here is part of the node pack (``tools/`` is excluded by ``.comfyignore``).

* :func:`sd15_checkpoint_state_dict` — an SD1.5 checkpoint in the original LDM layout
  (``model.diffusion_model.*``, ``cond_stage_model.transformer.text_model.*``,
  ``first_stage_model.*``). The key names and shapes come from ComfyUI's U-Net, CLIP-L and VAE
  classes built on the meta device, so ComfyUI's ``CheckpointLoaderSimple`` detects it as SD1.5
  exactly as it detects a real one. Weights are random with a small std.
* :func:`build_sdxl` — ComfyUI's real SDXL objects (``ModelPatcher`` around ``model_base.SDXL``,
  ``CLIP`` with CLIP-L + CLIP-G, ``VAE``) with random weights initialised in place (a full SDXL
  checkpoint file would need ~7 GB on disk and twice that in RAM to load on a CPU).
"""

from __future__ import annotations

import sys
from pathlib import Path

from random_checkpoint import fill as _fill  # the one initialisation scheme of every random model

# Bump when the layout or the initialisation changes: cached checkpoints are named after it.
BUILDER_VERSION = 1

# The configs ComfyUI's model detection produces for the real checkpoints (comfy/model_detection.py
# unet_config_from_diffusers_unet); tests/data/comfyui_unet_module_names.json was dumped from them.
SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "dtype": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4],
    "transformer_depth_middle": 1, "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "dtype": None, "in_channels": 4,
    "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
    "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
    "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SD_VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                   "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def setup_comfy(comfy_dir: str | Path):
    """Put ComfyUI on sys.path in CPU mode (before any ``comfy.model_management`` import)."""
    comfy_dir = str(Path(comfy_dir).resolve())
    if comfy_dir not in sys.path:
        sys.path.insert(0, comfy_dir)
    from comfy.cli_args import args

    args.cpu = True
    import comfy.model_management  # noqa: F401  (reads args at import)


def _meta_shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def sd15_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of an SD1.5 checkpoint (LDM keys) and its shape, from ComfyUI's classes on meta."""
    import comfy.model_detection as md
    import comfy.ops
    import comfy.sd1_clip
    import comfy.supported_models as sm
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**md.convert_config(dict(SD15_UNET)), device="meta", operations=comfy.ops.disable_weight_init)
    shapes = {"model.diffusion_model." + k: s for k, s in _meta_shapes(unet).items()}
    del unet
    with torch.device("meta"):
        clip = comfy.sd1_clip.SD1ClipModel(device="meta")
    clip_shapes = _meta_shapes(clip)  # clip_l.transformer.text_model.*
    del clip
    config = sm.SD15(dict(SD15_UNET))
    shapes.update(config.process_clip_state_dict_for_saving(clip_shapes))  # -> cond_stage_model.*
    shapes.update(_vae_shapes())
    return shapes


def sdxl_checkpoint_shapes() -> dict[str, tuple[int, ...]]:
    """Every tensor of an SDXL base checkpoint (LDM keys: conditioner.embedders.0/1, first_stage_model)
    and its shape, from ComfyUI's classes on meta and its own saving-layout conversion."""
    import comfy.model_detection as md
    import comfy.ops
    import comfy.sdxl_clip
    import comfy.supported_models as sm
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    unet = UNetModel(**md.convert_config(dict(SDXL_UNET)), device="meta", operations=comfy.ops.disable_weight_init)
    shapes = {"model.diffusion_model." + k: s for k, s in _meta_shapes(unet).items()}
    del unet
    with torch.device("meta"):
        clip = comfy.sdxl_clip.SDXLClipModel(device="meta")
    clip_sd = {k: torch.empty(s, device="meta") for k, s in _meta_shapes(clip).items()}
    del clip
    config = sm.SDXL(dict(SDXL_UNET))
    saved = config.process_clip_state_dict_for_saving(clip_sd)
    shapes.update({k: tuple(v.shape) for k, v in saved.items()})
    shapes.update(_vae_shapes())
    return shapes


def _vae_shapes() -> dict[str, tuple[int, ...]]:
    import comfy.ldm.models.autoencoder as autoencoder
    import torch

    with torch.device("meta"):
        vae = autoencoder.AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=4)
    return {"first_stage_model." + k: s for k, s in _meta_shapes(vae).items()}


def sd15_checkpoint_state_dict(seed: int = 0, dtype_name: str = "fp16") -> dict:
    """A random SD1.5 checkpoint (LDM keys) as a state dict of CPU tensors."""
    import torch

    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    shapes = sd15_checkpoint_shapes()
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(shapes):
        if name.endswith("position_ids"):
            out[name] = torch.arange(shapes[name][-1], dtype=torch.int64).reshape(shapes[name])
            continue
        out[name] = _fill(name, shapes[name], gen, dtype)
    return out


def random_init_(module, seed: int) -> None:
    """Fill every parameter of ``module`` in place with the same scheme as the checkpoint builder."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(_fill(name, tuple(p.shape), gen, p.dtype))


def build_sdxl(seed: int = 0, dtype=None):
    """ComfyUI's SDXL MODEL/CLIP/VAE (real classes) with random weights, on the CPU.

    Built the way ``comfy.sd.load_state_dict_guess_config`` builds them, with the weights filled in
    place instead of loaded (no multi-GB state dict held twice in RAM).
    """
    import comfy.model_detection as md
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.ops
    import comfy.sd
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    dtype = dtype or torch.bfloat16
    prefix = "model.diffusion_model."
    boot = UNetModel(**md.convert_config(dict(SDXL_UNET)), device="meta", operations=comfy.ops.disable_weight_init)
    meta_sd = {prefix + k: v for k, v in boot.state_dict().items()}
    del boot
    model_config = md.model_config_from_unet(meta_sd, prefix)
    if type(model_config).__name__ != "SDXL":
        raise RuntimeError(f"ComfyUI detected {type(model_config).__name__}, not SDXL")
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model(meta_sd, prefix, device=torch.device("cpu"))
    random_init_(model.diffusion_model, seed)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    clip_target = model_config.clip_target()
    clip = comfy.sd.CLIP(clip_target, model_options={"dtype": dtype}, disable_dynamic=True)
    random_init_(clip.cond_stage_model, seed + 1)
    vae_sd = {}
    import comfy.ldm.models.autoencoder as autoencoder

    with torch.device("meta"):
        vae_meta = autoencoder.AutoencoderKL(ddconfig=dict(SD_VAE_DDCONFIG), embed_dim=4)
    gen = torch.Generator().manual_seed(seed + 2)
    for name, shape in sorted(_meta_shapes(vae_meta).items()):
        vae_sd[name] = _fill(name, shape, gen, torch.float32)
    vae = comfy.sd.VAE(sd=vae_sd)
    return patcher, clip, vae
