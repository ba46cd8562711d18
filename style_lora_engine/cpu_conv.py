"""Small convolutions as one GEMM on the CPU while training.

oneDNN's convolution (PyTorch's CPU conv) is slow for the U-Net's deepest levels, where a 3x3 conv
has a large weight and few output positions: on the 2-core bench machine, SD1.5's 2560 -> 1280 conv at
8x8 took 75 ms forward + backward in bf16, and 24 ms as ``unfold`` + one matrix multiply (the 4x4
ones: 68 -> 15 ms; fp32: 167 -> 71 ms). At 16x16 and above oneDNN is as fast or faster, so only
convs with at most :data:`MAX_POSITIONS` output positions (batch x height x width) take the GEMM.

The GEMM computes the same sums as the convolution (the difference is float rounding: one bf16 ulp,
~1e-6 relative in fp32). It is used while gradients are recorded only, so sampling and validation
(no grad) run the model's own convolution exactly as before; with gradient checkpointing the forward
and its recomputation both record gradients and take the same path.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Output positions (batch x H_out x W_out) up to which the GEMM beats oneDNN here: measured at 16 (4x4)
# and 64 (8x8) faster by 2-4x, at 128 (batch 2 at 8x8) by 2x, at 256 (16x16) slower for some channels.
MAX_POSITIONS = 128


class _FrozenWeightGemm(torch.autograd.Function):
    """``bias + W @ cols`` for a frozen ``W``: in half precision the input's gradient is computed as
    ``(grad^T @ W)^T``, which reads the large weight row by row (autograd's ``W^T @ grad`` took 2x
    longer in bf16 here; in fp32 it is the faster of the two and is kept)."""

    @staticmethod
    def forward(ctx, cols: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(w)
        return torch.mm(w, cols) if bias is None else torch.addmm(bias.unsqueeze(1), w, cols)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        (w,) = ctx.saved_tensors
        if w.dtype in (torch.bfloat16, torch.float16):
            return torch.mm(grad.t(), w).t(), None, None
        return torch.mm(w.t(), grad), None, None


def _output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def conv2d_as_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding)`` (groups 1, dilation 1, zero padding) as
    ``unfold`` + one matrix multiply over all images' positions. ``weight`` and ``bias`` are frozen:
    no gradient is computed for them."""
    n = x.shape[0]
    out_channels = weight.shape[0]
    h_out = _output_size(x.shape[2], weight.shape[2], stride[0], padding[0])
    w_out = _output_size(x.shape[3], weight.shape[3], stride[1], padding[1])
    cols = F.unfold(x, weight.shape[2:], padding=padding, stride=stride)  # [n, c*kh*kw, L]
    if n > 1:  # one GEMM over every image's positions (a broadcast batched matmul is far slower)
        cols = cols.transpose(0, 1).reshape(cols.shape[1], -1)
    else:
        cols = cols[0]
    y = _FrozenWeightGemm.apply(cols, weight.detach().reshape(out_channels, -1),
                                None if bias is None else bias.detach())  # [out, n*L]
    if n > 1:
        return y.reshape(out_channels, n, h_out, w_out).transpose(0, 1).contiguous()
    return y.reshape(1, out_channels, h_out, w_out)


def _eligible(module: nn.Module) -> bool:
    return (isinstance(module, nn.Conv2d) and module.groups == 1 and tuple(module.dilation) == (1, 1)
            and module.padding_mode == "zeros" and not isinstance(module.padding, str)
            and tuple(module.kernel_size) != (1, 1))


def _takes_gemm(module: nn.Conv2d, x: torch.Tensor) -> bool:
    if not torch.is_grad_enabled() or x.dim() != 4 or x.device.type != "cpu":
        return False
    weight, bias = module.weight, module.bias
    if weight.requires_grad or (bias is not None and bias.requires_grad):
        return False  # a trained conv (the GEMM computes no weight gradient)
    if weight.dtype != x.dtype or weight.device != x.device:
        return False  # cast per call (autocast on other-dtype weights, offloaded layers): the model's own path
    if torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") != x.dtype:
        return False
    h_out = _output_size(x.shape[2], module.kernel_size[0], module.stride[0], module.padding[0])
    w_out = _output_size(x.shape[3], module.kernel_size[1], module.stride[1], module.padding[1])
    return x.shape[0] * h_out * w_out <= MAX_POSITIONS


class GemmForSmallConvs:
    """While installed, every plain non-1x1 ``nn.Conv2d`` (groups 1, dilation 1, zero padding) of
    ``model`` on a CPU computes as :func:`conv2d_as_gemm` when gradients are recorded and its output is
    small; otherwise, and on other devices, the module's own forward runs. ``keep(module)`` True leaves a module alone (one that
    builds its weight per call). :meth:`remove` restores every forward."""

    def __init__(self, model: nn.Module, device: torch.device,
                 keep: Callable[[nn.Module], bool] = lambda module: False) -> None:
        self._patched: list[tuple[nn.Module, object | None, Callable]] = []
        if torch.device(device).type != "cpu":
            return
        for module in model.modules():
            if _eligible(module) and not keep(module):
                own = module.__dict__.get("forward")
                forward = own if own is not None else module.forward
                wrapper = self._wrap(module, forward, keep)
                module.forward = wrapper
                self._patched.append((module, own, wrapper))

    @staticmethod
    def _wrap(module: nn.Conv2d, forward: Callable, keep: Callable[[nn.Module], bool]) -> Callable:
        def run(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
            if args or kwargs or keep(module) or not _takes_gemm(module, x):
                return forward(x, *args, **kwargs)
            return conv2d_as_gemm(x, module.weight, module.bias, tuple(module.stride), tuple(module.padding))

        return run

    def __len__(self) -> int:
        return len(self._patched)

    def remove(self) -> None:
        for module, own, wrapper in reversed(self._patched):
            if module.__dict__.get("forward") is wrapper:
                if own is None:
                    del module.forward
                else:
                    module.forward = own
        self._patched = []
