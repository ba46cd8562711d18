"""kohya's network_dropout / rank_dropout / module_dropout (sd-scripts networks/lora.py
``LoRAModule.forward``) on peft LoRA layers, drawn from a given generator."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig
from peft.tuners.lora import LoraModel
from torch import nn
from torch.utils.checkpoint import checkpoint

from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.errors import StyleLoRAError
from style_lora_trainer.style_lora_engine.lora_network import install_extras, install_kohya_dropout
from style_lora_trainer.style_lora_engine.train_options import TrainOptions

ADAPTER = "style_lora"
RANK, ALPHA = 8, 4.0
SCALE = ALPHA / RANK


class Net(nn.Module):
    """A root (the U-Net's role) with one Linear and one 3x3 conv LoRA layer."""

    def __init__(self, checkpointed: bool = False) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.checkpointed = checkpointed

    def forward(self, x: torch.Tensor, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.checkpointed:
            return checkpoint(self.lin, x, use_reentrant=False), checkpoint(self.conv, img, use_reentrant=False)
        return self.lin(x), self.conv(img)


def net(seed: int = 0, checkpointed: bool = False) -> Net:
    torch.manual_seed(seed)
    model = Net(checkpointed)
    LoraModel(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["lin", "conv"], init_lora_weights=True),
              ADAPTER)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.train()


def inputs(seed: int = 5, batch: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 64, 6, generator=gen), torch.randn(batch, 3, 6, 6, generator=gen)


def options(**kw) -> TrainOptions:
    return TrainOptions(**kw)


class Capture:
    """The lora_A output after the dropout hook (hooks registered later see the modified output)."""

    def __init__(self, model: Net) -> None:
        self.out: dict[str, torch.Tensor] = {}
        for name in ("lin", "conv"):
            getattr(model, name).lora_A[ADAPTER].register_forward_hook(self._hook(name))

    def _hook(self, name: str):  # noqa: ANN202
        def hook(module, args, output):  # noqa: ANN001, ANN202
            self.out[name] = output.detach()
        return hook


def raw_down(model: Net, x: torch.Tensor, img: torch.Tensor) -> dict[str, torch.Tensor]:
    """lora_down's output without dropout (the hooks act in training mode only)."""
    model.eval()
    try:
        with torch.no_grad():
            return {"lin": model.lin.lora_A[ADAPTER](x), "conv": model.conv.lora_A[ADAPTER](img)}
    finally:
        model.train()


def test_rank_dropout_masks_sample_and_rank_and_rescales() -> None:
    model = net()
    x, img = inputs()
    handle = install_kohya_dropout(model, options(rank_dropout=0.5), torch.Generator().manual_seed(0))
    cap = Capture(model)
    raw = raw_down(model, x, img)
    with torch.no_grad():
        y_lin, y_conv = model(x, img)
    for name, rank_dim in (("lin", -1), ("conv", 1)):
        ratio = cap.out[name] / raw[name]
        mask = ratio.movedim(rank_dim, 1).reshape(x.shape[0], RANK, -1)
        # one value per (sample, rank), over all tokens / pixels: 0 or 1 / (1 - p)
        assert torch.allclose(mask, mask[..., :1].expand_as(mask), atol=1e-5)
        values = mask[..., 0]
        assert torch.all((values.abs() < 1e-5) | ((values - 2.0).abs() < 1e-4)), values
        assert 0 < (values.abs() < 1e-5).sum() < values.numel()
    # the layer output is base + lora_up(masked lora_down) * scale (kohya: scale * 1/(1-p) on the masked sum)
    with torch.no_grad():
        base = model.lin.get_base_layer()(x)
        expected = base + (cap.out["lin"] @ model.lin.lora_B[ADAPTER].weight.t()) * SCALE
    torch.testing.assert_close(y_lin, expected, rtol=1e-5, atol=1e-5)
    handle.remove()


def test_rank_dropout_by_hand_on_a_tiny_linear() -> None:
    """kohya: lx = down(x) * mask; out = org + up(lx) * scale / (1 - p); mask[b, r] = rand > p."""
    model = net(seed=2)
    x, img = inputs(batch=3)
    p = 0.25
    install_kohya_dropout(model, options(rank_dropout=p), torch.Generator().manual_seed(7))
    cap = Capture(model)
    with torch.no_grad():
        y_lin, _ = model(x, img)
        lx = x @ model.lin.lora_A[ADAPTER].weight.t()
        mask = (cap.out["lin"] != 0).to(lx.dtype)  # lx has no exact zeros of its own
        by_hand = model.lin.get_base_layer()(x) + ((lx * mask) @ model.lin.lora_B[ADAPTER].weight.t()) * (
            SCALE * (1.0 / (1.0 - p)))
    torch.testing.assert_close(y_lin, by_hand, rtol=1e-5, atol=1e-5)
    assert mask.shape == (3, 64, RANK) and torch.equal(mask, mask[:, :1].expand_as(mask))


def test_network_dropout_is_elementwise_dropout_of_lora_down() -> None:
    model = net()
    x, img = inputs()
    p = 0.25
    install_kohya_dropout(model, options(network_dropout=p), torch.Generator().manual_seed(1))
    cap = Capture(model)
    raw = raw_down(model, x, img)
    with torch.no_grad():
        model(x, img)
    ratio = cap.out["lin"] / raw["lin"]
    dropped = ratio.abs() < 1e-6
    assert torch.allclose(ratio[~dropped], torch.full_like(ratio[~dropped], 1 / (1 - p)), rtol=1e-5)
    assert 0.2 < dropped.float().mean().item() < 0.3  # 2048 elements
    # elementwise: not constant per (sample, rank)
    assert not torch.equal(dropped, dropped[:, :1].expand_as(dropped))


def test_module_dropout_almost_always_gives_the_base_output() -> None:
    model = net()
    x, img = inputs()
    install_kohya_dropout(model, options(module_dropout=0.999), torch.Generator().manual_seed(3))
    with torch.no_grad():
        base_lin, base_conv = model.lin.get_base_layer()(x), model.conv.get_base_layer()(img)
        for _ in range(20):
            y_lin, y_conv = model(x, img)
            assert torch.equal(y_lin, base_lin) and torch.equal(y_conv, base_conv)
    # LoRA params of a skipped layer get no gradient (kohya returns org_forwarded before lora_down)
    y_lin, y_conv = model(x, img)
    assert not y_lin.requires_grad and not y_conv.requires_grad
    assert model.lin.disable_adapters is False  # restored after each forward


def test_module_dropout_rate() -> None:
    model = net()
    x, img = inputs(batch=1)
    install_kohya_dropout(model, options(module_dropout=0.3), torch.Generator().manual_seed(4))
    with torch.no_grad():
        base = model.lin.get_base_layer()(x)
        skipped = sum(torch.equal(model(x, img)[0], base) for _ in range(400))
    assert 90 < skipped < 150  # 120 expected


def test_eval_mode_and_remove_turn_it_off() -> None:
    model = net()
    x, img = inputs()
    with torch.no_grad():
        full = model(x, img)
    gen = torch.Generator().manual_seed(0)
    handle = install_kohya_dropout(model, options(network_dropout=0.5, rank_dropout=0.5, module_dropout=0.5), gen)
    model.eval()
    state = gen.get_state()
    with torch.no_grad():
        out = model(x, img)
    assert all(torch.equal(a, b) for a, b in zip(out, full, strict=True))
    assert torch.equal(gen.get_state(), state)  # nothing drawn outside training
    model.train()
    with torch.no_grad():
        assert not torch.equal(model(x, img)[0], full[0])
    handle.remove()
    with torch.no_grad():
        out = model(x, img)
    assert all(torch.equal(a, b) for a, b in zip(out, full, strict=True))


def run_steps(seed: int, checkpointed: bool = False, steps: int = 3) -> tuple[list[torch.Tensor], list]:
    model = net(checkpointed=checkpointed)
    x, img = inputs()
    opts = options(network_dropout=0.2, rank_dropout=0.3, module_dropout=0.2)
    install_kohya_dropout(model, opts, torch.Generator().manual_seed(seed))
    outs, grads = [], []
    for _ in range(steps):
        y_lin, y_conv = model(x, img)
        loss = y_lin.square().sum() + y_conv.square().sum()
        if loss.requires_grad:  # both layers skipped: nothing to train this step
            loss.backward()
        outs.append(torch.cat([y_lin.flatten(), y_conv.flatten()]).detach())
        grads.append([None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
                      if "lora_" in n])
        model.zero_grad(set_to_none=True)
    return outs, grads


def test_reproducible_from_the_generator_only() -> None:
    a_out, a_grad = run_steps(seed=10)
    b_out, b_grad = run_steps(seed=10)
    assert all(torch.equal(a, b) for a, b in zip(a_out, b_out, strict=True))
    c_out, _ = run_steps(seed=11)
    assert not all(torch.equal(a, c) for a, c in zip(a_out, c_out, strict=True))
    assert not all(torch.equal(a_out[0], o) for o in a_out[1:])  # a new draw each step


def test_global_rng_untouched() -> None:
    model = net()  # (net() seeds the global RNG itself; the draws below must not move it)
    x, img = inputs()
    install_kohya_dropout(model, options(network_dropout=0.2, rank_dropout=0.2, module_dropout=0.2),
                          torch.Generator().manual_seed(0))
    before = torch.get_rng_state()
    for _ in range(3):
        model(x, img)
    assert torch.equal(torch.get_rng_state(), before)


def test_gradient_checkpointing_recomputes_the_same_masks() -> None:
    plain_out, plain_grads = run_steps(seed=21)
    ckpt_out, ckpt_grads = run_steps(seed=21, checkpointed=True)
    for a, b in zip(plain_out, ckpt_out, strict=True):
        assert torch.equal(a, b)
    for step_a, step_b in zip(plain_grads, ckpt_grads, strict=True):
        for ga, gb in zip(step_a, step_b, strict=True):
            assert (ga is None) == (gb is None)
            if ga is not None:
                torch.testing.assert_close(ga, gb)


def test_install_extras_wires_dropout_and_checks() -> None:
    model = net()
    config = TrainConfig(rank=RANK, alpha=ALPHA, options=TrainOptions(rank_dropout=0.1))
    with pytest.raises(StyleLoRAError, match="Generator"):
        install_extras(model, config)
    extras = install_extras(model, config, torch.Generator().manual_seed(0))
    assert extras.dropout is not None and extras.dora is None and extras.parameters == []
    extras.remove()


def test_dora_with_module_dropout_skips_both() -> None:
    model = net()
    x, img = inputs()
    config = TrainConfig(rank=RANK, alpha=ALPHA, options=TrainOptions(use_dora=True, module_dropout=0.999))
    extras = install_extras(model, config, torch.Generator().manual_seed(0))
    with torch.no_grad():
        for m in extras.parameters:
            m.mul_(1.5)
        y_lin, y_conv = model(x, img)
        assert torch.equal(y_lin, model.lin.get_base_layer()(x))
        model.eval()
        assert not torch.allclose(model(x, img)[0], y_lin)  # DoRA + LoRA when not skipped
    extras.remove()


def test_given_the_lora_model_draws_per_call_of_the_wrapped_root() -> None:
    torch.manual_seed(0)
    model = Net()
    lora_model = LoraModel(model, LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["lin", "conv"]), ADAPTER)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    model.train()
    x, img = inputs()
    install_kohya_dropout(lora_model, options(rank_dropout=0.5), torch.Generator().manual_seed(0))
    with torch.no_grad():
        outs = [model(x, img)[0] for _ in range(3)]  # the backends call the U-Net itself
    assert not torch.equal(outs[0], outs[1]) and not torch.equal(outs[1], outs[2])
