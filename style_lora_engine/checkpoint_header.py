"""What a single-file checkpoint's header says before any weight is loaded: its tensors' shapes, its model
family, and the size of the LoRA the trainer would put on its U-Net. The canvas plan uses it before Queue,
when no model is loaded yet (the plan's warm-up, on the loaded model, counts the LoRA from the modules).

The U-Net is in the LDM layout (``model.diffusion_model.*``), the one ComfyUI's U-Net modules use too, so
the targets follow kohya's rule (``lora_keys``) by name: the Linear and 1x1 conv weights inside a spatial
transformer (a module with ``transformer_blocks``) and, for LoCon's ``conv_dim``, every Linear and conv of the
ResNet blocks (``in_layers``), downsamplers (``op``) and upsamplers (``output_blocks.N.M.conv``).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from .errors import ConfigError

UNET_PREFIX = "model.diffusion_model."
_UPSAMPLER = re.compile(r"^output_blocks\.\d+\.\d+\.conv\.weight$")
_DOWNSAMPLER = re.compile(r"^input_blocks\.\d+\.0\.op\.weight$")

Shape = tuple[int, ...]


def tensor_shapes(path: Path | str) -> dict[str, Shape]:
    """Every tensor's name and shape from a ``.safetensors`` header (no weight is read)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ConfigError(f"{path.name}: only a .safetensors checkpoint's header can be read without loading it.")
    try:
        with safe_open(str(path), framework="pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (OSError, SafetensorError) as exc:
        raise ConfigError(f"Cannot read the checkpoint header of {path.name}: {exc}. Is the file complete?") from exc


def model_family(shapes: dict[str, Shape]) -> str | None:
    """``"sdxl"``, ``"sd15"`` or None (not a full SD1.5/SDXL checkpoint), by the text encoders' key names."""
    if not any(k.startswith(UNET_PREFIX) for k in shapes):
        return None
    if any(k.startswith("conditioner.embedders.1.") for k in shapes):
        return "sdxl"
    if any(k.startswith("cond_stage_model.transformer.") for k in shapes):
        return "sd15"
    return None


def _unet_weights(shapes: dict[str, Shape]) -> dict[str, Shape]:
    return {k[len(UNET_PREFIX):]: s for k, s in shapes.items() if k.startswith(UNET_PREFIX) and k.endswith(".weight")}


def lora_parameter_count(shapes: dict[str, Shape], rank: int, conv_dim: int = 0) -> int:
    """The LoRA's parameter count on this U-Net: ``rank x (fan-in + fan-out)`` per target layer (3x3 convs at
    ``conv_dim``), exactly what the trainer builds (``lora_keys.find_lora_targets`` / ``find_conv_block_targets``)."""
    weights = _unet_weights(shapes)
    transformers = {k.split(".transformer_blocks.")[0] + "." for k in weights if ".transformer_blocks." in k}
    resnets = {k.split(".in_layers.")[0] + "." for k in weights if ".in_layers." in k}
    total = 0
    for name, shape in weights.items():
        layer = len(shape) == 2 or (len(shape) == 4 and shape[2:] == (1, 1))
        if any(name.startswith(p) for p in transformers):
            targeted = layer
        elif conv_dim and (any(name.startswith(p) for p in resnets) or _DOWNSAMPLER.match(name)
                           or _UPSAMPLER.match(name)):
            targeted = len(shape) in (2, 4)
        else:
            targeted = False
        if targeted:
            r = rank if layer else int(conv_dim)
            total += r * (shape[1] * math.prod(shape[2:]) + shape[0])
    if not transformers:
        raise ConfigError("The checkpoint's U-Net has no spatial transformers (transformer_blocks) to put a LoRA on.")
    return total
