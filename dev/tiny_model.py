"""A tiny Stable-Diffusion-shaped model built fully offline, for the demo and the tests.

Nothing here downloads anything:

* :func:`build_clip_tokenizer` derives OpenAI CLIP's exact BPE vocabulary from the merges file that
  ``open-clip-torch`` ships, so token ids match the real SD tokenizer.
* :func:`build_tiny_sd15` / :func:`build_tiny_sdxl` make random-weight models with the real
  architectures' module layout (so LoRA key names and conditioning paths are the real ones).
* :func:`pretrain_tiny_sd15` pretrains the SD1.5-shaped model for about two minutes on synthetic
  shapes (VAE, then a text-conditioned UNet), because a LoRA cannot learn a style on random
  weights: a random VAE decodes everything to grey and a random UNet is not a denoiser. Its result
  is shipped (``dev/assets/``, checked by hash) and :func:`pretrained_tiny_sd15` loads that.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..headless.clip_tokenizer import build_clip_tokenizer  # noqa: F401 - the tests and demo take it from here
from ..headless.model_bundle import DiffusersSD
from ..style_lora_engine.atomic import atomic_path
from ..style_lora_engine.errors import ConfigError
from .synthetic_data import make_base_corpus

CACHE_VERSION = 1
MARKER_FILE = "tiny_model.json"
IMAGE_SIZE = 32  # 16x16 latents: big enough for the style's hatching and outlines (measured)
# Pretraining budget: ~35 s VAE + ~100 s UNet on 2 quiet CPU cores (measured 135 s in all).
VAE_STEPS = 600  # batch 16 of 16 px crops
UNET_STEPS = 800
UNET_BATCH = 8  # more, smaller steps beat fewer big ones at equal cost (eval 0.081 vs 0.092)
HIGH_NOISE_WEIGHT_CAP = 5.0  # see _train_unet
OFFSET_NOISE = 0.3  # see _offset_noise
# The pretrained model, shipped (load_shipped_model); rebuilt only by tools/pretrain_tiny_model.py.
SHIPPED_MODEL = Path(__file__).resolve().parent / "assets" / "tiny-sd15-v1.safetensors"
SHIPPED_SHA256 = "d8e9b8e2ce0bc340e1282b084d3f849cc93bd1d206056d8fb195437267d31e58"
_SHIPPED_PARTS = ("unet", "vae", "text_encoder")


# --------------------------------------------------------------------------- random-weight models


def tiny_sd15_configs() -> dict[str, dict[str, Any]]:
    """Configs of the tiny SD1.5-shaped model: ``unet``, ``vae``, ``text_encoder``, ``scheduler``."""
    return {
        "unet": dict(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            block_out_channels=(32, 64),
            layers_per_block=1,
            # Cross-attention at both levels: with attention only at 8x8 a LoRA barely moves the
            # output (3-11 % vs 10-23 % style effect in the feasibility study).
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32,
            # 2/4 heads = 16 channels per head at both levels. 8 heads (4-channel heads at 16x16)
            # made attention 60 % of a training step and the step twice as slow, for no benefit.
            attention_head_dim=(2, 4),
            norm_num_groups=8,  # as in the VAE: 32 groups on 32 channels learnt slower (measured)
        ),
        "vae": dict(
            sample_size=IMAGE_SIZE,
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(32, 64),
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            # 8 groups, not 32: with 32 groups on 32 channels GroupNorm is an instance norm that
            # erases flat colour, and the VAE learnt ~2x slower (held-out MSE 0.12 vs 0.07 at 300 steps).
            norm_num_groups=8,
        ),
        "text_encoder": dict(
            vocab_size=49408,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
        ),
        "scheduler": dict(
            num_train_timesteps=1000,
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="epsilon",
            clip_sample=False,
            steps_offset=1,
        ),
    }


def _ddpm(cfg: dict[str, Any]) -> Any:
    from diffusers import DDPMScheduler

    return DDPMScheduler(**cfg)


def build_tiny_sd15(tokenizer: Any, seed: int = 0) -> DiffusersSD:
    """A random-weight SD1.5-shaped model (~3 M parameters)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = tiny_sd15_configs()
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    return DiffusersSD(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        noise_scheduler=_ddpm(cfg["scheduler"]), arch="sd15", name="tiny-sd15",
    )


