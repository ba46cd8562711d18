"""Training backend for ComfyUI's own MODEL / CLIP / VAE (the outputs of a Load Checkpoint node).

Implements the engine's ``TrainingBackend`` protocol (``style_lora_engine/backend.py``) for a
``ModelPatcher`` around an SD1.5 or SDXL ``BaseModel``:

* LoRA goes on ``model.model.diffusion_model`` (LDM module names; kohya naming is derived from
  them by the engine). The user's MODEL is left as it was: training runs on a clone of the
  patcher sharing the weights, the weights are loaded with ComfyUI's own ``patch_model`` (so any
  LoRA already applied upstream is part of the model being trained) and put back with
  ``unpatch_model``; the peft layers are removed by the engine before that.
* Latents: ``vae.encode`` (BHWC pixels in [0, 1]) then the model's ``latent_format.process_in``.
* Text: ``clip.tokenize`` + ``clip.encode_from_tokens``, so long captions are split into 77-token
  windows exactly as ComfyUI does when sampling; the captions of a step go in one call (SDXL: one per
  caption, for each caption's pooled output); captions of different lengths are padded by repetition
  like ComfyUI's ``CONDCrossAttn.concat`` (exact for attention). Prompt-weight syntax is disabled: a
  caption's "(...)" is text, as in kohya.
* Noise, timesteps and target follow the model's own ``model_sampling``: uniform discrete
  timesteps t in [0, 1000) as kohya samples them, ``sigma = model_sampling.sigma(t)``,
  ``x = noise_scaling(sigma, noise, latent)`` and ``calculate_input`` give exactly DDPM's
  ``sqrt(a)·x0 + sqrt(1-a)·eps``; the loss is the MSE against eps (EPS models) or v
  (V_PREDICTION models), kohya's loss.
* SDXL: ``y`` from ``model.encode_adm`` with the pooled CLIP-G output and each sample's
  original size / crop / target size.

ComfyUI is reached only through ``comfy_modules`` and through methods of the objects passed in;
nothing here imports ComfyUI, so the module loads (and is tested) without it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from typing import Any

import torch

from ..style_lora_engine.backend import SampleGeometry
from ..style_lora_engine.cpu_conv import GemmForSmallConvs
from ..style_lora_engine.errors import ConfigError, StyleLoRAError
from ..style_lora_engine.frozen_weights import HalfPrecisionWeights, inference_tensor
from . import comfy_modules, paths
from .text_encoder_precision import TextEncoderInComputeDtype

log = logging.getLogger("style_lora_trainer")

# ComfyUI class names (comfy/supported_models.py): an SDXL model config is SDXL or a subclass of it
# (SSD-1B, Segmind Vega, KOALA); SD1.5 is SD15.
_SDXL_CONFIGS = ("SDXL",)
_SD15_CONFIGS = ("SD15",)
# Module classes whose forward is recomputed in the backward pass with gradient checkpointing.
_CHECKPOINT_CLASSES = ("SpatialTransformer", "ResBlock")


def _mro_names(obj: Any) -> list[str]:
    return [cls.__name__ for cls in type(obj).__mro__]


def detect_arch(base_model: Any) -> str:
    """``"sd15"`` or ``"sdxl"`` from the ComfyUI model config class, else a ConfigError."""
    config = getattr(base_model, "model_config", None)
    names = _mro_names(config)
    if getattr(base_model, "concat_keys", ()):
        raise ConfigError(
            f"This is an inpainting/instruct model ({type(config).__name__}); train a style LoRA on a regular "
            "SD1.5 or SDXL checkpoint."
        )
    if any(n in names for n in _SDXL_CONFIGS):
        return "sdxl"
    if any(n in names for n in _SD15_CONFIGS):
        return "sd15"
    raise ConfigError(
        f"Training a {type(config).__name__} model is not supported: load an SD1.5 or SDXL checkpoint "
        "with Load Checkpoint."
    )


def layers_per_block(base_model: Any) -> int:
    """The U-Net's res blocks per level (``num_res_blocks``), needed for kohya's SD1.5 block names."""
    value = getattr(base_model, "model_config", None)
    value = getattr(value, "unet_config", {}).get("num_res_blocks", 2)
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values or any(int(v) != int(values[0]) for v in values):
        raise ConfigError(f"This U-Net has a different number of blocks per level ({values}); its LoRA "
                          "keys cannot be named the kohya way.")
    return int(values[0])


def parameterisation(model_sampling: Any) -> str:
    """``"eps"`` or ``"v"`` for ComfyUI's discrete DDPM samplings; ConfigError for anything else."""
    names = _mro_names(model_sampling)
    discrete = "ModelSamplingDiscrete" in names and not any("EDM" in n for n in names)
    if not discrete or not hasattr(model_sampling, "sigmas"):
        raise ConfigError(f"Unsupported model sampling {type(model_sampling).__name__}: the trainer handles "
                          "SD1.5/SDXL discrete eps- or v-prediction models.")
    if "V_PREDICTION" in names:
        return "v"
    if "EPS" in names and not any(n in names for n in ("X0", "IMG_TO_IMG", "CONST")):
        return "eps"
    raise ConfigError(f"Unsupported prediction type of {type(model_sampling).__name__} (eps or v only).")


