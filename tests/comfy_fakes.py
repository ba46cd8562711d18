"""Stand-ins for ComfyUI's MODEL / CLIP / VAE and for the comfy modules the pack calls, for CI
without ComfyUI. They mirror the interfaces the ComfyUI backend and preview use (ModelPatcher,
BaseModel, model_sampling, CLIP, VAE, comfy.sample/sd/utils/model_management); the e2e tier checks
the same code against the real ones.

The model sampling below is a copy of ComfyUI's discrete DDPM sampling (comfy/model_sampling.py:
``ModelSamplingDiscrete`` with the SD "linear" = scaled-linear schedule, ``EPS`` and
``V_PREDICTION``) so the noise/target maths can be compared with diffusers' DDPMScheduler here.
"""

from __future__ import annotations

import hashlib
import math
from types import SimpleNamespace

import torch
from torch import nn

# --- model sampling (copied from ComfyUI 0.33.0, trimmed) ------------------------------------


def _reshape_sigma(sigma, ndim):
    return sigma.view(()) if sigma.nelement() == 1 else sigma.view(sigma.shape[:1] + (1,) * (ndim - 1))


class EPS:
    def calculate_input(self, sigma, noise):
        sigma = _reshape_sigma(sigma, noise.ndim)
        return noise / (sigma ** 2 + self.sigma_data ** 2) ** 0.5

    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = _reshape_sigma(sigma, model_output.ndim)
        return model_input - model_output * sigma

    def noise_scaling(self, sigma, noise, latent_image, max_denoise=False):
        sigma = _reshape_sigma(sigma, noise.ndim)
        noise = noise * sigma
        noise += latent_image
        return noise


class V_PREDICTION(EPS):
    def calculate_denoised(self, sigma, model_output, model_input):
        sigma = _reshape_sigma(sigma, model_output.ndim)
        sd = self.sigma_data
        return (model_input * sd ** 2 / (sigma ** 2 + sd ** 2)
                - model_output * sigma * sd / (sigma ** 2 + sd ** 2) ** 0.5)


class X0(EPS):
    pass


class ModelSamplingDiscrete(nn.Module):
    def __init__(self):
        super().__init__()
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)
        sigmas = ((1 - alphas_cumprod) / alphas_cumprod) ** 0.5
        self.register_buffer("sigmas", sigmas.float())
        self.register_buffer("log_sigmas", sigmas.log().float())
        self.sigma_data = 1.0

    def timestep(self, sigma):
        log_sigma = sigma.log()
        dists = log_sigma.to(self.log_sigmas.device) - self.log_sigmas[:, None]
        return dists.abs().argmin(dim=0).view(sigma.shape).to(sigma.device)

    def sigma(self, timestep):
        t = torch.clamp(timestep.float().to(self.log_sigmas.device), min=0, max=(len(self.sigmas) - 1))
        low_idx, high_idx, w = t.floor().long(), t.ceil().long(), t.frac()
        log_sigma = (1 - w) * self.log_sigmas[low_idx] + w * self.log_sigmas[high_idx]
        return log_sigma.exp().to(timestep.device)


def model_sampling(kind: str = "eps"):
    parent = {"eps": EPS, "v": V_PREDICTION, "x0": X0}[kind]

    class ModelSampling(ModelSamplingDiscrete, parent):
        pass

    return ModelSampling()


# --- a tiny U-Net with ComfyUI's (LDM) module names ------------------------------------------


class CrossAttention(nn.Module):
    def __init__(self, dim, context_dim):
        super().__init__()
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x, context, transformer_options=None):
        q, k, v = self.to_q(x), self.to_k(context), self.to_v(context)
        # ComfyUI's wrap_attn: an "optimized_attention_override" in the transformer options replaces the
        # attention function picked at start-up (called with that function as its first argument).
        override = (transformer_options or {}).get("optimized_attention_override")
        if override is not None:
            out = override(default_attention, q, k, v, 1, transformer_options=transformer_options,
                           _inside_attn_wrapper=True)
        else:
            out = default_attention(q, k, v, 1)
        return self.to_out[1](self.to_out[0](out))