def build_tiny_sdxl(tokenizer: Any, seed: int = 0) -> DiffusersSD:
    """A random-weight model in SDXL's shape: two text encoders, pooled + size ("text_time") conditioning.

    Like SDXL: ``layers_per_block=2``, no attention in the first level, linear projections,
    cross-attention over both encoders' penultimate hidden states concatenated (32 + 32 = 64) and
    added embeddings from encoder 2's projected pooled output (32) + 6 time ids x 8.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    cfg = tiny_sd15_configs()
    te_cfg = dict(cfg["text_encoder"])
    time_dim, pooled_dim = 8, 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=1,
        cross_attention_dim=64,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled_dim,
    )
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**te_cfg))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**te_cfg, projection_dim=pooled_dim))
    return DiffusersSD(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        noise_scheduler=_ddpm(cfg["scheduler"]), arch="sdxl",
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer, name="tiny-sdxl",
    )


# --------------------------------------------------------------------------- pretraining


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[tiny-sd15] {msg}", file=sys.stderr, flush=True)


def _to_tensor(images: list[Any]) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


def _lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    # Linear warm-up (no early blow-up at a high rate), then cosine decay to settle a short run.
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return peak * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * t)))


def _train_vae(vae: Any, pixels: torch.Tensor, steps: int, batch: int, gen: torch.Generator,
               progress: bool, crop: int = 16) -> float:
    """Train the VAE as a deterministic autoencoder (posterior mean in, reconstruction out)."""
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    loss_val = float("nan")
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, 2e-3, max(1, steps // 20))
        idx = torch.randint(0, pixels.shape[0], (batch,), generator=gen)
        # Random 16 px crops: 4x cheaper per sample than full 32 px images and, measured, just as
        # good for full-image reconstruction (the VAE is convolutional; colours/edges are local).
        oy, ox = torch.randint(0, pixels.shape[-1] - crop + 1, (2,), generator=gen).tolist()
        x = pixels[idx, :, oy : oy + crop, ox : ox + crop]
        z = vae.encode(x).latent_dist.mean
        rec = vae.decode(z).sample
        # A weak pull toward small latents keeps the latent scale sane without a sampled KL term.
        loss = torch.nn.functional.mse_loss(rec, x) + 1e-4 * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_val = loss.item()
        if progress and (step + 1) % max(1, steps // 4) == 0:
            _log(progress, f"VAE step {step + 1}/{steps} loss {loss_val:.4f}")
    vae.eval()
    return loss_val


def _fix_vae_posterior(vae: Any, pixels: torch.Tensor) -> float:
    """Make ``latent_dist.sample()`` equal the mean and set ``scaling_factor`` to unit latent std.

    A briefly trained VAE's posterior std is ~1, so ``sample()`` would train the UNet on noise.
    """
    with torch.no_grad():
        vae.quant_conv.weight[4:] = 0.0
        vae.quant_conv.bias[4:] = -30.0  # logvar -30 -> std ~3e-7
        means = torch.cat([vae.encode(pixels[i : i + 64]).latent_dist.mean for i in range(0, len(pixels), 64)])
    scale = float(1.0 / means.std())
    vae.register_to_config(scaling_factor=scale)  # registered so it survives save/load
    return scale


def _token_ids(tokenizer: Any, captions: list[str]) -> torch.Tensor:
    # Padded to 77 with <|endoftext|>, exactly as the trainer and StableDiffusionPipeline do.
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def _encode_ids(text_encoder: Any, ids: torch.Tensor) -> torch.Tensor:
    return torch.cat([text_encoder(ids[i : i + 64])[0] for i in range(0, len(ids), 64)])


@torch.no_grad()
def _eval_loss(unet: Any, sched: Any, latents: torch.Tensor, cond: torch.Tensor,
               noise: torch.Tensor, timesteps: torch.Tensor) -> float:
    """Epsilon MSE on held-out latents with fixed noise and timesteps (comparable across calls)."""
    unet.eval()
    noisy = sched.add_noise(latents, noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states=cond).sample
    return float(torch.nn.functional.mse_loss(pred, noise))


def _offset_noise(shape: torch.Size, gen: torch.Generator, strength: float) -> torch.Tensor:
    """Gaussian noise plus a random per-image, per-channel constant ("offset noise").

    Why: on 16x16 latents the standard schedule leaves an image's overall colour readable through
    the noise even at t=999 (the per-channel mean of 256 noise pixels has std 1/16, comparable to
    sqrt(alpha_bar)=0.07 times the signal). With plain noise the UNet learnt to copy colour from
    x_t, ignored the caption, and sampling from pure noise painted seed-coloured blobs. With offset
    0.3 the colour must come from the caption: held-out loss with shuffled captions went from
    +0.4 % to +27..43 % above matching ones, and "plain blue background" prompts come out blue.
    """
    b, c = shape[0], shape[1]
    return torch.randn(shape, generator=gen) + strength * torch.randn((b, c, 1, 1), generator=gen)


def _train_unet(unet: Any, text_encoder: Any, sched: Any, latents: torch.Tensor, ids: torch.Tensor,
                empty_ids: torch.Tensor, steps: int, batch: int, gen: torch.Generator, progress: bool,
                weight_cap: float = HIGH_NOISE_WEIGHT_CAP, lr: float = 4e-3,
                offset_noise: float = OFFSET_NOISE) -> float:
    """Train UNet and text encoder jointly as a text-conditioned epsilon denoiser.

    The loss is weighted by ``min(1/alpha_bar_t, cap)`` (v-prediction's weighting, capped): plain
    epsilon MSE gives the high-noise steps, where the caption decides what gets drawn, almost no
    weight. Measured, it lowers the t=600 loss (0.044 vs 0.048) for a slightly higher average.
    """
    w_all = (1.0 / sched.alphas_cumprod).clamp(max=weight_cap)
    w_all = w_all / w_all.mean()
    unet.train()
    text_encoder.train()
    params = [p for p in [*unet.parameters(), *text_encoder.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    n_t = sched.config.num_train_timesteps
    loss_val = float("nan")
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr, max(1, steps // 20))
        idx = torch.randint(0, latents.shape[0], (batch,), generator=gen)
        x0 = latents[idx]
        tok = ids[idx].clone()
        # 10 % empty-caption dropout: gives the model an unconditional mode, so CFG works.
        tok[torch.rand(batch, generator=gen) < 0.1] = empty_ids
        noise = _offset_noise(x0.shape, gen, offset_noise)
        t = torch.randint(0, n_t, (batch,), generator=gen)
        cond = text_encoder(tok)[0]
        pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        loss = (per_sample * w_all[t]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        loss_val = loss.item()
        if progress and (step + 1) % max(1, steps // 5) == 0:
            _log(progress, f"UNet step {step + 1}/{steps} loss {loss_val:.4f}")
    unet.eval()
    text_encoder.eval()
    return loss_val


def pretrain_tiny_sd15(model: DiffusersSD, *, steps_scale: float = 1.0, seed: int = 0,
                       progress: bool = True) -> dict[str, float]:
    """Pretrain ``model`` (from :func:`build_tiny_sd15`) in place; return measurements.

    1. VAE: deterministic autoencoder on the base corpus, then the deterministic-posterior fix and
       ``scaling_factor = 1/std(latents)``.
    2. UNet + text encoder, jointly, on cached latents of captioned images. Why jointly: with the
       random encoder frozen the UNet ignored the captions (held-out loss with shuffled captions
       only +3 %; "plain blue background" came out any colour), trained jointly it uses them
       (+27 % with shuffled captions; background colour within ~10/255 of the prompt at CFG 3).
    """
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    vae_steps = max(1, round(VAE_STEPS * steps_scale))
    unet_steps = max(1, round(UNET_STEPS * steps_scale))
    n_train = 512 if steps_scale >= 0.5 else 64

    train = make_base_corpus(n_train, IMAGE_SIZE, seed=seed)
    held = make_base_corpus(64, IMAGE_SIZE, seed=seed + 1000)
    pixels = _to_tensor([im for im, _ in train])
    held_pixels = _to_tensor([im for im, _ in held])

    model.vae.requires_grad_(True)
    vae_loss = _train_vae(model.vae, pixels, vae_steps, 16, gen, progress)
    scale = _fix_vae_posterior(model.vae, pixels)
    model.vae.requires_grad_(False)
    with torch.no_grad():
        rec = model.vae.decode(model.vae.encode(held_pixels).latent_dist.mean).sample
        vae_eval = float(torch.nn.functional.mse_loss(rec, held_pixels))
        latents = model.vae.encode(pixels).latent_dist.mean * scale
        held_latents = model.vae.encode(held_pixels).latent_dist.mean * scale
    t_vae = time.perf_counter() - t0
    _log(progress, f"VAE done in {t_vae:.0f}s: held-out recon MSE {vae_eval:.4f}, scaling_factor {scale:.3f}")

    te, tok, unet, sched = model.text_encoder, model.tokenizer, model.unet, model.noise_scheduler
    ids = _token_ids(tok, [c for _, c in train])
    held_ids = _token_ids(tok, [c for _, c in held])
    empty_ids = _token_ids(tok, [""])[0]

    eg = torch.Generator().manual_seed(seed + 1)
    e_noise = torch.randn(held_latents.shape, generator=eg)
    e_t = torch.linspace(50, 950, held_latents.shape[0]).long()
    te.eval()
    before = _eval_loss(unet, sched, held_latents, _encode_ids(te, held_ids), e_noise, e_t)
    unet.requires_grad_(True)
    te.requires_grad_(True)
    _train_unet(unet, te, sched, latents, ids, empty_ids, unet_steps, UNET_BATCH, gen, progress)
    unet.requires_grad_(False)
    te.requires_grad_(False)
    held_cond = _encode_ids(te, held_ids)
    after = _eval_loss(unet, sched, held_latents, held_cond, e_noise, e_t)
    shuffled = _eval_loss(unet, sched, held_latents, held_cond.roll(1, 0), e_noise, e_t)
    stats = {
        "vae_steps": vae_steps, "unet_steps": unet_steps, "vae_recon_mse": vae_eval,
        "vae_train_loss": vae_loss, "scaling_factor": scale, "eval_loss_before": before,
        "eval_loss_after": after, "eval_loss_shuffled_captions": shuffled,
        "vae_seconds": t_vae, "seconds": time.perf_counter() - t0,
    }
    _log(progress, f"UNet eval loss {before:.4f} -> {after:.4f} (shuffled captions {shuffled:.4f}); "
                   f"total {stats['seconds']:.0f}s")
    return stats


def _cache_name(steps_scale: float) -> str:
    return f"tiny-sd15-v{CACHE_VERSION}" + ("" if steps_scale == 1.0 else f"-scale{steps_scale:g}")


def _load_cached(path: Path) -> DiffusersSD:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    kw: dict[str, Any] = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(str(path / "unet"), **kw).eval()
    vae = AutoencoderKL.from_pretrained(str(path / "vae"), **kw).eval()
    te = CLIPTextModel.from_pretrained(str(path / "text_encoder"), **kw).eval()
    tok = CLIPTokenizer.from_pretrained(str(path / "tokenizer"), model_max_length=77, **kw)
    sched = DDPMScheduler.from_pretrained(str(path / "scheduler"), **kw)
    for m in (unet, vae, te):
        m.requires_grad_(False)
    return DiffusersSD(unet=unet, vae=vae, text_encoder=te, tokenizer=tok, noise_scheduler=sched,
                       arch="sd15", name=path.name)


def _corpus_fingerprint() -> str:
    h = hashlib.sha256()
    for im, caption in make_base_corpus(8, IMAGE_SIZE, seed=0):
        h.update(im.tobytes())
        h.update(caption.encode())
    return h.hexdigest()[:16]


def _recipe(steps_scale: float) -> str:
    """Fingerprint of everything that decides the pretrained weights.

    Stored in the marker, so a cache built by an older recipe is rebuilt instead of silently used.
    """
    recipe = {
        "version": CACHE_VERSION, "steps_scale": steps_scale, "configs": tiny_sd15_configs(),
        "image_size": IMAGE_SIZE, "vae_steps": VAE_STEPS, "unet_steps": UNET_STEPS, "unet_batch": UNET_BATCH,
        "offset_noise": OFFSET_NOISE, "weight_cap": HIGH_NOISE_WEIGHT_CAP, "corpus": _corpus_fingerprint(),
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _marker_ok(path: Path, steps_scale: float) -> bool:
    try:
        marker = json.loads((path / MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("version") == CACHE_VERSION and marker.get("recipe") == _recipe(steps_scale)


def save_shipped_model(model: DiffusersSD, path: Path = SHIPPED_MODEL) -> str:
    """Write ``model``'s weights (fp16) as the shipped tiny model; return the file's sha256."""
    from safetensors.torch import save_file

    tensors = {f"{part}.{k}": v.detach().to(torch.float16).contiguous()
               for part in _SHIPPED_PARTS for k, v in getattr(model, part).state_dict().items()}
    # One metadata key: safetensors writes several in a random order, and the same weights must give
    # the same file (and hash).
    meta = {"tiny_model": json.dumps({"recipe": _recipe(1.0),
                                      "scaling_factor": float(model.vae.config.scaling_factor)}, sort_keys=True)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:  # a kill mid-write leaves the old file, never half a model
        save_file(tensors, str(tmp), metadata=meta)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def load_shipped_model(tokenizer: Any, path: Path = SHIPPED_MODEL) -> DiffusersSD:
    """The pretrained tiny SD1.5 model from ``dev/assets``, checked against :data:`SHIPPED_SHA256`.

    Shipped rather than pretrained on each machine: pretraining takes another path on another CPU
    (an AMX Xeon and an EPYC gave base style distances 0.379 and 0.408), and the style test and
    the demo then start from different models. One file, one hash, the same start everywhere."""
    from safetensors import safe_open

    if not path.is_file():
        raise ConfigError(f"The shipped tiny model {path} is missing; restore it with 'git checkout -- {path.name}' "
                          "or rebuild it with 'python tools/pretrain_tiny_model.py'.")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHIPPED_SHA256:
        raise ConfigError(f"{path} has sha256 {digest[:12]}…, not the shipped {SHIPPED_SHA256[:12]}…: restore "
                          "it from git, or after rebuilding it on purpose put the new hash in SHIPPED_SHA256.")
    model = build_tiny_sd15(tokenizer, seed=0)
    with safe_open(str(path), framework="pt") as fh:
        scale = float(json.loads(fh.metadata()["tiny_model"])["scaling_factor"])
        for part in _SHIPPED_PARTS:
            module = getattr(model, part)
            state = {k[len(part) + 1:]: fh.get_tensor(k).to(torch.float32)
                     for k in fh.keys() if k.startswith(part + ".")}
            module.load_state_dict(state, strict=True)
            module.eval().requires_grad_(False)
    model.vae.register_to_config(scaling_factor=scale)
    model.name = path.stem
    return model


def pretrained_tiny_sd15(cache_dir: Path, *, progress: bool = True, steps_scale: float = 1.0,
                         shipped: bool = True) -> DiffusersSD:
    """The tiny SD1.5 model the demo, tests and benchmark train on.

    By default the shipped one (:func:`load_shipped_model`, < 1 s); ``cache_dir`` only holds its
    tokenizer. With ``shipped=False`` (or ``steps_scale`` < 1, a shorter, weaker model for fast
    tests) it is pretrained here (~2 min on 2 CPU cores for the full recipe) into
    ``cache_dir/"tiny-sd15-v1…"`` deterministically (fixed seeds) and loaded from there later.
    """
    if shipped and steps_scale == 1.0:
        return load_shipped_model(build_clip_tokenizer(Path(cache_dir)))
    from diffusers import StableDiffusionPipeline

    cache_dir = Path(cache_dir)
    target = cache_dir / _cache_name(steps_scale)
    if _marker_ok(target, steps_scale):
        return _load_cached(target)

    tokenizer = build_clip_tokenizer(cache_dir)
    model = build_tiny_sd15(tokenizer, seed=0)
    _log(progress, f"building {target} (one-off pretraining, about 2 minutes) ...")
    stats = pretrain_tiny_sd15(model, steps_scale=steps_scale, progress=progress)

    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache_dir))
    try:
        pipe = StableDiffusionPipeline(
            unet=model.unet, vae=model.vae, text_encoder=model.text_encoder, tokenizer=tokenizer,
            scheduler=model.noise_scheduler, safety_checker=None, feature_extractor=None,
            image_encoder=None, requires_safety_checker=False,
        )
        pipe.save_pretrained(str(tmp), safe_serialization=True)
        marker = {"version": CACHE_VERSION, "recipe": _recipe(steps_scale), "steps_scale": steps_scale, **stats}
        (tmp / MARKER_FILE).write_text(json.dumps(marker, indent=2), encoding="utf-8")
        tmp.chmod(0o755)  # mkdtemp makes it private
        if target.exists() and not _marker_ok(target, steps_scale):
            shutil.rmtree(target)  # built by an older recipe, or foreign
        try:
            os.rename(tmp, target)  # atomic: readers see either nothing or a complete cache
        except OSError:
            if not _marker_ok(target, steps_scale):  # lost a race only if the winner's cache is complete
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load_cached(target)