def noisy_input_and_target(
    model_sampling: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor, kind: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U-Net input, U-Net timestep, training target) for ``latents`` noised at integer ``timesteps``.

    Uses the model's own sampling: ``x = latent + sigma·noise`` (``noise_scaling``), U-Net input
    ``x / sqrt(sigma² + sigma_data²)`` (``calculate_input``) and timestep ``model_sampling.timestep``,
    which is DDPM's ``add_noise`` at the same t. Target: eps = noise; v is the output for which
    ``V_PREDICTION.calculate_denoised`` returns the clean latent (diffusers' ``get_velocity``).
    """
    sigma = model_sampling.sigma(timesteps.float()).to(latents.device, torch.float32)
    x = model_sampling.noise_scaling(sigma, noise, latents)
    x_in = model_sampling.calculate_input(sigma, x)
    t_in = model_sampling.timestep(sigma).float()
    if kind == "eps":
        target = noise
    elif kind == "v":
        sd = float(getattr(model_sampling, "sigma_data", 1.0))
        s = sigma.view(-1, *([1] * (latents.ndim - 1)))
        target = (noise * sd * sd - latents * s) / (sd * torch.sqrt(s * s + sd * sd))
    else:
        raise ValueError(f"unknown parameterisation {kind!r}")
    return x_in, t_in, target


def pad_to_common_length(conds: list[torch.Tensor]) -> torch.Tensor:
    """Stack [1, L_i, D] conds: each repeated along L up to the LCM of the lengths (ComfyUI's
    ``CONDCrossAttn.concat``; repeating all keys equally leaves cross-attention unchanged)."""
    length = 1
    for c in conds:
        length = math.lcm(length, c.shape[1])
    return torch.cat([c.repeat(1, length // c.shape[1], 1) if c.shape[1] < length else c for c in conds])


def _window_count(tokens: Any) -> int | None:
    """Windows of one tokenized caption (the same for every text encoder of the CLIP), else None."""
    if not isinstance(tokens, dict) or not tokens or not all(isinstance(w, list) for w in tokens.values()):
        return None
    counts = {len(windows) for windows in tokens.values()}
    return counts.pop() if len(counts) == 1 and 0 not in counts else None


def checkpoint_name(model: Any) -> str | None:
    """File name of the checkpoint a Load Checkpoint node read this MODEL from, when ComfyUI recorded it."""
    init = getattr(model, "cached_patcher_init", None)
    try:
        path = init[1][0]
    except (TypeError, IndexError, KeyError):
        return None
    return os.path.basename(path) if isinstance(path, str) else None


def _tensors(value: Any, depth: int = 0):
    """Tensors inside a ComfyUI weight patch (a tensor, a weight adapter's ``weights``, tuples/lists)."""
    if depth > 4:
        return
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item, depth + 1)
    elif isinstance(value, dict):
        for key in sorted(value, key=str):
            yield from _tensors(value[key], depth + 1)
    elif hasattr(value, "weights"):
        yield from _tensors(value.weights, depth + 1)


def _digest_tensor(h, tensor: torch.Tensor, limit: int) -> None:
    h.update(repr((tuple(tensor.shape), str(tensor.dtype))).encode())
    try:
        flat = tensor.detach().reshape(-1)[:limit].to("cpu", torch.float32)
    except (RuntimeError, NotImplementedError):  # not materialised (meta / lazily loaded weights)
        return
    h.update(flat.numpy().tobytes())


def model_identity(model: Any) -> str:
    """A stable id of the weights training starts from (identifies the run folder for resuming).

    Survives ComfyUI restarts (unlike the patcher's uuids): a sample of the base U-Net weights (the
    originals if currently patched), the weight patches applied upstream (e.g. a LoraLoader before
    TrainLoRA: keys, strengths and a sample of the patch tensors) and a replaced model sampling.
    """
    h = hashlib.sha256()
    base = model.model
    h.update(type(getattr(base, "model_config", None)).__name__.encode())
    h.update((checkpoint_name(model) or "").encode())
    params = dict(base.diffusion_model.named_parameters())
    names = sorted(params)
    mid = len(names) // 2
    backup = getattr(model, "backup", {}) or {}
    for name in dict.fromkeys(names[:3] + names[mid:mid + 3] + names[-3:]):
        saved = backup.get(f"diffusion_model.{name}")
        tensor = getattr(saved, "weight", None) if saved is not None else None
        h.update(name.encode())
        _digest_tensor(h, tensor if isinstance(tensor, torch.Tensor) else params[name], 4096)
    patches = getattr(model, "patches", {}) or {}
    for key in sorted(patches):
        h.update(key.encode())
        for patch in patches[key]:
            h.update(repr([p for p in patch if isinstance(p, (int, float, str, type(None)))]).encode())
            for tensor in list(_tensors(list(patch)))[:8]:
                _digest_tensor(h, tensor, 256)
    sampling = (getattr(model, "object_patches", {}) or {}).get("model_sampling")
    if sampling is not None:
        h.update(type(sampling).__name__.encode())
        sigmas = getattr(sampling, "sigmas", None)
        if isinstance(sigmas, torch.Tensor):
            _digest_tensor(h, sigmas, 2000)
    return h.hexdigest()[:16]


def make_autograd_usable(module: torch.nn.Module) -> int:
    """Turn inference tensors (weights created while ComfyUI ran under ``torch.inference_mode()``,
    which autograd cannot save for backward) into normal tensors with the same values, in place:
    each Parameter keeps its identity and attributes (``torch.utils.swap_tensors``). Returns the count."""
    count = 0
    for sub in module.modules():
        for name, param in list(sub._parameters.items()):
            if param is None or not inference_tensor(param):
                continue
            fresh = torch.nn.Parameter(param.detach().clone(), requires_grad=param.requires_grad)
            try:
                torch.utils.swap_tensors(param, fresh)
                param.__dict__.update(fresh.__dict__)  # swap_tensors swaps __dict__ too: keep the attributes
            except RuntimeError:
                fresh.__dict__.update(param.__dict__)
                sub._parameters[name] = fresh
            count += 1
        for name, buf in list(sub._buffers.items()):
            if buf is not None and inference_tensor(buf):
                sub._buffers[name] = buf.detach().clone()
                count += 1
    return count


def training_transformer_options() -> dict:
    """Transformer options for training steps: PyTorch's scaled-dot-product attention through ComfyUI's
    attention override, whatever ComfyUI picked for sampling (on CPU it picks sub-quadratic attention,
    ~6 % slower per step here). Sampling keeps the user's choice: only training passes these options."""
    attention = comfy_modules.comfy_module("comfy.ldm.modules.attention")
    sdpa = getattr(attention, "attention_pytorch", None)
    if sdpa is None:
        return {}

    def optimized_attention_override(_default, *args, **kwargs):
        return sdpa(*args, **kwargs)

    return {"optimized_attention_override": optimized_attention_override}


def _builds_weight_per_call(module: torch.nn.Module) -> bool:
    # ComfyUI's manual cast (fp32 compute on half weights, offloading) and per-call weight patches: such a
    # layer keeps ComfyUI's own forward.
    return bool(getattr(module, "comfy_cast_weights", False) or getattr(module, "weight_function", None)
                or getattr(module, "bias_function", None))


def _checkpointed_forward(module: torch.nn.Module):
    forward = type(module).forward

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return forward(module, *args, **kwargs)
        return torch.utils.checkpoint.checkpoint(forward, module, *args, use_reentrant=False, **kwargs)

    return run


class ComfyBackend:
    """``TrainingBackend`` for ComfyUI's MODEL (ModelPatcher), CLIP and VAE."""

    naming = "ldm"

    def __init__(self, model: Any, clip: Any, vae: Any) -> None:
        if clip is None or vae is None:
            raise ConfigError("Connect the CLIP and VAE outputs of the same Load Checkpoint node as the MODEL.")
        for needed in ("tokenize", "encode_from_tokens"):
            if not hasattr(clip, needed):
                raise ConfigError(f"The clip input is a {type(clip).__name__}, not ComfyUI's CLIP.")
        if not hasattr(vae, "encode"):
            raise ConfigError(f"The vae input is a {type(vae).__name__}, not ComfyUI's VAE.")
        self.model, self.clip, self.vae = model, clip, vae
        base = model.model
        self.arch = detect_arch(base)
        self.layers_per_block = layers_per_block(base)
        self._kind = parameterisation(model.get_model_object("model_sampling"))
        self.prediction_type = "v_prediction" if self._kind == "v" else "epsilon"
        self.model_name = checkpoint_name(model) or f"ComfyUI {type(base.model_config).__name__} model"
        self.model_identity = f"{self.model_name}#{model_identity(model)}"
        self.device = torch.device(model.load_device)
        self._mp: Any = None
        self._saved: dict | None = None
        self._half: HalfPrecisionWeights | None = None
        self._vae_aside: HalfPrecisionWeights | None = None
        self._text: TextEncoderInComputeDtype | None = None
        self._transformer_options: dict = {}
        self._convs: GemmForSmallConvs | None = None

    # -- the model being trained -------------------------------------------------------------

    def _training_patcher(self) -> Any:
        if self._mp is None:
            if getattr(self.model, "is_dynamic", lambda: False)():
                # Dynamic VRAM keeps weights off the GPU and streams them per layer; autograd needs
                # them resident. A non-dynamic clone is re-created from the checkpoint file.
                try:
                    self._mp = self.model.clone(disable_dynamic=True)
                except RuntimeError as exc:
                    raise StyleLoRAError(
                        f"Cannot get a trainable copy of this MODEL ({exc}). Load it with Load Checkpoint, or "
                        "start ComfyUI with --disable-dynamic-vram."
                    ) from exc
            else:
                self._mp = self.model.clone()
        return self._mp

    def lora_module(self) -> torch.nn.Module:
        return self._training_patcher().model.diffusion_model

    def begin_training(self, *, dtype: torch.dtype, gradient_checkpointing: bool) -> None:
        mm = comfy_modules.comfy_module("comfy.model_management")
        if mm is not None:
            # Give the GPU to training: every model ComfyUI holds is offloaded (and unpatched).
            mm.unload_all_models()
            mm.soft_empty_cache()
        mp = self._training_patcher()
        if dtype == torch.float32 and mp.model_dtype() not in (None, torch.float32):
            # fp32 compute on half-precision weights: ComfyUI's manual cast (per-layer casting).
            mp.set_model_compute_dtype(torch.float32)
        with torch.inference_mode(False):
            # ComfyUI's own loading: weight patches applied (originals backed up), moved to the torch
            # device. Not registered as a loaded model, so nothing ComfyUI loads during training (CLIP,
            # VAE) can offload or re-patch it under us.
            try:
                mp.patch_model(device_to=self.device)
            except BaseException as exc:
                mp.unpatch_model(device_to=mp.offload_device, unpatch_weights=True)
                self._mp = None
                if isinstance(exc, torch.OutOfMemoryError):
                    raise StyleLoRAError(
                        f"Not enough memory to load the U-Net for training on {self.device} ({exc}). Close other "
                        "programs using the GPU, or use the low-VRAM preset / a smaller model."
                    ) from exc
                raise
            unet = mp.model.diffusion_model
            self._saved = {"training": unet.training,
                           "requires_grad": {n: p.requires_grad for n, p in unet.named_parameters()},
                           "in_training": getattr(mm, "in_training", None), "wrapped": []}
            try:
                converted = make_autograd_usable(unet)
                if converted:
                    log.debug("style_lora: %d inference-mode tensors made usable by autograd", converted)
                unet.requires_grad_(False)
                unet.train()
                if gradient_checkpointing:
                    for module in unet.modules():
                        if type(module).__name__ in _CHECKPOINT_CLASSES:
                            module.forward = _checkpointed_forward(module)
                            self._saved["wrapped"].append(module)
                self._dtype = dtype
                self._input_dtype = mp.model.get_dtype_inference()
                if dtype != torch.float32:
                    # The frozen U-Net runs from one copy in the compute dtype (kohya's recipe) instead of
                    # autocasting fp32 weights layer by layer each step; the user's weights are set aside
                    # untouched (on the CPU the spill goes to disk, so RAM holds only the copy).
                    self._half = HalfPrecisionWeights(
                        unet, dtype, spill_dir=paths.runs_dir() if self.device.type == "cpu" else None)
                    moved = self._half.apply()
                    self._input_dtype = dtype
                    log.debug("style_lora: U-Net weights in %s for training (%d MiB set aside)", dtype, moved >> 20)
                    # The captions of every step are encoded: the text encoder computes in that dtype too.
                    self._text = TextEncoderInComputeDtype(
                        self.clip, dtype, spill_dir=paths.runs_dir() if self.device.type == "cpu" else None)
                    self._text.apply()
                self._transformer_options = training_transformer_options()
                # The deepest levels' convs as one GEMM on a CPU (oneDNN is 2-4x slower there).
                self._convs = GemmForSmallConvs(unet, self.device, keep=_builds_weight_per_call)
                self._sampling = mp.get_model_object("model_sampling")
                self._num_timesteps = int(len(self._sampling.sigmas))
            except BaseException:
                self.end_training()  # the trainer only undoes a begin_training that returned
                raise
        if mm is not None:
            mm.in_training = True

    def end_training(self) -> None:
        if self._saved is None:
            return
        mp, saved = self._mp, self._saved
        self._saved = None
        mm = comfy_modules.comfy_module("comfy.model_management")
        failed: BaseException | None = None
        try:
            if self._convs is not None:
                self._convs.remove()
                self._convs = None
            # Each set-aside comes back even if another fails (a CLIP that cannot be restored must not
            # leave the U-Net on its bf16 copy); the U-Net's before unpatch_model, which copies
            # ComfyUI's backups into these parameters. The first failure is raised at the end.
            for name in ("_text", "_vae_aside", "_half"):
                aside = getattr(self, name)
                setattr(self, name, None)
                try:
                    if aside is not None:
                        aside.restore()
                except BaseException as exc:  # noqa: BLE001  (re-raised below)
                    failed = failed or exc
            unet = mp.model.diffusion_model
            for module in saved["wrapped"]:
                module.__dict__.pop("forward", None)
            unet.train(saved["training"])
            for name, param in unet.named_parameters():
                param.requires_grad_(saved["requires_grad"].get(name, False))
            mp.unpatch_model(device_to=mp.offload_device, unpatch_weights=True)
            for module in unet.modules():
                # The manual-cast flag set for fp32 training (ComfyUI resets it on a full load only).
                if "prev_comfy_cast_weights" in module.__dict__:
                    module.comfy_cast_weights = module.__dict__.pop("prev_comfy_cast_weights")
            if failed is not None:
                raise failed
        finally:
            self._mp = None
            if mm is not None:
                if saved["in_training"] is not None:
                    mm.in_training = saved["in_training"]
                mm.soft_empty_cache()

    def latents_cached(self) -> None:
        """Every latent is cached: the VAE is not needed until training ends, so on a CPU its weights go
        to a temporary file meanwhile (RAM is what training runs out of there; a GPU holds no VAE now)."""
        vae_module = getattr(self.vae, "first_stage_model", None)
        if self.device.type != "cpu" or not isinstance(vae_module, torch.nn.Module) or self._saved is None:
            return
        self._vae_aside = HalfPrecisionWeights(vae_module, None, spill_dir=paths.runs_dir())
        moved = self._vae_aside.apply()
        log.debug("style_lora: VAE weights set aside while training (%d MiB)", moved >> 20)

    # -- data ----------------------------------------------------------------------------------

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        images = ((pixels.float() + 1.0) / 2.0).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
        raw = self.vae.encode(images)
        latents = self.model.get_model_object("latent_format").process_in(raw.float())
        return latents.float().cpu()

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        tokens = [self.clip.tokenize(caption, disable_weights=True) for caption in captions]
        windows = [_window_count(t) for t in tokens]
        if self.arch == "sdxl" or None in windows or len({tuple(sorted(t)) for t in tokens}) != 1:
            # SDXL needs each caption's pooled CLIP-G output, and ComfyUI returns one per call.
            return self._encode_each(tokens)
        # One call for the whole batch: ComfyUI encodes all 77-token windows of a call as one batch
        # and joins them along the sequence, so the captions are cut apart again by window count.
        merged = {key: [w for t in tokens for w in t[key]] for key in tokens[0]}
        cond = self.clip.encode_from_tokens(merged).float()
        length = cond.shape[1] // sum(windows)
        conds = list(torch.split(cond, [n * length for n in windows], dim=1))
        return pad_to_common_length(conds), None

    def _encode_each(self, tokens: list[dict]) -> tuple[torch.Tensor, torch.Tensor | None]:
        conds, pooled = [], []
        for caption_tokens in tokens:
            cond, pool = self.clip.encode_from_tokens(caption_tokens, return_pooled=True)
            conds.append(cond.float())
            pooled.append(pool)
        context = pad_to_common_length(conds)
        if any(p is None for p in pooled):
            return context, None
        return context, torch.cat([p.float() for p in pooled])

    def _adm(self, pooled: torch.Tensor | None, geometry: list[SampleGeometry]) -> torch.Tensor:
        if pooled is None:
            raise StyleLoRAError("The SDXL text encoder returned no pooled output (CLIP-G); is this an SDXL CLIP?")
        base = self.model.model
        rows = []
        for i, g in enumerate(geometry):
            (oh, ow), (top, left), (th, tw) = g.original_hw, g.crop_top_left, g.target_hw
            rows.append(base.encode_adm(pooled_output=pooled[i:i + 1], width=ow, height=oh, crop_w=left,
                                        crop_h=top, target_width=tw, target_height=th))
        return torch.cat(rows)

    @property
    def num_train_timesteps(self) -> int:
        return self._num_timesteps

    def alphas_cumprod(self) -> torch.Tensor:
        """DDPM's ᾱ_t per integer timestep from the model's own sigmas (sigma² = (1 - ᾱ) / ᾱ)."""
        sigmas = self._sampling.sigmas.detach().to("cpu", torch.float32)
        return 1.0 / (sigmas * sigmas + 1.0)

    def predict(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        captions: list[str],
        geometry: list[SampleGeometry],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        context, pooled = self.encode_text(captions)
        device, dtype = self.device, self._input_dtype
        x_in, t_in, target = noisy_input_and_target(self._sampling, latents.to(device, torch.float32),
                                                    noise.to(device), timesteps, self._kind)
        extra = {}
        if self.arch == "sdxl":
            extra["y"] = self._adm(pooled, geometry).to(device, dtype)
        unet = self._mp.model.diffusion_model
        with torch.autocast(device.type, dtype=self._dtype, enabled=self._dtype != torch.float32):
            pred = unet(x_in.to(dtype), t_in.to(device), context=context.to(device, dtype),
                        transformer_options=dict(self._transformer_options), **extra)
        return pred, target
