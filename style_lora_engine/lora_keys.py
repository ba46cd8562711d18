"""Which U-Net modules get a LoRA (kohya's default set) and what they are called in a kohya file.

Kohya's ``networks.lora`` puts a LoRA on every ``nn.Linear`` and every 1x1 ``nn.Conv2d`` inside
each ``Transformer2DModel`` of the U-Net: proj_in/proj_out, attn1/attn2 q/k/v/out.0 and the two
feed-forward linears. SD1.5 has 16 such transformers (192 modules), SDXL 722 modules.

Two namings of the same modules exist:

* diffusers: ``down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q``
* LDM / sgm (ComfyUI's ``diffusion_model``, kohya's SDXL): ``input_blocks.4.1.transformer_blocks...``

Kohya writes SD1.5 files with diffusers names and SDXL files with LDM names; ComfyUI's
``LoraLoader`` accepts both (``comfy/lora.py model_lora_keys_unet``). Block index formulas are the
ones in diffusers' ``_maybe_map_sgm_blocks_to_diffusers`` and ComfyUI's ``unet_to_diffusers``.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Mapping

import torch
from torch import nn

from .errors import StyleLoRAError

# diffusers' and ComfyUI's (LDM) class names for the block kohya targets.
TRANSFORMER_CLASS_NAMES = ("Transformer2DModel", "SpatialTransformer")

# Names (relative to a transformer, block index dropped) of the modules kohya trains by default.
KOHYA_TARGET_NAMES: tuple[str, ...] = (
    "proj_in",
    "proj_out",
    "attn1.to_q",
    "attn1.to_k",
    "attn1.to_v",
    "attn1.to_out.0",
    "attn2.to_q",
    "attn2.to_k",
    "attn2.to_v",
    "attn2.to_out.0",
    "ff.net.0.proj",
    "ff.net.2",
)

ARCHES = ("sd15", "sdxl")
NAMINGS = ("diffusers", "ldm")
KOHYA_UNET_PREFIX = "lora_unet_"
# The kohya key naming each architecture uses (see module docstring).
KOHYA_NAMING: dict[str, str] = {"sd15": "diffusers", "sdxl": "ldm"}



class LoraKeyError(StyleLoRAError):
    """A module path or state-dict key that is not part of the kohya U-Net LoRA layout."""


# ---------------------------------------------------------------------------------------------
# Finding the targets


def _base_layer(module: nn.Module) -> nn.Module:
    # A peft-wrapped layer (lora.Linear, ...) hides the original module under ``base_layer``;
    # unwrap so a U-Net that already carries an adapter yields the same targets.
    seen = 0
    while isinstance(getattr(module, "base_layer", None), nn.Module) and seen < 8:
        module = module.base_layer  # type: ignore[assignment]
        seen += 1
    return module


def _is_target_layer(module: nn.Module) -> bool:
    if isinstance(module, nn.Linear):
        return True
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)


def find_lora_targets(unet: nn.Module) -> list[str]:
    """Full module paths (in the U-Net's own naming) of kohya's default LoRA targets.

    Found structurally: every ``nn.Linear`` or 1x1 ``nn.Conv2d`` below a module whose class is
    ``Transformer2DModel`` (diffusers) or ``SpatialTransformer`` (ComfyUI/LDM), so any U-Net size
    works. Works on a U-Net that is already peft-wrapped (the wrapper's path is reported once).
    """
    named = list(unet.named_modules())
    transformer_prefixes = [
        name + "." for name, m in named if type(m).__name__ in TRANSFORMER_CLASS_NAMES and name
    ]
    if not transformer_prefixes:
        return []
    wrapped: set[str] = set()
    targets: list[str] = []
    for name, module in named:
        if not name or not any(name.startswith(p) for p in transformer_prefixes):
            continue
        # Skip the insides of a peft wrapper (base_layer, lora_A.default, ...): only the wrapper
        # path is a real U-Net module.
        parts = name.split(".")
        if any(".".join(parts[:i]) in wrapped for i in range(1, len(parts))):
            continue
        base = _base_layer(module)
        if base is not module:
            wrapped.add(name)
        if _is_target_layer(base):
            targets.append(name)
    return targets


# ---------------------------------------------------------------------------------------------
# diffusers <-> LDM block names

_DIFFUSERS_DOWN = re.compile(r"^down_blocks\.(\d+)\.attentions\.(\d+)(\..+)?$")
_DIFFUSERS_MID = re.compile(r"^mid_block\.attentions\.0(\..+)?$")
_DIFFUSERS_UP = re.compile(r"^up_blocks\.(\d+)\.attentions\.(\d+)(\..+)?$")
_LDM_IN = re.compile(r"^input_blocks\.(\d+)\.1(\..+)?$")
_LDM_MID = re.compile(r"^middle_block\.1(\..+)?$")
_LDM_OUT = re.compile(r"^output_blocks\.(\d+)\.1(\..+)?$")
# What may follow ``<block>.1`` in LDM naming for it to be a transformer (``output_blocks.N.1`` can
# also be an upsampler ``.conv`` in a block without attention).
_TRANSFORMER_CHILD = re.compile(r"^\.(proj_in|proj_out|norm|transformer_blocks)(\.|$)")


def _check_lpb(layers_per_block: int) -> int:
    try:  # operator.index: ints and numpy ints, not floats/bools-as-text
        lpb = operator.index(layers_per_block)
    except TypeError:
        lpb = 0
    if isinstance(layers_per_block, bool) or lpb < 1:
        raise LoraKeyError(
            f"layers_per_block must be a positive int (the U-Net config's value), got {layers_per_block!r}."
        )
    return lpb


def _check_arch(arch: str) -> str:
    if arch not in ARCHES:
        raise LoraKeyError(f"Unknown architecture {arch!r}; expected one of {', '.join(ARCHES)}.")
    return arch


def _check_naming(naming: str) -> str:
    if naming not in NAMINGS:
        raise LoraKeyError(f"Unknown naming {naming!r}; expected one of {', '.join(NAMINGS)}.")
    return naming


def diffusers_to_ldm_path(path: str, layers_per_block: int) -> str:
    """``down_blocks.i.attentions.j...`` -> ``input_blocks.{i*(L+1)+j+1}.1...`` (attention region only).

    ``mid_block.attentions.0`` -> ``middle_block.1``; ``up_blocks.i.attentions.j`` ->
    ``output_blocks.{i*(L+1)+j}.1``. L = layers_per_block (up blocks have L+1 layers each).
    """
    lpb = _check_lpb(layers_per_block)
    if m := _DIFFUSERS_DOWN.match(path):
        i, j, rest = int(m[1]), int(m[2]), m[3] or ""
        if j >= lpb:
            raise LoraKeyError(f"{path!r}: a down block has only {lpb} attention(s) (layers_per_block).")
        return f"input_blocks.{i * (lpb + 1) + j + 1}.1{rest}"
    if m := _DIFFUSERS_MID.match(path):
        return f"middle_block.1{m[1] or ''}"
    if m := _DIFFUSERS_UP.match(path):
        i, j, rest = int(m[1]), int(m[2]), m[3] or ""
        if j > lpb:
            raise LoraKeyError(f"{path!r}: an up block has only {lpb + 1} attention(s) (layers_per_block+1).")
        return f"output_blocks.{i * (lpb + 1) + j}.1{rest}"
    raise LoraKeyError(f"{path!r} is not in a U-Net attention block (down_blocks/mid_block/up_blocks).")


def ldm_to_diffusers_path(path: str, layers_per_block: int) -> str:
    """Inverse of :func:`diffusers_to_ldm_path`."""
    lpb = _check_lpb(layers_per_block)
    if m := _LDM_IN.match(path):
        n, rest = int(m[1]), m[2] or ""
        i, j = divmod(n - 1, lpb + 1)
        # input_blocks.0 is conv_in; the last slot of each level is the downsampler (no attention).
        if n < 1 or j >= lpb or (rest and not _TRANSFORMER_CHILD.match(rest)):
            raise LoraKeyError(f"{path!r} is not a transformer in the input blocks (layers_per_block={lpb}).")
        return f"down_blocks.{i}.attentions.{j}{rest}"
    if m := _LDM_MID.match(path):
        return f"mid_block.attentions.0{m[1] or ''}"
    if m := _LDM_OUT.match(path):
        n, rest = int(m[1]), m[2] or ""
        if rest and not _TRANSFORMER_CHILD.match(rest):
            raise LoraKeyError(f"{path!r} is not a transformer in the output blocks.")
        i, j = divmod(n, lpb + 1)
        return f"up_blocks.{i}.attentions.{j}{rest}"
    raise LoraKeyError(f"{path!r} is not in a U-Net attention block (input_blocks/middle_block/output_blocks).")


def convert_path(path: str, layers_per_block: int, *, source: str, target: str) -> str:
    """Rename a module path between ``"diffusers"`` and ``"ldm"`` naming (identity if equal)."""
    _check_naming(source)
    _check_naming(target)
    if source == target:
        return path
    if source == "diffusers":
        return diffusers_to_ldm_path(path, layers_per_block)
    return ldm_to_diffusers_path(path, layers_per_block)


def kohya_key(module_path: str, arch: str, layers_per_block: int, naming: str = "diffusers") -> str:
    """Kohya LoRA name of a U-Net module: ``lora_unet_<path with . -> _>``.

    ``naming`` says how ``module_path`` is spelled; the output uses kohya's naming for ``arch``
    (SD1.5: diffusers block names, SDXL: LDM block names).
    """
    target = KOHYA_NAMING[_check_arch(arch)]
    converted = convert_path(module_path, layers_per_block, source=naming, target=target)
    return KOHYA_UNET_PREFIX + converted.replace(".", "_")


# ---------------------------------------------------------------------------------------------
# State dicts

_PEFT_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.(?P<adapter>[^.]+))?\.weight$")
_PEFT_PREFIXES = ("base_model.model.", "unet.")


def _strip_peft_prefix(key: str) -> str:
    for prefix in _PEFT_PREFIXES:
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def _check_pair(name: str, down: torch.Tensor, up: torch.Tensor) -> None:
    # lora_down [r, in] / [r, in, 1, 1]; lora_up [out, r] / [out, r, 1, 1].
    if down.dim() not in (2, 4) or up.dim() != down.dim():
        raise LoraKeyError(f"{name}: unexpected LoRA shapes {tuple(down.shape)} / {tuple(up.shape)}.")
    if up.shape[1] != down.shape[0]:
        raise LoraKeyError(
            f"{name}: rank mismatch between down {tuple(down.shape)} and up {tuple(up.shape)}."
        )


def peft_to_kohya(
    peft_state: Mapping[str, torch.Tensor],
    *,
    alpha: float,
    arch: str,
    layers_per_block: int,
    source_naming: str,
    dtype: torch.dtype,
) -> dict[str, torch.Tensor]:
    """Kohya-format tensors from ``peft.get_peft_model_state_dict(unet)``.

    ``lora_A`` -> ``.lora_down.weight``, ``lora_B`` -> ``.lora_up.weight`` and ``.alpha`` = the
    configured ``alpha`` (not the rank, which is what diffusers' ``convert_state_dict_to_kohya``
    writes and which would change the LoRA's strength). 1x1 conv weights keep their 4-D shapes.
    Raises :class:`LoraKeyError` on any key it cannot map.
    """
    _check_arch(arch)
    _check_naming(source_naming)
    if not alpha or alpha <= 0:
        raise LoraKeyError(f"alpha must be positive, got {alpha!r}.")
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in peft_state.items():
        m = _PEFT_KEY.match(_strip_peft_prefix(key))
        if m is None:
            raise LoraKeyError(
                f"Cannot map LoRA tensor {key!r} to kohya format (only plain LoRA lora_A/lora_B weights "
                "are supported: no DoRA, bias or embedding adapters)."
            )
        name = kohya_key(m["module"], arch, layers_per_block, naming=source_naming)
        slot = pairs.setdefault(name, {})
        if m["ab"] in slot:
            raise LoraKeyError(f"Two tensors map to {name} lora_{m['ab']} (several adapters?): {key!r}.")
        slot[m["ab"]] = tensor
    out: dict[str, torch.Tensor] = {}
    for name, slot in pairs.items():
        if set(slot) != {"A", "B"}:
            raise LoraKeyError(f"{name}: has lora_{''.join(slot)} but not both lora_A and lora_B.")
        down, up = slot["A"], slot["B"]
        _check_pair(name, down, up)
        # detach+clone: the file must not alias live training parameters.
        out[f"{name}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous().clone()
        out[f"{name}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous().clone()
        out[f"{name}.alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return out