def default_attention(q, k, v, heads, **kwargs):
    """Stands in for the attention ComfyUI picked at start-up (sub-quadratic on CPU)."""
    return torch.nn.functional.scaled_dot_product_attention(q, k, v)


def fake_attention_module():
    """``comfy.ldm.modules.attention`` with an ``attention_pytorch`` that counts its calls."""
    calls = []

    def attention_pytorch(q, k, v, heads, **kwargs):
        calls.append({"heads": heads, "dtype": q.dtype, "inside_wrapper": kwargs.get("_inside_attn_wrapper")})
        return torch.nn.functional.scaled_dot_product_attention(q, k, v)

    return SimpleNamespace(attention_pytorch=attention_pytorch, calls=calls)


class GEGLU(nn.Module):
    def __init__(self, dim, inner):
        super().__init__()
        self.proj = nn.Linear(dim, inner * 2)

    def forward(self, x):
        a, gate = self.proj(x).chunk(2, dim=-1)
        return a * torch.nn.functional.gelu(gate)


class FeedForward(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.net = nn.Sequential(GEGLU(dim, dim * 2), nn.Dropout(0.0), nn.Linear(dim * 2, dim))

    def forward(self, x):
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    def __init__(self, dim, context_dim):
        super().__init__()
        self.attn1 = CrossAttention(dim, dim)
        self.attn2 = CrossAttention(dim, context_dim)
        self.ff = FeedForward(dim)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, x, context, transformer_options=None):
        n = self.norm1(x)
        x = x + self.attn1(n, n, transformer_options)
        x = x + self.attn2(self.norm2(x), context, transformer_options)
        return x + self.ff(self.norm3(x))


class SpatialTransformer(nn.Module):
    def __init__(self, dim, context_dim, linear: bool):
        super().__init__()
        self.linear = linear
        self.norm = nn.GroupNorm(4, dim)
        self.proj_in = nn.Linear(dim, dim) if linear else nn.Conv2d(dim, dim, 1)
        self.transformer_blocks = nn.ModuleList([BasicTransformerBlock(dim, context_dim)])
        self.proj_out = nn.Linear(dim, dim) if linear else nn.Conv2d(dim, dim, 1)

    def forward(self, x, context=None, transformer_options=None):
        b, c, h, w = x.shape
        x_in = x
        x = self.norm(x)
        if not self.linear:
            x = self.proj_in(x)
        x = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        if self.linear:
            x = self.proj_in(x)
        for block in self.transformer_blocks:
            x = block(x, context, transformer_options)
        if self.linear:
            x = self.proj_out(x)
        x = x.reshape(b, h, w, c).permute(0, 3, 1, 2)
        if not self.linear:
            x = self.proj_out(x)
        return x + x_in


class ResBlock(nn.Module):
    def __init__(self, dim, emb_dim):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)
        self.emb = nn.Linear(emb_dim, dim)

    def forward(self, x, emb):
        return x + self.conv(torch.nn.functional.silu(x)) + self.emb(emb)[:, :, None, None]


class TimestepEmbedSequential(nn.Sequential):
    pass


