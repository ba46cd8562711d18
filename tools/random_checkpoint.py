"""Random-weight checkpoints in a recorded layout (key names and shapes), without ComfyUI.

``tests/data/ldm_layout_sd15.json`` / ``ldm_layout_sdxl.json`` (``tools/dump_checkpoint_layouts.py``)
record the A1111/ComfyUI single-file layout from ComfyUI's own classes; :func:`write_random_checkpoint`
fills it with random weights, so CI can test loading a user's checkpoint file offline. The scheme is
the one ``comfy_random_models`` uses for the e2e checkpoints: small random weights that keep a random
model's activations finite.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

LAYOUT_DIR = Path(__file__).resolve().parent.parent / "tests" / "data"


def _std(name: str, shape: tuple[int, ...]) -> float | None:
    """None: constant init (norm weight 1, biases 0); else the normal std for this tensor."""
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "bias" or len(shape) <= 1:  # biases, norm weights, scalars
        return None
    if "embedding" in name:
        return 0.02
    fan_in = math.prod(shape[1:])
    return 1.0 / math.sqrt(fan_in)  # unit-variance activations, so a random model stays finite


def fill(name: str, shape: tuple[int, ...], gen, dtype):
    import torch

    std = _std(name, shape)
    if std is None:
        if name.endswith(".weight") and len(shape) == 1:
            return torch.ones(shape, dtype=dtype)
        return torch.zeros(shape, dtype=dtype)
    return (torch.randn(shape, generator=gen, dtype=torch.float32) * std).to(dtype)


def read_layout(arch: str) -> dict[str, tuple[int, ...]]:
    raw = json.loads((LAYOUT_DIR / f"ldm_layout_{arch}.json").read_text(encoding="utf-8"))
    return {k: tuple(v) for k, v in raw.items()}


def write_random_checkpoint(path: Path, arch: str = "sd15", seed: int = 0, dtype_name: str = "fp16",
                            extra_keys: dict | None = None) -> Path:
    """A random ``arch`` checkpoint file at ``path`` (written atomically); ``extra_keys`` adds tensors
    (e.g. ComfyUI's ``v_pred`` marker)."""
    import torch
    from safetensors.torch import save_file

    dtype = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in sorted(read_layout(arch).items()):
        if name.endswith("position_ids"):
            state[name] = torch.arange(shape[-1], dtype=torch.int64).reshape(shape)
        else:
            state[name] = fill(name, shape, gen, dtype)
    state.update(extra_keys or {})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(state, str(tmp))
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path
