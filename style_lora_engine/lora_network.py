"""The LoRA network beyond plain LoRA: LoCon targets, DoRA and kohya's dropouts, on a peft U-Net.

The trainer builds the adapter with :func:`build_lora_config` (kohya's targets; with ``conv_dim``
also the ResNet blocks and samplers, 3x3 convs at conv_dim / conv_alpha), wraps the U-Net with
``peft.tuners.lora.LoraModel`` and then calls :func:`install_extras`, which adds what peft does not
do the way kohya / LyCORIS / ComfyUI do:

* DoRA (LyCORIS ``dora_wd``, a ``dora_scale`` per layer in the file). ComfyUI's ``LoraLoader``
  renders ``W' = (W + dW) * m / ||W + dW||`` with the norm per *input* channel when ``dora_scale``
  is ``(1, in)`` / ``(1, in, 1, 1)`` (``comfy/weight_adapter/base.py weight_decompose``; for an
  output-axis scale it divides by the norm of the original weight instead, which is why peft's own
  DoRA, per output row, is not used). Scaling input channel ``i`` of the weight by ``s_i = m_i / n_i``
  is scaling channel ``i`` of the input, so training runs ``base(x * s) + lora(x * s)`` (the bias is
  not scaled, as in ComfyUI) with ``n`` recomputed from ``W + dW`` every forward.
* kohya's ``network_dropout`` / ``rank_dropout`` / ``module_dropout`` with ``LoRAModule.forward``'s
  meaning: dropout on lora_down's output; a per-sample per-rank mask on it with the LoRA scaled by
  ``1 / (1 - p)``; the whole LoRA path of a layer skipped with probability ``p``. Training mode
  only, and every draw comes from the generator given (see :class:`KohyaDropout`).

With every option at its default, :func:`build_lora_config` is the plain LoRA config and
:func:`install_extras` installs nothing.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .errors import StyleLoRAError
from .lora_keys import (
    LoraKeyError,
    find_conv_block_targets,
    find_lora_targets,
    kohya_key,
    up_blocks_with_attention,
    uses_conv_rank,
)

# ComfyUI's weight_decompose adds the eps of the weight's dtype there, float32 (LoraLoader patches
# in an fp32 intermediate); LyCORIS adds it too.
DORA_EPS = torch.finfo(torch.float32).eps
_MASK63 = (1 << 63) - 1
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------------------------
# Targets and the peft config


@dataclass(frozen=True)
class LoraTargets:
    """The modules an adapter covers: ``modules`` all of them, ``conv_modules`` the subset that
    trains at conv_dim / conv_alpha (LoCon's 3x3 convs)."""

    modules: tuple[str, ...]
    conv_modules: tuple[str, ...] = ()


def find_targets(unet: nn.Module, conv_dim: int = 0) -> LoraTargets:
    """kohya's targets: the transformers' Linear / 1x1 convs; with ``conv_dim`` > 0 also every
    Linear / Conv2d of the ResNet blocks, downsamplers and upsamplers (kohya's ``create_modules``)."""
    modules = find_lora_targets(unet)
    if not conv_dim:
        return LoraTargets(tuple(modules))
    extra = find_conv_block_targets(unet)
    named = dict(unet.named_modules())
    conv = tuple(p for p in extra if uses_conv_rank(named[p]))
    return LoraTargets(tuple(modules) + tuple(p for p in extra if p not in modules), conv)


def build_lora_config(unet: nn.Module, config: Any) -> LoraConfig:
    """The peft ``LoraConfig`` for ``config`` (a ``TrainConfig``: rank, alpha, options.conv_dim /
    conv_alpha). Defaults give exactly the plain kohya LoRA config; LoCon's 3x3 convs get their rank
    and alpha through ``rank_pattern`` / ``alpha_pattern`` (keys: escaped full module paths)."""
    options = config.options
    targets = find_targets(unet, options.conv_dim)
    if not targets.modules:
        raise StyleLoRAError("No attention/projection layers found in the U-Net to attach LoRA to.")
    patterns: dict[str, Any] = {}
    if targets.conv_modules:
        # peft matches a key with re.match(rf"(.*\.)?({key})$", module path): escaped full paths
        # hit exactly their module.
        patterns["rank_pattern"] = {re.escape(p): int(options.conv_dim) for p in targets.conv_modules}
        patterns["alpha_pattern"] = {re.escape(p): float(options.conv_alpha) for p in targets.conv_modules}
    return LoraConfig(r=config.rank, lora_alpha=config.alpha, target_modules=list(targets.modules),
                      init_lora_weights=True, lora_dropout=0.0, **patterns)


def _unwrap(unet: nn.Module) -> nn.Module:
    # Given the LoraModel instead of the U-Net it wraps: its module paths carry a "model." prefix and
    # the backends call the U-Net, not the LoraModel, so work on the U-Net.
    return unet.model if isinstance(unet, BaseTuner) else unet


def lora_layers(unet: nn.Module, adapter: str | None = None) -> tuple[str, list[tuple[str, LoraLayer]]]:
    """``(adapter, [(module path, peft LoRA layer), ...])`` of a peft-wrapped U-Net, in module order.
    ``adapter`` None: the U-Net's only adapter."""
    layers = [(name, m) for name, m in _unwrap(unet).named_modules() if isinstance(m, LoraLayer)]
    names = {a for _, m in layers for a in m.lora_A}
    if adapter is None:
        if len(names) != 1:
            raise StyleLoRAError(f"Expected one LoRA adapter on the U-Net, found {sorted(names) or 'none'}.")
        adapter = next(iter(names))
    layers = [(name, m) for name, m in layers if adapter in m.lora_A]
    if not layers:
        raise StyleLoRAError(f"No LoRA layers of adapter {adapter!r} in the U-Net.")
    for name, layer in layers:
        base = layer.get_base_layer()
        if not isinstance(base, (nn.Linear, nn.Conv2d)):
            raise StyleLoRAError(f"{name}: DoRA / kohya dropout support Linear and Conv2d LoRA layers only, "
                                 f"not {type(base).__name__}.")
    return adapter, layers


# ---------------------------------------------------------------------------------------------
# DoRA


class _WeightProjection(torch.autograd.Function):
    """``B^T @ W`` in fp32 for a frozen ``W``: saves ``W`` itself for the backward (no fp32 copy of
    the weight is kept alive between forward and backward)."""

    @staticmethod
    def forward(ctx, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(weight)
        return b.t() @ weight.to(b.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (weight,) = ctx.saved_tensors
        return weight.to(grad.dtype) @ grad.t(), None


def _column_sq_norms(weight: torch.Tensor) -> torch.Tensor:
    """``sum over out (and kernel) of W^2`` per input channel, fp32: ``[in]``."""
    w = weight.detach()
    return w.reshape(w.shape[0], w.shape[1], -1).float().square().sum(dim=(0, 2))


class _DoraLayer:
    def __init__(self, path: str, layer: LoraLayer, adapter: str) -> None:
        base = layer.get_base_layer()
        if isinstance(base, nn.Conv2d) and (base.groups != 1 or tuple(base.dilation) != (1, 1)):
            raise StyleLoRAError(f"{path}: DoRA needs a plain convolution (groups=1, dilation=1).")
        self.path, self.layer, self.adapter = path, layer, adapter
        self.conv = isinstance(base, nn.Conv2d)
        weight = base.weight
        self._w2_key: tuple | None = None
        self._w2 = self._weight_sq_norms(weight)
        shape = (1, weight.shape[1], 1, 1) if self.conv else (1, weight.shape[1])
        # m = ||W|| + eps, so that s = m / (||W + 0|| + eps) is exactly 1 at init: the model is unchanged.
        init = (self._w2.sqrt() + DORA_EPS).reshape(shape)
        self.magnitude = nn.Parameter(init.to(weight.device, torch.float32))

    def _weight_sq_norms(self, weight: torch.Tensor) -> torch.Tensor:
        key = (weight.data_ptr(), weight._version, weight.dtype, weight.device)
        if key != self._w2_key:  # the frozen weight was replaced (e.g. moved or cast): recompute
            self._w2, self._w2_key = _column_sq_norms(weight), key
        return self._w2

    def norms(self) -> torch.Tensor:
        """``||W + scale * B @ A||`` per input channel (fp32 ``[in]``), as ComfyUI computes it, without
        forming ``W + dW``: ``||W_i||^2 + 2 c <W_i, (BA)_i> + c^2 ||(BA)_i||^2`` summed over the kernel."""
        layer, adapter = self.layer, self.adapter
        weight = layer.get_base_layer().weight
        a = layer.lora_A[adapter].weight.float()
        b = layer.lora_B[adapter].weight.float()
        c = float(layer.scaling[adapter])
        r, n_in = a.shape[0], a.shape[1]
        b = b.reshape(b.shape[0], r)  # [out, r]
        a = a.reshape(r, n_in, -1)  # [r, in, K]
        w2 = self._weight_sq_norms(weight).to(a.device)
        w_flat = weight.detach().reshape(weight.shape[0], -1).to(a.device)  # [out, in*K]
        g = _WeightProjection.apply(b, w_flat).reshape(r, n_in, -1)  # B^T W
        ma = (b.t() @ b @ a.reshape(r, -1)).reshape(r, n_in, -1)  # (B^T B) A
        cross = (a * g).sum(dim=(0, 2))
        delta = (a * ma).sum(dim=(0, 2))
        return (w2 + 2.0 * c * cross + (c * c) * delta).clamp_min(0.0).sqrt()

    def scale(self) -> torch.Tensor:
        """``s = m / (n + eps)`` per input channel, fp32, shaped like ``dora_scale``."""
        return self.magnitude / (self.norms().reshape(self.magnitude.shape) + DORA_EPS)

    def pre_hook(self, module: nn.Module, args: tuple, kwargs: dict):  # noqa: ANN201
        if module.disable_adapters or module.merged or self.adapter not in module.active_adapters:
            return None  # plain base layer (also a module-dropout skip): no DoRA either
        if args:
            x, rest = args[0], args[1:]
        elif "x" in kwargs:
            x, rest = kwargs.pop("x"), ()
        else:
            raise StyleLoRAError(f"{self.path}: DoRA cannot find the layer's input.")
        with torch.autocast(x.device.type, enabled=False):
            s = self.scale()
        s = s.reshape(-1, 1, 1) if self.conv else s.reshape(-1)
        # fp32 product rounded once to the activation dtype (a bf16 s would be a systematic per-channel error).
        return ((x * s).to(x.dtype), *rest), kwargs


class DoraWeights:
    """DoRA on every LoRA layer of one adapter: a trainable fp32 magnitude per input channel and a
    forward pre-hook scaling each layer's input by ``m / ||W + dW||``. Install after ``LoraModel``."""

    def __init__(self, unet: nn.Module, adapter: str | None = None) -> None:
        adapter, layers = lora_layers(unet, adapter)
        self.adapter = adapter
        self.layers = [_DoraLayer(path, layer, adapter) for path, layer in layers]
        self._handles = [d.layer.register_forward_pre_hook(d.pre_hook, with_kwargs=True) for d in self.layers]

    @property
    def parameters(self) -> list[nn.Parameter]:
        return [d.magnitude for d in self.layers]

    def state_dict(self) -> dict[str, torch.Tensor]:
        """``{"<module path>.dora_scale": fp32 magnitude}`` (CPU copies)."""
        return {f"{d.path}.dora_scale": d.magnitude.detach().to("cpu").clone() for d in self.layers}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        want = {f"{d.path}.dora_scale": d for d in self.layers}
        if set(state) != set(want):
            missing, extra = sorted(set(want) - set(state)), sorted(set(state) - set(want))
            raise StyleLoRAError(f"DoRA state does not match the adapter (missing {missing[:3]}, "
                                 f"unexpected {extra[:3]}).")
        with torch.no_grad():
            for key, d in want.items():
                value = state[key]
                if tuple(value.shape) != tuple(d.magnitude.shape):
                    raise StyleLoRAError(f"{key}: shape {tuple(value.shape)}, expected {tuple(d.magnitude.shape)}.")
                d.magnitude.copy_(value.to(d.magnitude.device, torch.float32))

    def kohya_tensors(self, *, arch: str, layers_per_block: int, naming: str,
                      dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """``{"<kohya name>.dora_scale": magnitude}`` in ``dtype``, named like :func:`peft_to_kohya`."""
        up_attention = up_blocks_with_attention(d.path for d in self.layers) if naming == "diffusers" else None
        out = {}
        for d in self.layers:
            name = kohya_key(d.path, arch, layers_per_block, naming=naming, up_attention=up_attention)
            out[f"{name}.dora_scale"] = d.magnitude.detach().to("cpu", dtype).contiguous().clone()
        return out

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


def install_dora(unet: nn.Module, adapter: str | None = None) -> DoraWeights:
    return DoraWeights(unet, adapter)


# ---------------------------------------------------------------------------------------------
# kohya's dropouts


def _mix(seed: int, index: int) -> int:
    """splitmix64 of (seed, index): a well-spread seed per layer and step."""
    z = (seed + (index + 1) * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & _MASK63


class KohyaDropout:
    """kohya ``LoRAModule.forward``'s dropouts on a peft U-Net, in training mode only.

    * ``network_dropout``: ``F.dropout(lora_down(x), p)`` (elementwise, survivors scaled by 1/(1-p)).
    * ``rank_dropout``: ``lora_down(x) * mask``, mask ``[batch, rank]`` with P(keep) = 1-p, and the
      LoRA's scale times ``1/(1-p)`` (applied to lora_down's output: lora_up is linear, bias-free).
    * ``module_dropout``: with probability p the layer returns its base output (LoRA, and DoRA,
      skipped: their parameters get no gradient from that layer, as in kohya).

    Randomness: each forward of the U-Net root (in training mode) draws one step seed (and, with
    module_dropout, one number per layer) from ``generator``; each layer's masks come from a
    generator on the activation's device seeded from (step seed, layer index). A run therefore
    depends on ``generator``'s state only (save it for resume), never on the global RNG, and a
    gradient-checkpointing recomputation, which calls the layers again but not the root, gets the
    same masks. A layer called several times in one U-Net forward reuses its masks.
    """

    def __init__(self, unet: nn.Module, options: Any, generator: torch.Generator,
                 adapter: str | None = None) -> None:
        self.p_network = float(options.network_dropout)
        self.p_rank = float(options.rank_dropout)
        self.p_module = float(options.module_dropout)
        for name in ("p_network", "p_rank", "p_module"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise StyleLoRAError(f"{name[2:]}_dropout must be in [0, 1), got {getattr(self, name)}.")
        if generator.device.type != "cpu":
            raise StyleLoRAError("kohya dropout draws its per-step numbers from a CPU torch.Generator.")
        self.generator = generator
        self.adapter, layers = lora_layers(unet, adapter)
        self.layers = [layer for _, layer in layers]
        self._step_seed: int | None = None
        self._skip: list[bool] | None = None
        self._device_generators: dict[torch.device, torch.Generator] = {}
        self._restore: dict[int, bool] = {}
        self._handles: list[Any] = []
        if not self.enabled:
            return
        self._handles.append(_unwrap(unet).register_forward_pre_hook(self._new_step))
        for index, layer in enumerate(self.layers):
            if self.p_module:
                self._handles.append(layer.register_forward_pre_hook(self._skip_hook(index), prepend=True))
                self._handles.append(layer.register_forward_hook(self._restore_hook, always_call=True))
            if self.p_network or self.p_rank:
                lora_a = layer.lora_A[self.adapter]
                self._handles.append(lora_a.register_forward_hook(self._mask_hook(index, layer)))

    @property
    def enabled(self) -> bool:
        return bool(self.p_network or self.p_rank or self.p_module)

    # -- per step

    def _new_step(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            self._draw()

    def _draw(self) -> None:
        if self.p_network or self.p_rank:
            self._step_seed = int(torch.randint(0, _MASK63, (1,), generator=self.generator).item())
        if self.p_module:
            self._skip = (torch.rand(len(self.layers), generator=self.generator) < self.p_module).tolist()

    def _device_generator(self, device: torch.device, seed: int) -> torch.Generator:
        gen = self._device_generators.get(device)
        if gen is None:
            gen = self._device_generators[device] = torch.Generator(device=device)
        gen.manual_seed(seed)
        return gen

    # -- hooks

    def _skip_hook(self, index: int):  # noqa: ANN202
        def hook(module: nn.Module, args: tuple) -> None:
            if not module.training:
                return
            if self._skip is None:
                self._draw()  # a layer run outside a U-Net forward
            if self._skip[index]:
                self._restore[id(module)] = module._disable_adapters
                module._disable_adapters = True
        return hook

    def _restore_hook(self, module: nn.Module, args: tuple, output: Any) -> None:
        previous = self._restore.pop(id(module), None)
        if previous is not None:
            module._disable_adapters = previous

    def _mask_hook(self, index: int, layer: nn.Module):  # noqa: ANN202
        conv = isinstance(layer.lora_A[self.adapter], nn.Conv2d)

        def hook(module: nn.Module, args: tuple, lx: torch.Tensor) -> torch.Tensor | None:
            if not layer.training:
                return None
            if self._step_seed is None:
                self._draw()
            gen = self._device_generator(lx.device, _mix(self._step_seed, index))
            # kohya's order: neuron dropout, then the rank mask (with its 1/(1-p) on the LoRA's scale).
            if self.p_network:
                keep = torch.rand(lx.shape, generator=gen, device=lx.device) >= self.p_network
                lx = lx * (keep.to(lx.dtype) * (1.0 / (1.0 - self.p_network)))
            if self.p_rank:
                rank = lx.shape[1] if conv else lx.shape[-1]
                keep = torch.rand((lx.shape[0], rank), generator=gen, device=lx.device) > self.p_rank
                if conv:
                    keep = keep.reshape(lx.shape[0], rank, *([1] * (lx.dim() - 2)))
                else:
                    keep = keep.reshape(lx.shape[0], *([1] * (lx.dim() - 2)), rank)
                lx = lx * (keep.to(lx.dtype) * (1.0 / (1.0 - self.p_rank)))
            return lx
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for layer in self.layers:  # a forward interrupted between the two hooks
            previous = self._restore.pop(id(layer), None)
            if previous is not None:
                layer._disable_adapters = previous


def install_kohya_dropout(unet: nn.Module, options: Any, generator: torch.Generator,
                          adapter: str | None = None) -> KohyaDropout:
    return KohyaDropout(unet, options, generator, adapter)


# ---------------------------------------------------------------------------------------------
# Everything the trainer needs


class LoraExtras:
    """What :func:`install_extras` installed: ``parameters`` (DoRA magnitudes, for the optimizer and
    gradient clipping), ``state_dict`` / ``load_state_dict`` (resume), ``kohya_tensors`` (the file's
    ``dora_scale`` keys) and ``remove`` (before ``LoraModel.unload``). Empty for default options."""

    def __init__(self, dora: DoraWeights | None, dropout: KohyaDropout | None) -> None:
        self.dora, self.dropout = dora, dropout

    @property
    def parameters(self) -> list[nn.Parameter]:
        return self.dora.parameters if self.dora else []

    def named_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for d in self.dora.layers if self.dora else []:
            yield f"{d.path}.dora_scale", d.magnitude

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.dora.state_dict() if self.dora else {}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        if self.dora:
            self.dora.load_state_dict(state)
        elif state:
            raise StyleLoRAError(f"The resume state has DoRA weights ({len(state)}) but DoRA is off.")

    def kohya_tensors(self, *, arch: str, layers_per_block: int, naming: str,
                      dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if not self.dora:
            return {}
        return self.dora.kohya_tensors(arch=arch, layers_per_block=layers_per_block, naming=naming, dtype=dtype)

    def remove(self) -> None:
        if self.dropout:
            self.dropout.remove()
        if self.dora:
            self.dora.remove()


def install_extras(unet: nn.Module, config: Any, generator: torch.Generator | None = None,
                   adapter: str | None = None) -> LoraExtras:
    """DoRA and kohya's dropouts as ``config.options`` asks, on a U-Net already wrapped by
    ``LoraModel`` (and with its LoRA weights in fp32). ``generator``: a CPU generator, needed only
    when a dropout is on; its state is the caller's to save for resume."""
    options = config.options
    dora = DoraWeights(unet, adapter) if options.use_dora else None
    dropout = None
    if options.network_dropout or options.rank_dropout or options.module_dropout:
        if generator is None:
            raise StyleLoRAError("kohya dropout needs a torch.Generator (pass install_extras(..., generator)).")
        try:
            dropout = KohyaDropout(unet, options, generator, adapter)
        except BaseException:
            if dora:
                dora.remove()
            raise
    return LoraExtras(dora, dropout)


__all__ = [
    "DORA_EPS",
    "DoraWeights",
    "KohyaDropout",
    "LoraExtras",
    "LoraKeyError",
    "LoraTargets",
    "build_lora_config",
    "find_targets",
    "install_dora",
    "install_extras",
    "install_kohya_dropout",
    "lora_layers",
]


@contextlib.contextmanager
def lora_layers_detached(unet: nn.Module) -> Iterator[None]:
    """The U-Net as it was before LoRA, for a while: every peft layer is swapped for its base layer and
    peft's markers on the U-Net are hidden, so a host can load LoRA files onto it and sample exactly as
    on the user's own model (ComfyUI patches weights by their original names; diffusers adds its own peft
    adapters). Nothing is copied or re-created: the LoRA parameters, the optimizer's references to them,
    the DoRA and dropout hooks on the peft layers all come back as they were."""
    swaps: list[tuple[nn.Module, str, nn.Module]] = []
    for name, module in list(unet.named_modules()):
        if isinstance(module, BaseTunerLayer) and name:
            parent_name, _, child = name.rpartition(".")
            swaps.append((unet.get_submodule(parent_name) if parent_name else unet, child, module))
    hidden = {key: unet.__dict__.pop(key) for key in ("peft_config", "_hf_peft_config_loaded") if key in unet.__dict__}
    for parent, child, module in swaps:
        setattr(parent, child, module.get_base_layer())
    try:
        yield
    finally:
        for parent, child, module in swaps:
            setattr(parent, child, module)
        for key in ("peft_config", "_hf_peft_config_loaded"):
            unet.__dict__.pop(key, None)  # what a host's own LoRA loading left (diffusers)
        unet.__dict__.update(hidden)
