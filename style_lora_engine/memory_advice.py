"""What to change when training runs out of memory, in order, with what each change saves on this model.

Weights, LoRA and optimizer figures are counted from the tensors of the run that failed (exact). The
activation figures cannot be counted after the fact; they come from the product benchmark
(``bench/bench_comfy_train.py``, SD1.5 at 256 px, batch 1, ``docs/benchmarks.md``) and are scaled by
batch × pixels, which is how activations grow.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from .config import TrainConfig

# Measured with bench/bench_comfy_train.py (SD1.5, 256 px, batch 1, r32/16, DAdaptAdamW, cached latents):
# RSS while training, fp32 minus fp32 + gradient checkpointing. See docs/benchmarks.md.
CHECKPOINTING_SAVES_AT_256PX_BATCH1 = {"sd15": 0.46 * 2**30}  # 5.76 → 5.30 GiB, 2026-12-02
BENCH_PIXELS = 256 * 256


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def out_of_memory_advice(
    config: TrainConfig,
    *,
    arch: str,
    resolution: int,
    dtype: torch.dtype,
    frozen: Iterable[torch.Tensor] = (),
    lora_params: Iterable[torch.Tensor] = (),
    optimizer: torch.optim.Optimizer | None = None,
) -> list[str]:
    """The changes to try, most memory for least quality first, each with what it saves here."""
    frozen = [t for t in frozen if isinstance(t, torch.Tensor) and t.dtype.is_floating_point]
    half_saving = _bytes(frozen) - 2 * sum(t.numel() for t in {id(t): t for t in frozen}.values())
    lora = list(lora_params)
    lora_bytes = 2 * _bytes(lora)  # weights + gradients
    if optimizer is not None:
        lora_bytes += _bytes(v for state in optimizer.state.values() for v in state.values())
    scale = config.batch_size * resolution * resolution / BENCH_PIXELS
    advice = []
    measured = CHECKPOINTING_SAVES_AT_256PX_BATCH1.get(arch)
    if not config.gradient_checkpointing:
        saves = (f"about {_size(measured * scale)} (measured on SD1.5 at 256 px batch 1: "
                 f"{_size(measured)}, scaled to batch {config.batch_size} at {resolution} px)"
                 if measured else "most of the activations")
        advice.append(f"enable gradient checkpointing: saves {saves}, costs up to ~35 % more time per step")
    if dtype == torch.float32 and half_saving > 0:
        advice.append(f"mixed precision bf16 (fp16 on GPUs without bf16): the frozen U-Net in half precision "
                      f"saves {_size(half_saving)} on this model, and the activations shrink by about half")
    if not config.cache_latents:
        advice.append("turn latent caching on: the VAE then encodes once before training, not every step")
    if config.batch_size > 1:
        advice.append(f"batch size 1: activations shrink to 1/{config.batch_size}")
    advice.append(f"a lower resolution: activations shrink with the pixel count (e.g. {resolution} → "
                  f"{max(256, resolution * 3 // 4 // 64 * 64)} px)")
    if lora_bytes:
        advice.append(f"a lower rank: rank {config.rank} → {max(1, config.rank // 2)} saves {_size(lora_bytes / 2)} "
                      "(LoRA weights, gradients and optimizer state on this model)")
    return advice
