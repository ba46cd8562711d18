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

LoCon (kohya ``conv_dim``) adds every ``nn.Linear`` and ``nn.Conv2d`` inside the ResNet blocks,
downsamplers and upsamplers (kohya's ``UNET_TARGET_REPLACE_MODULE_CONV2D_3X3``): 3x3 convolutions
train with conv_dim / conv_alpha, the Linear (time embedding projection) and 1x1 shortcut convs with
the network rank / alpha. SD1.5 has 86 such modules (278 in all), SDXL 66 (788). Their names:

* diffusers: ``down_blocks.i.resnets.j.{conv1,conv2,time_emb_proj,conv_shortcut}``,
  ``down_blocks.i.downsamplers.0.conv``, ``mid_block.resnets.{0,1}``, ``up_blocks.i.upsamplers.0.conv``
* LDM: ``input_blocks.N.0.{in_layers.2,out_layers.3,emb_layers.1,skip_connection}``,
  ``input_blocks.N.0.op``, ``middle_block.{0,2}``, ``output_blocks.N.{1,2}.conv`` (2 when the level
  has attention: the upsampler follows the transformer)
"""

from __future__ import annotations

import operator
import re
from collections.abc import Collection, Iterable, Mapping

import torch
from torch import nn

from .errors import StyleLoRAError

# diffusers' and ComfyUI's (LDM) class names for the block kohya targets.
TRANSFORMER_CLASS_NAMES = ("Transformer2DModel", "SpatialTransformer")
# The blocks kohya adds for LoCon (UNET_TARGET_REPLACE_MODULE_CONV2D_3X3), in diffusers' / kohya's
# names and ComfyUI's LDM names (comfy/ldm/modules/diffusionmodules/openaimodel.py).
CONV_BLOCK_CLASS_NAMES = ("ResnetBlock2D", "Downsample2D", "Upsample2D", "ResBlock", "Downsample", "Upsample")

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
    return _find_in_blocks(unet, TRANSFORMER_CLASS_NAMES, _is_target_layer)


def find_conv_block_targets(unet: nn.Module) -> list[str]:
    """Module paths of kohya's extra LoCon targets (``conv_dim``): every ``nn.Linear`` and
    ``nn.Conv2d`` (any kernel) inside a ResNet block, downsampler or upsampler, in either naming.

    Which rank each gets is :func:`uses_conv_rank`'s rule. A layer registered under two names (peft
    would wrap one attribute and the block would call the other) is an error.
    """
    targets = _find_in_blocks(unet, CONV_BLOCK_CLASS_NAMES, lambda m: isinstance(m, (nn.Linear, nn.Conv2d)))
    if targets:
        names: dict[int, list[str]] = {}
        for name, module in unet.named_modules(remove_duplicate=False):
            names.setdefault(id(module), []).append(name)
        modules = dict(unet.named_modules())
        for path in targets:
            aliases = names.get(id(modules[path]), [])
            if len(aliases) > 1:
                raise LoraKeyError(f"{path} is the same layer as {', '.join(a for a in aliases if a != path)}: "
                                   "a LoRA on it would not be used; this U-Net layout is not supported for conv_dim.")
    return targets


def uses_conv_rank(module: nn.Module) -> bool:
    """kohya's rule inside the LoCon blocks: a Conv2d whose kernel is not 1x1 gets conv_dim /
    conv_alpha; Linear and 1x1 convs get the network rank / alpha."""
    base = _base_layer(module)
    return isinstance(base, nn.Conv2d) and tuple(base.kernel_size) != (1, 1)


def _find_in_blocks(unet: nn.Module, class_names: tuple[str, ...], accept) -> list[str]:  # noqa: ANN001
    named = list(unet.named_modules())
    block_prefixes = [name + "." for name, m in named if type(m).__name__ in class_names and name]
    if not block_prefixes:
        return []
    wrapped: set[str] = set()
    targets: list[str] = []
    for name, module in named:
        if not name or not any(name.startswith(p) for p in block_prefixes):
            continue
        # Skip the insides of a peft wrapper (base_layer, lora_A.default, ...): only the wrapper
        # path is a real U-Net module.
        parts = name.split(".")
        if any(".".join(parts[:i]) in wrapped for i in range(1, len(parts))):
            continue
        base = _base_layer(module)
        if base is not module:
            wrapped.add(name)
        if accept(base):
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


# ---------------------------------------------------------------------------------------------
# diffusers <-> LDM names of the LoCon blocks (ResNet blocks, down/upsamplers)

# diffusers ResnetBlock2D child -> LDM ResBlock child (ComfyUI's UNET_MAP_RESNET).
RESNET_LEAVES: dict[str, str] = {
    "conv1": "in_layers.2",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_LDM_RESNET_LEAVES = {v: k for k, v in RESNET_LEAVES.items()}
_D_LEAF = "(" + "|".join(RESNET_LEAVES) + ")"
_L_LEAF = "(" + "|".join(re.escape(v) for v in RESNET_LEAVES.values()) + ")"
_D_DOWN_RES = re.compile(rf"^down_blocks\.(\d+)\.resnets\.(\d+)\.{_D_LEAF}$")
_D_DOWN_SAMPLER = re.compile(r"^down_blocks\.(\d+)\.downsamplers\.0\.conv$")
_D_MID_RES = re.compile(rf"^mid_block\.resnets\.([01])\.{_D_LEAF}$")
_D_UP_RES = re.compile(rf"^up_blocks\.(\d+)\.resnets\.(\d+)\.{_D_LEAF}$")
_D_UP_SAMPLER = re.compile(r"^up_blocks\.(\d+)\.upsamplers\.0\.conv$")
_L_IN_RES = re.compile(rf"^input_blocks\.(\d+)\.0\.{_L_LEAF}$")
_L_IN_SAMPLER = re.compile(r"^input_blocks\.(\d+)\.0\.op$")
_L_MID_RES = re.compile(rf"^middle_block\.([02])\.{_L_LEAF}$")
_L_OUT_RES = re.compile(rf"^output_blocks\.(\d+)\.0\.{_L_LEAF}$")
_L_OUT_SAMPLER = re.compile(r"^output_blocks\.(\d+)\.([12])\.conv$")
_D_CONV_REGION = (_D_DOWN_RES, _D_DOWN_SAMPLER, _D_MID_RES, _D_UP_RES, _D_UP_SAMPLER)
_L_CONV_REGION = (_L_IN_RES, _L_IN_SAMPLER, _L_MID_RES, _L_OUT_RES, _L_OUT_SAMPLER)
_D_UP_ATTENTION = re.compile(r"^up_blocks\.(\d+)\.attentions\.")


def is_conv_block_path(path: str, naming: str) -> bool:
    """Whether ``path`` is a LoCon module (ResNet block layer, down/upsampler conv) in ``naming``."""
    patterns = _D_CONV_REGION if _check_naming(naming) == "diffusers" else _L_CONV_REGION
    return any(p.match(path) for p in patterns)


def up_blocks_with_attention(paths: Iterable[str]) -> set[int]:
    """Indices ``i`` of the diffusers ``up_blocks.i`` that hold attention, read off module paths (a
    LoRA's always include the transformers' layers). The LDM index of an upsampler depends on it."""
    return {int(m[1]) for p in paths if (m := _D_UP_ATTENTION.match(p))}


def diffusers_to_ldm_conv_path(path: str, layers_per_block: int,
                               up_attention: Collection[int] | None = None) -> str:
    """LoCon module path, diffusers -> LDM (ComfyUI's ``unet_to_diffusers``, inverted).

    ``down_blocks.i.resnets.j.conv1`` -> ``input_blocks.{i*(L+1)+j+1}.0.in_layers.2``,
    ``down_blocks.i.downsamplers.0.conv`` -> ``input_blocks.{i*(L+1)+L+1}.0.op``,
    ``mid_block.resnets.k`` -> ``middle_block.{2k}``, ``up_blocks.i.resnets.j`` ->
    ``output_blocks.{i*(L+1)+j}.0`` and ``up_blocks.i.upsamplers.0.conv`` ->
    ``output_blocks.{i*(L+1)+L}.{2 if up block i has attention else 1}.conv``; ``up_attention`` (see
    :func:`up_blocks_with_attention`) is needed for that last one only.
    """
    lpb = _check_lpb(layers_per_block)
    if m := _D_DOWN_RES.match(path):
        i, j = int(m[1]), int(m[2])
        if j >= lpb:
            raise LoraKeyError(f"{path!r}: a down block has only {lpb} ResNet block(s) (layers_per_block).")
        return f"input_blocks.{i * (lpb + 1) + j + 1}.0.{RESNET_LEAVES[m[3]]}"
    if m := _D_DOWN_SAMPLER.match(path):
        return f"input_blocks.{int(m[1]) * (lpb + 1) + lpb + 1}.0.op"
    if m := _D_MID_RES.match(path):
        return f"middle_block.{2 * int(m[1])}.{RESNET_LEAVES[m[2]]}"
    if m := _D_UP_RES.match(path):
        i, j = int(m[1]), int(m[2])
        if j > lpb:
            raise LoraKeyError(f"{path!r}: an up block has only {lpb + 1} ResNet blocks (layers_per_block+1).")
        return f"output_blocks.{i * (lpb + 1) + j}.0.{RESNET_LEAVES[m[3]]}"
    if m := _D_UP_SAMPLER.match(path):
        if up_attention is None:
            raise LoraKeyError(f"{path!r}: its LDM name depends on whether up block {m[1]} has attention; "
                               "pass up_attention (up_blocks_with_attention(module paths)).")
        slot = 2 if int(m[1]) in up_attention else 1
        return f"output_blocks.{int(m[1]) * (lpb + 1) + lpb}.{slot}.conv"
    raise LoraKeyError(f"{path!r} is not a layer of a U-Net ResNet block, downsampler or upsampler.")


def ldm_to_diffusers_conv_path(path: str, layers_per_block: int) -> str:
    """Inverse of :func:`diffusers_to_ldm_conv_path`."""
    lpb = _check_lpb(layers_per_block)
    if m := _L_IN_RES.match(path):
        n = int(m[1])
        i, j = divmod(n - 1, lpb + 1)
        if n < 1 or j >= lpb:
            raise LoraKeyError(f"{path!r} is not a ResNet block of the input blocks (layers_per_block={lpb}).")
        return f"down_blocks.{i}.resnets.{j}.{_LDM_RESNET_LEAVES[m[2]]}"
    if m := _L_IN_SAMPLER.match(path):
        n = int(m[1])
        i, j = divmod(n - 1, lpb + 1)
        if n < 1 or j != lpb:
            raise LoraKeyError(f"{path!r} is not a downsampler of the input blocks (layers_per_block={lpb}).")
        return f"down_blocks.{i}.downsamplers.0.conv"
    if m := _L_MID_RES.match(path):
        return f"mid_block.resnets.{int(m[1]) // 2}.{_LDM_RESNET_LEAVES[m[2]]}"
    if m := _L_OUT_RES.match(path):
        i, j = divmod(int(m[1]), lpb + 1)
        return f"up_blocks.{i}.resnets.{j}.{_LDM_RESNET_LEAVES[m[2]]}"
    if m := _L_OUT_SAMPLER.match(path):
        i, j = divmod(int(m[1]), lpb + 1)
        if j != lpb:
            raise LoraKeyError(f"{path!r} is not an upsampler: those end each level (layers_per_block={lpb}).")
        return f"up_blocks.{i}.upsamplers.0.conv"
    raise LoraKeyError(f"{path!r} is not a layer of a U-Net ResBlock, Downsample or Upsample (LDM naming).")


def convert_any_path(path: str, layers_per_block: int, *, source: str, target: str,
                     up_attention: Collection[int] | None = None) -> str:
    """:func:`convert_path` for attention layers and LoCon layers alike (identity if equal)."""
    _check_naming(source)
    _check_naming(target)
    if source == target:
        return path
    if not is_conv_block_path(path, source):
        return convert_path(path, layers_per_block, source=source, target=target)
    if source == "diffusers":
        return diffusers_to_ldm_conv_path(path, layers_per_block, up_attention)
    return ldm_to_diffusers_conv_path(path, layers_per_block)


def kohya_key(module_path: str, arch: str, layers_per_block: int, naming: str = "diffusers", *,
              up_attention: Collection[int] | None = None) -> str:
    """Kohya LoRA name of a U-Net module: ``lora_unet_<path with . -> _>``.

    ``naming`` says how ``module_path`` is spelled; the output uses kohya's naming for ``arch``
    (SD1.5: diffusers block names, SDXL: LDM block names). LoCon layers (ResNet blocks, samplers)
    map too; a diffusers upsampler written with LDM names needs ``up_attention``
    (:func:`up_blocks_with_attention`).
    """
    target = KOHYA_NAMING[_check_arch(arch)]
    converted = convert_any_path(module_path, layers_per_block, source=naming, target=target,
                                 up_attention=up_attention)
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
    conv_alpha: float | None = None,
    up_attention: Collection[int] | None = None,
) -> dict[str, torch.Tensor]:
    """Kohya-format tensors from ``peft.get_peft_model_state_dict(unet)``.

    ``lora_A`` -> ``.lora_down.weight``, ``lora_B`` -> ``.lora_up.weight`` and ``.alpha`` = the
    configured ``alpha`` (not the rank, which is what diffusers' ``convert_state_dict_to_kohya``
    writes and which would change the LoRA's strength). 1x1 conv weights keep their 4-D shapes.
    LoCon layers map too: a conv whose kernel is not 1x1 (lora_down ``[r, in, 3, 3]``) gets
    ``conv_alpha`` (required then), as kohya writes it. ``up_attention`` (which diffusers up blocks
    hold attention, for SDXL upsampler names) defaults to what the state's own keys show.
    Raises :class:`LoraKeyError` on any key it cannot map.
    """
    _check_arch(arch)
    _check_naming(source_naming)
    if not alpha or alpha <= 0:
        raise LoraKeyError(f"alpha must be positive, got {alpha!r}.")
    if conv_alpha is not None and not conv_alpha > 0:
        raise LoraKeyError(f"conv_alpha must be positive, got {conv_alpha!r}.")
    matches = []
    for key in peft_state:
        m = _PEFT_KEY.match(_strip_peft_prefix(key))
        if m is None:
            raise LoraKeyError(
                f"Cannot map LoRA tensor {key!r} to kohya format (only plain LoRA lora_A/lora_B weights "
                "are supported: no DoRA, bias or embedding adapters)."
            )
        matches.append((key, m))
    if up_attention is None and source_naming == "diffusers":
        up_attention = up_blocks_with_attention(m["module"] for _, m in matches)
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, m in matches:
        name = kohya_key(m["module"], arch, layers_per_block, naming=source_naming, up_attention=up_attention)
        slot = pairs.setdefault(name, {})
        if m["ab"] in slot:
            raise LoraKeyError(f"Two tensors map to {name} lora_{m['ab']} (several adapters?): {key!r}.")
        slot[m["ab"]] = peft_state[key]
    out: dict[str, torch.Tensor] = {}
    for name, slot in pairs.items():
        if set(slot) != {"A", "B"}:
            raise LoraKeyError(f"{name}: has lora_{''.join(slot)} but not both lora_A and lora_B.")
        down, up = slot["A"], slot["B"]
        _check_pair(name, down, up)
        module_alpha = alpha
        if down.dim() == 4 and tuple(down.shape[2:]) != (1, 1):
            if conv_alpha is None:
                raise LoraKeyError(f"{name} is a {down.shape[2]}x{down.shape[3]} conv LoRA (LoCon): pass "
                                   "conv_alpha, its alpha in the file.")
            module_alpha = conv_alpha
        # detach+clone: the file must not alias live training parameters.
        out[f"{name}.lora_down.weight"] = down.detach().to("cpu", dtype).contiguous().clone()
        out[f"{name}.lora_up.weight"] = up.detach().to("cpu", dtype).contiguous().clone()
        out[f"{name}.alpha"] = torch.tensor(float(module_alpha), dtype=dtype)
    return out


_KOHYA_SUFFIXES = {"lora_down.weight": "A", "lora_up.weight": "B"}


def kohya_to_peft_state(
    kohya_state: Mapping[str, torch.Tensor],
    module_paths: Iterable[str],
    *,
    layers_per_block: int,
    naming: str,
) -> tuple[dict[str, torch.Tensor], dict[str, float], dict[str, torch.Tensor]]:
    """Inverse of :func:`peft_to_kohya` (plus ``.dora_scale``) for a U-Net whose LoRA modules are
    ``module_paths`` (spelled ``naming``; e.g. ``find_lora_targets`` + ``find_conv_block_targets``).

    Returns ``(peft_state, alphas, dora_scales)``: ``<path>.lora_A.weight`` / ``.lora_B.weight``
    tensors, ``{path: alpha}`` and ``{path: dora_scale}``. Either kohya naming (SD1.5- or SDXL-style)
    is accepted; a name that matches none of the modules, or an unknown suffix, raises.
    """
    paths = list(module_paths)
    # Only diffusers upsamplers need it (LDM names already say where the upsampler sits).
    up_attention = up_blocks_with_attention(paths) if _check_naming(naming) == "diffusers" else None
    by_name: dict[str, str] = {}
    for path in paths:
        for arch in ARCHES:
            by_name[kohya_key(path, arch, layers_per_block, naming=naming, up_attention=up_attention)] = path
    peft_state: dict[str, torch.Tensor] = {}
    alphas: dict[str, float] = {}
    dora: dict[str, torch.Tensor] = {}
    for key, tensor in kohya_state.items():
        name, _, suffix = key.partition(".")
        if name not in by_name:
            raise LoraKeyError(f"{name!r} does not match any LoRA module of this U-Net.")
        path = by_name[name]
        if suffix in _KOHYA_SUFFIXES:
            peft_state[f"{path}.lora_{_KOHYA_SUFFIXES[suffix]}.weight"] = tensor.detach().contiguous()
        elif suffix == "alpha":
            alphas[path] = float(tensor.item())
        elif suffix == "dora_scale":
            dora[path] = tensor.detach().contiguous()
        else:
            raise LoraKeyError(f"Cannot map kohya tensor {key!r} (expected .lora_down/.lora_up/.alpha/.dora_scale).")
    for path in {k.rsplit(".lora_", 1)[0] for k in peft_state}:
        down, up = peft_state.get(f"{path}.lora_A.weight"), peft_state.get(f"{path}.lora_B.weight")
        if down is None or up is None:
            raise LoraKeyError(f"{path}: needs both .lora_down.weight and .lora_up.weight.")
        _check_pair(path, down, up)
    return peft_state, alphas, dora
