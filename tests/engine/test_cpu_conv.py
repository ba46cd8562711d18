"""Small convolutions as one GEMM on the CPU while training: the same numbers as the convolution, taken
only where it pays (few output positions, gradients recorded, frozen weights), and put back afterwards."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from style_lora_trainer.dev.synthetic_data import make_style_dataset
from style_lora_trainer.dev.tiny_model import build_tiny_sd15
from style_lora_trainer.headless.diffusers_backend import DiffusersBackend
from style_lora_trainer.style_lora_engine import cpu_conv
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.trainer import train_lora


@pytest.mark.parametrize(("batch", "size", "kernel", "stride", "padding", "bias"), [
    (1, 4, 3, 1, 1, True), (3, 8, 3, 1, 1, True), (2, 8, 3, 2, 1, False), (1, 7, 5, 2, 2, True), (2, 6, 3, 1, 0, True),
])
def test_the_gemm_computes_the_convolution_and_its_input_gradient(batch, size, kernel, stride, padding, bias):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 24, size, size, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(16, 24, kernel, kernel, generator=g, dtype=torch.float64)
    b = torch.randn(16, generator=g, dtype=torch.float64) if bias else None
    want = F.conv2d(x, weight, b, stride=stride, padding=padding)
    got = cpu_conv.conv2d_as_gemm(x, weight, b, (stride, stride), (padding, padding))
    assert got.shape == want.shape and got.is_contiguous()
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    grad = torch.randn(want.shape, generator=g, dtype=torch.float64)
    (want_x,) = torch.autograd.grad(want, x, grad)
    (got_x,) = torch.autograd.grad(got, x, grad)
    torch.testing.assert_close(got_x, want_x, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_in_the_training_dtypes_it_differs_from_onednn_by_rounding_only(dtype):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 256, 8, 8, generator=g).to(dtype).requires_grad_(True)
    weight, b = (torch.randn(128, 256, 3, 3, generator=g) * 0.02).to(dtype), torch.randn(128, generator=g).to(dtype)
    grad = torch.randn(1, 128, 8, 8, generator=g).to(dtype)
    exact = F.conv2d(x.double(), weight.double(), b.double(), padding=1)
    (exact_x,) = torch.autograd.grad(exact, x, grad.double())
    for out in (F.conv2d(x, weight, b, padding=1), cpu_conv.conv2d_as_gemm(x, weight, b, (1, 1), (1, 1))):
        (out_x,) = torch.autograd.grad(out, x, grad)
        assert out.dtype == dtype
        tol = 1e-2 if dtype == torch.bfloat16 else 1e-5  # bf16: a unit in the last place of the outputs
        assert (out.double() - exact).abs().max() <= tol * exact.abs().max()
        assert (out_x.double() - exact_x).abs().max() <= tol * exact_x.abs().max()


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.small = nn.Conv2d(8, 8, 3, padding=1)
        self.pointwise = nn.Conv2d(8, 8, 1)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)


@pytest.fixture
def gemm_calls(monkeypatch):
    calls = []
    real = cpu_conv.conv2d_as_gemm

    def counted(x, *args):
        calls.append(tuple(x.shape))
        return real(x, *args)

    monkeypatch.setattr(cpu_conv, "conv2d_as_gemm", counted)
    return calls


def test_only_small_outputs_of_frozen_convs_with_gradients_take_the_gemm(gemm_calls):
    net = _Net().requires_grad_(False)
    patched = cpu_conv.GemmForSmallConvs(net, torch.device("cpu"))
    assert len(patched) == 1 and "forward" in net.small.__dict__  # 1x1 and grouped convs are left alone
    assert "forward" not in net.pointwise.__dict__ and "forward" not in net.grouped.__dict__

    x = torch.randn(2, 8, 8, 8, requires_grad=True)  # 2 x 8 x 8 = 128 positions: the GEMM
    want = nn.Conv2d.forward(net.small, x)
    torch.testing.assert_close(net.small(x), want, rtol=1e-5, atol=1e-6)
    assert gemm_calls == [(2, 8, 8, 8)]

    big = torch.randn(1, 8, 16, 16, requires_grad=True)  # 256 positions: oneDNN
    assert torch.equal(net.small(big), nn.Conv2d.forward(net.small, big)) and len(gemm_calls) == 1
    with torch.no_grad():  # sampling and validation: the model's own convolution, bit for bit
        assert torch.equal(net.small(x), nn.Conv2d.forward(net.small, x)) and len(gemm_calls) == 1
    net.small.weight.requires_grad_(True)  # a trained conv needs its weight gradient: not the GEMM
    net.small(x).sum().backward()
    assert len(gemm_calls) == 1 and net.small.weight.grad is not None

    patched.remove()
    assert "forward" not in net.small.__dict__ and len(patched) == 0


def test_a_layer_that_builds_its_weight_per_call_or_another_device_is_left_alone(gemm_calls):
    net = _Net().requires_grad_(False)
    x = torch.randn(1, 8, 4, 4, requires_grad=True)
    keep = {"on": True}
    patched = cpu_conv.GemmForSmallConvs(net, torch.device("cpu"), keep=lambda module: keep["on"])
    assert len(patched) == 0
    keep["on"] = False
    patched = cpu_conv.GemmForSmallConvs(net, torch.device("cpu"), keep=lambda module: keep["on"])
    keep["on"] = True  # decided per call: ComfyUI may switch a layer to its manual cast later
    net.small(x)
    assert gemm_calls == []
    keep["on"] = False
    net.small(x)
    assert len(gemm_calls) == 1
    patched.remove()
    assert len(cpu_conv.GemmForSmallConvs(net, torch.device("cuda"))) == 0 and "forward" not in net.small.__dict__


def test_an_earlier_instance_forward_is_wrapped_and_put_back():
    net = _Net().requires_grad_(False)
    seen = []

    def own(x):
        seen.append(1)
        return nn.Conv2d.forward(net.small, x)

    net.small.forward = own
    patched = cpu_conv.GemmForSmallConvs(net, torch.device("cpu"))
    net.small(torch.randn(1, 8, 32, 32, requires_grad=True))  # large: the wrapped forward runs
    assert seen == [1]
    patched.remove()
    assert net.small.__dict__["forward"] is own


def test_training_takes_the_gemm_and_matches_training_without_it(tmp_path, clip_tokenizer, gemm_calls,
                                                                 monkeypatch):
    make_style_dataset(tmp_path / "data", count=2, size=32, seed=1)
    dataset = load_dataset(tmp_path / "data", repeats=1, resolution=32, buckets=BucketSettings(min_size=32, step=32))
    config = TrainConfig(rank=4, alpha=2.0, epochs=1, batch_size=1, seed=3)

    def run(name):
        model = build_tiny_sd15(clip_tokenizer, seed=0)
        result = train_lora(DiffusersBackend(model), dataset, config, runs_root=tmp_path / name, output_name=name)
        convs = [m for m in model.unet.modules() if isinstance(m, nn.Conv2d)]
        assert all("forward" not in m.__dict__ for m in convs)  # every conv's own forward after training
        return result.losses

    with_gemm = run("gemm")
    assert gemm_calls  # the tiny U-Net's deepest convs are small enough
    calls = len(gemm_calls)
    monkeypatch.setattr(cpu_conv, "MAX_POSITIONS", 0)
    without = run("onednn")
    assert len(gemm_calls) == calls
    torch.testing.assert_close(torch.tensor(with_gemm), torch.tensor(without), rtol=1e-4, atol=1e-5)
