"""Reading kohya LoRA files back, for the tests and the benchmark: kohya names -> module paths,
kohya tensors -> peft state dicts, and the real SD1.5 / SDXL U-Net configs (no weights).

The pack only writes kohya files (``style_lora_engine.lora_keys``); ComfyUI's LoraLoader reads them.
These inverses prove the written names and tensors mean what they should.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..style_lora_engine.lora_keys import (
    ARCHES,
    LoraKeyError,
    _check_arch,
    _check_naming,
    _check_pair,
    convert_path,
    kohya_key,
)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent.parent / "headless" / "model_configs"
_UNET_CONFIG_FILES = {"sd15": "sd15_unet.json", "sdxl": "sdxl_unet.json"}
_KOHYA_SUFFIXES = {".lora_down.weight": "A", ".lora_up.weight": "B"}


def unet_config_path(arch: str) -> Path:
    """Path of the bundled diffusers ``UNet2DConditionModel`` config for ``arch``."""
    _check_arch(arch)
    return MODEL_CONFIG_DIR / _UNET_CONFIG_FILES[arch]


def load_unet_config(arch: str) -> dict[str, Any]:
    """The real SD1.5 / SDXL U-Net config (no weights): ``UNet2DConditionModel.from_config(...)``."""
    with open(unet_config_path(arch), encoding="utf-8") as fh:
        return json.load(fh)


# Parse a kohya name back into a path. Underscores are ambiguous (``transformer_blocks``,
# ``to_q``), so the grammar of the target region is spelled out.
_KOHYA_TAIL = (
    r"(?P<tail>proj_in|proj_out|transformer_blocks_(?P<t>\d+)_"
    r"(?P<leaf>attn[12]_to_(?:q|k|v|out_0)|ff_net_0_proj|ff_net_2))"
)
_KOHYA_NAME = re.compile(
    r"^lora_unet_(?:"
    r"down_blocks_(?P<di>\d+)_attentions_(?P<dj>\d+)"
    r"|mid_block_attentions_(?P<mj>0)"
    r"|up_blocks_(?P<ui>\d+)_attentions_(?P<uj>\d+)"
    r"|input_blocks_(?P<ii>\d+)_1"
    r"|middle_block_(?P<mb>1)"
    r"|output_blocks_(?P<oi>\d+)_1"
    r")_" + _KOHYA_TAIL + r"$"
)
_LEAF_PATHS = {
    f"{a}_to_{x}": f"{a}.to_{x.replace('out_0', 'out.0')}"
    for a in ("attn1", "attn2")
    for x in ("q", "k", "v", "out_0")
}
_LEAF_PATHS.update({"ff_net_0_proj": "ff.net.0.proj", "ff_net_2": "ff.net.2"})


def kohya_name_to_path(lora_name: str, layers_per_block: int, naming: str = "diffusers") -> str:
    """Module path (in ``naming``) of a kohya U-Net LoRA name such as ``lora_unet_..._attn1_to_q``.

    Accepts both diffusers- and LDM-style kohya names, whatever the architecture.
    """
    _check_naming(naming)
    m = _KOHYA_NAME.match(lora_name)
    if m is None:
        raise LoraKeyError(
            f"{lora_name!r} is not a kohya U-Net transformer LoRA name (lora_unet_<block>_<proj/attn/ff>)."
        )
    g = m.groupdict()
    if g["di"] is not None:
        block, source = f"down_blocks.{g['di']}.attentions.{g['dj']}", "diffusers"
    elif g["mj"] is not None:
        block, source = "mid_block.attentions.0", "diffusers"
    elif g["ui"] is not None:
        block, source = f"up_blocks.{g['ui']}.attentions.{g['uj']}", "diffusers"
    elif g["ii"] is not None:
        block, source = f"input_blocks.{g['ii']}.1", "ldm"
    elif g["mb"] is not None:
        block, source = "middle_block.1", "ldm"
    else:
        block, source = f"output_blocks.{g['oi']}.1", "ldm"
    if g["t"] is None:
        tail = g["tail"]
    else:
        tail = f"transformer_blocks.{g['t']}.{_LEAF_PATHS[g['leaf']]}"
    return convert_path(f"{block}.{tail}", layers_per_block, source=source, target=naming)


def kohya_alphas(kohya_state: Mapping[str, torch.Tensor]) -> dict[str, float]:
    """``{lora_name: alpha}``; a module without ``.alpha`` gets its rank (kohya's convention)."""
    alphas: dict[str, float] = {}
    for key, tensor in kohya_state.items():
        if key.endswith(".lora_down.weight"):
            name = key[: -len(".lora_down.weight")]
            a = kohya_state.get(f"{name}.alpha")
            alphas[name] = float(a.item()) if a is not None else float(tensor.shape[0])
    return alphas


def kohya_to_peft(
    kohya_state: Mapping[str, torch.Tensor],
    *,
    layers_per_block: int,
    target_naming: str = "diffusers",
    module_paths: Iterable[str] | None = None,
    expected_alpha: float | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """Inverse of :func:`peft_to_kohya`: keys ``<path>.lora_A.weight`` / ``.lora_B.weight``.

    The result loads with ``peft.set_peft_model_state_dict(unet, ...)`` into a U-Net whose modules
    are named ``target_naming``. ``module_paths`` (e.g. ``find_lora_targets(unet)``) resolves names
    exactly and rejects modules the U-Net lacks. peft keeps alpha in its config, not the state
    dict, so ``expected_alpha`` checks every ``.alpha`` against it (a mismatch would silently
    change the strength).
    """
    _check_naming(target_naming)
    by_name: dict[str, str] | None = None
    if module_paths is not None:
        # Accept either kohya naming for the given modules (SD1.5- or SDXL-style names).
        by_name = {}
        for path in module_paths:
            for arch in ARCHES:
                by_name[kohya_key(path, arch, layers_per_block, naming=target_naming)] = path
    out: dict[str, torch.Tensor] = {}
    names: set[str] = set()
    for key, tensor in kohya_state.items():
        if key.endswith(".alpha"):
            names.add(key[: -len(".alpha")])
            continue
        suffix = next((s for s in _KOHYA_SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise LoraKeyError(f"Cannot map kohya tensor {key!r} (expected .lora_down/.lora_up/.alpha).")
        name = key[: -len(suffix)]
        names.add(name)
        if by_name is not None:
            if name not in by_name:
                raise LoraKeyError(f"{name!r} does not match any LoRA target module of this U-Net.")
            path = by_name[name]
        else:
            path = kohya_name_to_path(name, layers_per_block, naming=target_naming)
        value = tensor.detach()
        out[f"{path}.lora_{_KOHYA_SUFFIXES[suffix]}.weight"] = (
            value.to(dtype) if dtype is not None else value
        ).contiguous()
    for name in names:
        down = kohya_state.get(f"{name}.lora_down.weight")
        up = kohya_state.get(f"{name}.lora_up.weight")
        if down is None or up is None:
            raise LoraKeyError(f"{name}: needs both .lora_down.weight and .lora_up.weight.")
        _check_pair(name, down, up)
    if expected_alpha is not None:
        for name, a in kohya_alphas(kohya_state).items():
            if abs(a - float(expected_alpha)) > 1e-3 * max(1.0, abs(float(expected_alpha))):
                raise LoraKeyError(
                    f"{name}: alpha {a} differs from the adapter's lora_alpha {expected_alpha}; "
                    "build the adapter with the file's alpha (ss_network_alpha)."
                )
    return out
