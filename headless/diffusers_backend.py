"""Training backend for a diffusers model (``DiffusersSD``): used by the demo, CLI and tests."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

import torch

from ..style_lora_engine.backend import SampleGeometry
from ..style_lora_engine.cpu_conv import GemmForSmallConvs
from ..style_lora_engine.frozen_weights import HalfPrecisionWeights
from ..style_lora_engine.text_chunks import chunk_token_ids

if TYPE_CHECKING:  # the bundle imports this module, not the other way round
    from .model_bundle import DiffusersSD


class DiffusersBackend:
    naming = "diffusers"

    def __init__(self, model: DiffusersSD, device: torch.device | str | None = None) -> None:
        self.model = model
        self.arch = model.arch
        self.model_name = model.name
        self.layers_per_block = model.layers_per_block
        self.prediction_type = model.prediction_type  # "epsilon" or "v_prediction" (file metadata)
        self.device = torch.device(device) if device else next(model.unet.parameters()).device
        self.data_parallel = model.data_parallel  # read by the trainer (style_lora_engine/data_parallel.py)
        self._saved: dict | None = None
        self._half: HalfPrecisionWeights | None = None
        self._convs: GemmForSmallConvs | None = None

    def lora_module(self) -> torch.nn.Module:
        return self.model.unet

    def begin_training(self, *, dtype: torch.dtype, gradient_checkpointing: bool) -> None:
        unet = self.model.unet
        self._saved = {
            "device": next(unet.parameters()).device,
            "training": unet.training,
            "grad_ckpt": bool(unet.is_gradient_checkpointing),
            "requires_grad": {n: p.requires_grad for n, p in unet.named_parameters()},
        }
        unet.requires_grad_(False)
        unet.to(self.device)
        for module in (self.model.vae, self.model.text_encoder, self.model.text_encoder_2):
            if module is not None:
                module.requires_grad_(False).to(self.device)
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        unet.train()
        self._dtype = dtype
        if dtype != torch.float32:
            # As the ComfyUI backend (and kohya): the frozen U-Net runs from one copy in the compute dtype, the
            # fp32 originals set aside (on a CPU to a temporary file) and put back bit for bit. Autocast on the
            # fp32 weights would hold them and, saved for backward, a half-precision copy of each per step.
            spill = tempfile.gettempdir() if self.device.type == "cpu" else None
            self._half = HalfPrecisionWeights(unet, dtype, spill_dir=spill)
            self._half.apply()
        # The deepest levels' convs as one GEMM on a CPU (oneDNN is 2-4x slower there).
        self._convs = GemmForSmallConvs(unet, self.device)

    def end_training(self) -> None:
        if self._saved is None:
            return
        if self._convs is not None:
            self._convs.remove()
            self._convs = None
        if self._half is not None:
            self._half.restore()
            self._half = None
        unet = self.model.unet
        if not self._saved["grad_ckpt"] and unet.is_gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        unet.train(self._saved["training"])
        for name, param in unet.named_parameters():
            param.requires_grad_(self._saved["requires_grad"].get(name, param.requires_grad))
        unet.to(self._saved["device"])
        self._saved = None

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae = self.model.vae
        pixels = pixels.to(self.device, dtype=vae.dtype)
        # The posterior mean, not a sample: cached latents stay deterministic, so a resumed run
        # sees exactly the latents an uninterrupted one did.
        latents = vae.encode(pixels).latent_dist.mode()
        shift = getattr(vae.config, "shift_factor", None) or 0.0
        return ((latents - shift) * vae.config.scaling_factor).float().cpu()

    def _encode_one_encoder(self, encoder, tokenizer, captions: list[str], pooled: bool):
        ids = tokenizer(captions, add_special_tokens=False)["input_ids"]
        chunks_per_caption = [
            chunk_token_ids(
                list(seq),
                bos=tokenizer.bos_token_id,
                eos=tokenizer.eos_token_id,
                pad=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id,
                window=tokenizer.model_max_length,
            )
            for seq in ids
        ]
        # Every caption of a batch must have the same sequence length: pad with empty chunks.
        n_chunks = max(len(c) for c in chunks_per_caption)
        empty = chunk_token_ids([], bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
                                pad=tokenizer.pad_token_id or tokenizer.eos_token_id,
                                window=tokenizer.model_max_length)[0]
        hidden, pooled_out = [], None
        for k in range(n_chunks):
            batch = [c[k] if k < len(c) else empty for c in chunks_per_caption]
            input_ids = torch.tensor(batch, device=self.device)
            out = encoder(input_ids, output_hidden_states=True)
            if self.arch == "sdxl":
                hidden.append(out.hidden_states[-2])  # SDXL conditions on the penultimate layer
            else:
                hidden.append(out.last_hidden_state)
            if pooled and k == 0:
                pooled_out = out.text_embeds  # pooled embedding of the first window, as ComfyUI does
        return torch.cat(hidden, dim=1), pooled_out

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        m = self.model
        if self.arch == "sdxl":
            h1, _ = self._encode_one_encoder(m.text_encoder, m.tokenizer, captions, pooled=False)
            h2, pooled = self._encode_one_encoder(m.text_encoder_2, m.tokenizer_2, captions, pooled=True)
            return torch.cat([h1, h2], dim=-1), pooled
        hidden, _ = self._encode_one_encoder(m.text_encoder, m.tokenizer, captions, pooled=False)
        return hidden, None

    @property
    def num_train_timesteps(self) -> int:
        return int(self.model.noise_scheduler.config.num_train_timesteps)

    def alphas_cumprod(self) -> torch.Tensor:
        return self.model.noise_scheduler.alphas_cumprod.detach().to("cpu", torch.float32)

    def predict(
        self,
        latents: torch.Tensor,
        noise: torch.Tensor,
        timesteps: torch.Tensor,
        captions: list[str],
        geometry: list[SampleGeometry],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sched = self.model.noise_scheduler
        noisy = sched.add_noise(latents, noise, timesteps)
        if self.model.prediction_type == "v_prediction":
            target = sched.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        context, pooled = self.encode_text(captions)
        kwargs = {}
        if self.arch == "sdxl":
            time_ids = torch.tensor(
                [[*g.original_hw, *g.crop_top_left, *g.target_hw] for g in geometry], dtype=torch.float32
            )
            kwargs["added_cond_kwargs"] = {"text_embeds": pooled, "time_ids": time_ids.to(self.device)}
        device_type = self.device.type
        with torch.autocast(device_type, dtype=self._dtype, enabled=self._dtype != torch.float32):
            pred = self.model.unet(
                noisy.to(self.device), timesteps.to(self.device), encoder_hidden_states=context, **kwargs
            ).sample
        return pred, target.to(self.device)
