import dataclasses

import pytest
import torch

from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.errors import ConfigError
from style_lora_trainer.style_lora_engine.optimizers import (
    build_optimizer,
    describe_optimizer,
    effective_lr,
)
from style_lora_trainer.style_lora_engine.schedules import build_lr_scheduler


def _params():
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(8, 4)), torch.nn.Parameter(torch.randn(4))]


def test_guide_default_is_dadapt_adam_decoupled_with_bias_correction():
    config = TrainConfig()
    assert (config.optimizer, config.learning_rate, config.rank, config.alpha) == ("DAdaptAdamW", 1.0, 32, 16.0)
    opt = build_optimizer(_params(), config)
    import dadaptation

    assert isinstance(opt, dadaptation.DAdaptAdam)
    group = opt.param_groups[0]
    assert group["decouple"] is True
    assert group["use_bias_correction"] is True
    assert group["lr"] == 1.0
    assert group["weight_decay"] == pytest.approx(0.01)
    assert len(opt.param_groups) == 1  # DAdapt refuses groups with different learning rates


def test_dadapt_d_grows_from_d0_and_dlr_is_reported():
    params = _params()
    opt = build_optimizer(params, TrainConfig())
    lr0, dlr0 = effective_lr(opt)
    assert lr0 == 1.0 and dlr0 == pytest.approx(1e-6)
    for _ in range(10):
        loss = sum((p**2).sum() for p in params)
        loss.backward()
        opt.step()
        opt.zero_grad()
    _, dlr = effective_lr(opt)
    assert dlr > dlr0  # d adapts upward from d0


def test_optimizer_args_override_defaults_and_bad_args_are_explained():
    config = dataclasses.replace(TrainConfig(), optimizer_args={"betas": [0.9, 0.99], "weight_decay": 0.1})
    opt = build_optimizer(_params(), config)
    assert opt.param_groups[0]["betas"] == (0.9, 0.99)
    assert "weight_decay=0.1" in describe_optimizer(config)
    bad = dataclasses.replace(TrainConfig(), optimizer_args={"safeguard_warmup": True})
    with pytest.raises(ConfigError, match="optimizer_args"):
        build_optimizer(_params(), bad)


@pytest.mark.parametrize("name", ["AdamW", "Adafactor", "Prodigy"])
def test_other_optimizers_step(name):
    params = _params()
    before = params[0].detach().clone()
    opt = build_optimizer(params, dataclasses.replace(TrainConfig(), optimizer=name, learning_rate=1e-2
                                                      if name != "Prodigy" else 1.0))
    sum((p**2).sum() for p in params).backward()
    opt.step()
    assert not torch.equal(before, params[0].detach())


def test_adamw8bit_without_bitsandbytes_says_how_to_fix(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    with pytest.raises(ConfigError, match="bitsandbytes"):
        build_optimizer(_params(), dataclasses.replace(TrainConfig(), optimizer="AdamW8bit"))


def _lrs(name, warmup, total):
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_lr_scheduler(opt, name, warmup_steps=warmup, total_steps=total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def test_constant_with_warmup_ramps_then_holds():
    lrs = _lrs("constant", 4, 10)
    assert lrs[0] == 0.0
    assert lrs[:4] == sorted(lrs[:4]) and lrs[3] < 1.0
    assert lrs[4:] == [1.0] * 6


def test_constant_without_warmup_is_flat():
    assert _lrs("constant", 0, 5) == [1.0] * 5


def test_cosine_and_linear_decay_after_warmup():
    cos = _lrs("cosine", 2, 20)
    lin = _lrs("linear", 2, 20)
    for lrs in (cos, lin):
        assert lrs[0] == 0.0 and lrs[2] == pytest.approx(1.0)
        assert all(a >= b for a, b in zip(lrs[2:], lrs[3:]))
        assert lrs[-1] < 0.2
    assert cos[6] > lin[6]  # cosine stays higher than linear in the first half


def test_warmup_longer_than_run_is_refused():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="warmup"):
        build_lr_scheduler(opt, "cosine", warmup_steps=10, total_steps=10)