class TinyUNet(nn.Module):
    """input_blocks.0 conv, input_blocks.1 = (ResBlock, SpatialTransformer), middle_block =
    (ResBlock, SpatialTransformer, ResBlock), output_blocks.0 = (ResBlock, SpatialTransformer): the
    LDM layout of a U-Net with one level and ``num_res_blocks`` = 1."""

    def __init__(self, dim=8, context_dim=16, adm_dim=None, linear=False):
        super().__init__()
        self.dim = dim
        self.time_embed = nn.Sequential(nn.Linear(dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.label_emb = nn.Sequential(nn.Linear(adm_dim, dim)) if adm_dim else None
        self.input_blocks = nn.ModuleList([
            TimestepEmbedSequential(nn.Conv2d(4, dim, 3, padding=1)),
            TimestepEmbedSequential(ResBlock(dim, dim), SpatialTransformer(dim, context_dim, linear)),
        ])
        self.middle_block = TimestepEmbedSequential(ResBlock(dim, dim), SpatialTransformer(dim, context_dim, linear),
                                                    ResBlock(dim, dim))
        self.output_blocks = nn.ModuleList([
            TimestepEmbedSequential(ResBlock(dim, dim), SpatialTransformer(dim, context_dim, linear)),
        ])
        self.out = nn.Sequential(nn.GroupNorm(4, dim), nn.SiLU(), nn.Conv2d(dim, 4, 3, padding=1))
        self.calls: list[dict] = []

    def _run(self, seq, h, emb, context, transformer_options):
        for layer in seq:
            if isinstance(layer, ResBlock):
                h = layer(h, emb)
            elif isinstance(layer, SpatialTransformer):
                h = layer(h, context, transformer_options)
            else:
                h = layer(h)
        return h

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        assert (y is not None) == (self.label_emb is not None)
        self.calls.append({"x": x.detach().clone(), "t": timesteps.detach().clone(),
                           "context": context.detach().clone(), "y": None if y is None else y.detach().clone(),
                           "dtype": x.dtype, "weight_dtype": self.out[2].weight.dtype,
                           "transformer_options": dict(transformer_options or {})})
        half = self.dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
        args = timesteps[:, None].float() * freqs[None]
        emb = self.time_embed(torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(x.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        opts = transformer_options or {}
        h = self._run(self.input_blocks[0], x, emb, context, opts)
        skip = self._run(self.input_blocks[1], h, emb, context, opts)
        h = self._run(self.middle_block, skip, emb, context, opts)
        h = self._run(self.output_blocks[0], h + skip, emb, context, opts)
        return self.out(h)


# --- BaseModel / ModelPatcher / CLIP / VAE ---------------------------------------------------


class SD15:
    unet_config = {"num_res_blocks": [1], "context_dim": 16}


class SDXL:
    unet_config = {"num_res_blocks": [1], "context_dim": 16}


class SD20:
    unet_config = {"num_res_blocks": [1]}


class LatentFormat:
    scale_factor = 0.5

    def process_in(self, latent):
        return latent * self.scale_factor


class FakeBaseModel(nn.Module):
    def __init__(self, arch="sd15", kind="eps", seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.model_config = {"sd15": SD15, "sdxl": SDXL, "sd20": SD20}[arch]()
        self.diffusion_model = TinyUNet(adm_dim=14 if arch == "sdxl" else None, linear=arch == "sdxl")
        self.diffusion_model.requires_grad_(False).eval()
        self.model_sampling = model_sampling(kind)
        self.latent_format = LatentFormat()
        self.concat_keys = ()
        self.manual_cast_dtype = None
        self.adm_calls: list[dict] = []

    def get_dtype(self):
        return next(self.diffusion_model.parameters()).dtype

    def get_dtype_inference(self):
        return self.manual_cast_dtype or self.get_dtype()

    def process_latent_in(self, latent):
        return self.latent_format.process_in(latent)

    def encode_adm(self, **kwargs):
        self.adm_calls.append({k: v for k, v in kwargs.items() if k != "pooled_output"})
        pooled = kwargs["pooled_output"]
        sizes = torch.tensor([[kwargs["height"], kwargs["width"], kwargs["crop_h"], kwargs["crop_w"],
                               kwargs["target_height"], kwargs["target_width"]]], dtype=torch.float32) / 64.0
        return torch.cat([pooled, sizes.repeat(pooled.shape[0], 1)], dim=1)


class FakePatcher:
    """The parts of comfy.model_patcher.ModelPatcher the pack uses, with call records."""

    def __init__(self, model, log=None, parent=None):
        self.model = model
        self.load_device = torch.device("cpu")
        self.offload_device = torch.device("cpu")
        self.patches: dict = {}
        self.backup: dict = {}
        self.object_patches: dict = {}
        self.parent = parent
        self.log = log if log is not None else []
        self.cached_patcher_init = None
        self.dynamic = False

    def clone(self, disable_dynamic=False):
        self.log.append(("clone", id(self), disable_dynamic))
        n = FakePatcher(self.model, self.log, parent=self)
        n.patches = {k: list(v) for k, v in self.patches.items()}
        n.object_patches = dict(self.object_patches)
        n.cached_patcher_init = self.cached_patcher_init
        return n

    def is_dynamic(self):
        return self.dynamic

    def get_model_object(self, name):
        if name in self.object_patches:
            return self.object_patches[name]
        return getattr(self.model, name)

    def model_dtype(self):
        return self.model.get_dtype()

    def set_model_compute_dtype(self, dtype):
        self.log.append(("set_model_compute_dtype", id(self), dtype))
        self.object_patches["manual_cast_dtype"] = dtype

    def patch_model(self, device_to=None, lowvram_model_memory=0, load_weights=True, force_patch_weights=False):
        self.log.append(("patch_model", id(self), str(device_to)))
        self._old_cast = self.model.manual_cast_dtype
        if "manual_cast_dtype" in self.object_patches:
            self.model.manual_cast_dtype = self.object_patches["manual_cast_dtype"]
        return self.model

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        self.log.append(("unpatch_model", id(self), str(device_to)))
        self.model.manual_cast_dtype = getattr(self, "_old_cast", None)

    def add_patches(self, patches, strength_patch=1.0, strength_model=1.0):
        for key, value in patches.items():
            self.patches.setdefault(key, []).append((strength_patch, value, strength_model, None, None))
        return list(patches)


def _token_ids(text: str) -> list[int]:
    return [int(hashlib.sha256(w.encode()).hexdigest()[:6], 16) % 49000 for w in text.split()]


class FakeTextTransformer(nn.Module):
    """ComfyUI's ``CLIPTextModel`` call shape: ``forward(input_tokens, attention_mask, embeds=..., dtype=fp32)``
    computing in ``dtype`` (position embedding cast to it, weights cast to the input's dtype as
    ComfyUI's manual-cast ops do); returns (last hidden, intermediate, projected pooled, pooled)."""

    def __init__(self, width=16, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed + 77)
        self.position = nn.Parameter((torch.randn(77, width, generator=gen) * 0.1).half())
        self.proj = nn.Linear(width, width)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(width) + 0.1 * torch.randn(width, width, generator=gen))
            self.proj.bias.copy_(0.1 * torch.randn(width, generator=gen))
        self.half()
        self.calls: list[dict] = []  # dtypes seen: compute, embeds, weights

    def forward(self, input_tokens=None, attention_mask=None, embeds=None, num_tokens=None,
                intermediate_output=None, final_layer_norm_intermediate=True, dtype=torch.float32, embeds_info=()):
        self.calls.append({"dtype": dtype, "embeds": embeds.dtype, "weight": self.proj.weight.dtype})
        x = embeds + self.position.to(dtype)
        x = torch.nn.functional.linear(x, self.proj.weight.to(x.dtype), self.proj.bias.to(x.dtype))
        return x, None, x[:, 0], x[:, 0]


class FakeSDClip(nn.Module):
    """ComfyUI's ``SDClipModel``: token embeddings (``process_tokens``, fp32 out) then the transformer,
    called with ComfyUI's hard-coded ``dtype=torch.float32``."""

    def __init__(self, width=16, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.token_embedding = nn.Embedding(49408, width)
        with torch.no_grad():
            self.token_embedding.weight.copy_(torch.randn(49408, width, generator=gen))
        self.token_embedding.half()
        self.transformer = FakeTextTransformer(width, seed)

    def process_tokens(self, tokens, device):
        ids = torch.tensor([[t for t, _w in window] for window in tokens], device=device)
        return self.token_embedding(ids).float()

    def forward(self, tokens):
        embeds = self.process_tokens(tokens, self.token_embedding.weight.device)
        out = self.transformer(None, None, embeds=embeds, dtype=torch.float32)
        return out[0].float(), out[2].float()


class FakeCLIP:
    """``tokenize`` -> {"l": [77-token windows of (token, weight)]}; ``encode_from_tokens`` runs the
    windows through ``cond_stage_model.clip_l`` (ComfyUI's layout, fp16 weights) -> cond
    [1, 77·windows, 16] (+ pooled [1, 8]); 10 words per window here."""

    def __init__(self, pooled=True):
        self.pooled = pooled
        self.tokenize_calls: list[dict] = []
        self.cond_stage_model = nn.Module()
        self.cond_stage_model.clip_l = FakeSDClip()

    def tokenize(self, text, return_word_ids=False, **kwargs):
        self.tokenize_calls.append({"text": text, **kwargs})
        ids = _token_ids(text)
        windows = [ids[i:i + 10] for i in range(0, len(ids), 10)] or [[]]
        return {"l": [[(49406, 1.0)] + [(t, 1.0) for t in w] + [(49407, 1.0)] * (76 - len(w)) for w in windows]}

    @torch.no_grad()
    def encode_from_tokens(self, tokens, return_pooled=False, return_dict=False):
        windows = tokens["l"]
        z, first = self.cond_stage_model.clip_l(windows)
        cond = z.reshape(1, -1, z.shape[-1])
        pooled = first[:1, :8].clone() if self.pooled else None
        if return_dict:
            return {"cond": cond, "pooled_output": pooled}
        return (cond, pooled) if return_pooled else cond

    def encode_from_tokens_scheduled(self, tokens):
        out = self.encode_from_tokens(tokens, return_dict=True)
        cond = out.pop("cond")
        return [[cond, out]]

    def clone(self):
        return self


class FakeVAE:
    def __init__(self):
        self.encode_inputs: list[torch.Tensor] = []
        # ComfyUI leaves the VAE's parameters with requires_grad=True
        self.first_stage_model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3))

    def encode(self, pixels):
        assert pixels.ndim == 4 and pixels.shape[-1] == 3, "ComfyUI's VAE takes BHWC"
        assert float(pixels.min()) >= 0.0 and float(pixels.max()) <= 1.0
        self.encode_inputs.append(pixels.clone())
        x = pixels.movedim(-1, 1)
        pooled = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([pooled, pooled.mean(dim=1, keepdim=True)], dim=1) * 2 - 1

    def decode(self, latent):
        img = torch.nn.functional.interpolate(latent[:, :3], scale_factor=8)
        return ((img + 1) / 2).clamp(0, 1).movedim(1, -1)


def comfy_objects(arch="sd15", kind="eps", seed=0):
    model = FakeBaseModel(arch, kind, seed)
    patcher = FakePatcher(model)
    patcher.cached_patcher_init = (lambda *a, **k: None, ("/models/checkpoints/my_model.safetensors", False), 0)
    with torch.inference_mode():  # ComfyUI loads checkpoints so: their weights are inference tensors
        clip, vae = FakeCLIP(), FakeVAE()
    return patcher, clip, vae


def fake_model_management():
    calls = []
    return SimpleNamespace(
        calls=calls, in_training=False,
        unload_all_models=lambda: calls.append("unload_all_models"),
        soft_empty_cache=lambda force=False: calls.append("soft_empty_cache"),
        intermediate_device=lambda: torch.device("cpu"),
        intermediate_dtype=lambda: torch.float32,
        throw_exception_if_processing_interrupted=lambda: calls.append("interrupt_check"),
    )
