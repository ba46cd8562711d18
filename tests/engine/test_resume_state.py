import json
import threading

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.optimizers import build_optimizer
from style_lora_trainer.style_lora_engine.resume_state import (
    STATE_FILE,
    TENSORS_FILE,
    ResumeState,
    ResumeStateUnusable,
    ResumeWriter,
    load_resume_state,
    save_resume_state,
)
from style_lora_trainer.style_lora_engine.schedules import build_lr_scheduler


def _trained_optimizer():
    torch.manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(6, 3)), torch.nn.Parameter(torch.randn(3))]
    opt = build_optimizer(params, TrainConfig())
    sched = build_lr_scheduler(opt, "cosine", warmup_steps=2, total_steps=20)
    for _ in range(5):
        sum((p**2).sum() for p in params).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
    return params, opt, sched


def _state(opt, sched, epoch=3):
    rng = torch.Generator().manual_seed(5)
    torch.randn(4, generator=rng)
    return ResumeState(fingerprint="abc", epoch=epoch, global_step=15,
                       lora={"a.lora_A.weight": torch.ones(2, 3)}, optimizer=opt.state_dict(),
                       scheduler=sched.state_dict(), noise_rng=rng.get_state(),
                       history={"losses": [0.5, float("nan")]})


def test_round_trip_restores_optimizer_scheduler_and_rng(tmp_path):
    params, opt, sched = _trained_optimizer()
    state = _state(opt, sched)
    save_resume_state(tmp_path, state)
    assert not any(p.suffix == ".tmp" or p.name.startswith(".") for p in tmp_path.iterdir())
    loaded = load_resume_state(tmp_path, "abc")
    assert loaded is not None and loaded.epoch == 3 and loaded.global_step == 15
    assert torch.equal(loaded.lora["a.lora_A.weight"], torch.ones(2, 3))
    assert loaded.history["losses"][0] == 0.5

    # A fresh optimizer given the loaded state continues exactly like the original.
    params2 = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = build_optimizer(params2, TrainConfig())
    sched2 = build_lr_scheduler(opt2, "cosine", warmup_steps=2, total_steps=20)
    opt2.load_state_dict(loaded.optimizer)
    sched2.load_state_dict(loaded.scheduler)
    for o, s, ps in ((opt, sched, params), (opt2, sched2, params2)):
        sum((p**2).sum() for p in ps).backward()
        o.step()
        s.step()
    assert all(torch.equal(a, b) for a, b in zip(params, params2))
    assert opt.param_groups[0]["d"] == opt2.param_groups[0]["d"]
    rng = torch.Generator()
    rng.set_state(loaded.noise_rng)
    expected = torch.Generator().manual_seed(5)
    torch.randn(4, generator=expected)
    assert torch.equal(torch.randn(3, generator=rng), torch.randn(3, generator=expected))
    # No pickle, one file: the tensors, with the rest as JSON in the safetensors header.
    assert sorted(p.name for p in tmp_path.iterdir()) == [TENSORS_FILE]
    with safe_open(str(tmp_path / TENSORS_FILE), "pt") as f:
        assert json.loads(f.metadata()["style_lora_resume_state"])["epoch"] == 3


def _as_format_1(folder, epoch_in_json=None):
    """Rewrite the folder's state as the old two-file format (JSON beside the tensors)."""
    path = folder / TENSORS_FILE
    with safe_open(str(path), "pt") as f:
        header = f.metadata()
    tensors = load_file(str(path))
    text = header.pop("style_lora_resume_state", None) or (folder / STATE_FILE).read_text()
    doc = json.loads(text)
    doc["format"] = 1
    if epoch_in_json is not None:
        doc["epoch"] = epoch_in_json
    save_file(tensors, str(path), metadata=header)
    (folder / STATE_FILE).write_text(json.dumps(doc))


def test_a_state_of_other_settings_or_unreadable_is_refused_with_the_reason(tmp_path):
    _, opt, sched = _trained_optimizer()
    assert load_resume_state(tmp_path, "abc") is None  # nothing there: a fresh run
    save_resume_state(tmp_path, _state(opt, sched, epoch=3))
    with pytest.raises(ResumeStateUnusable, match="other settings"):
        load_resume_state(tmp_path, "other")
    good = (tmp_path / TENSORS_FILE).read_bytes()
    (tmp_path / TENSORS_FILE).write_bytes(good[: len(good) // 2])  # not what a rename leaves, but a bad disk
    with pytest.raises(ResumeStateUnusable, match="cannot be read"):
        load_resume_state(tmp_path, "abc")
    (tmp_path / TENSORS_FILE).write_bytes(good)
    assert load_resume_state(tmp_path, "abc").epoch == 3


def test_format_1_pair_is_read_when_it_agrees_and_refused_when_torn(tmp_path):
    _, opt, sched = _trained_optimizer()
    save_resume_state(tmp_path, _state(opt, sched, epoch=4))
    _as_format_1(tmp_path)
    assert load_resume_state(tmp_path, "abc").epoch == 4
    # A crash after the tensors of epoch 4 were written but before its JSON.
    _as_format_1(tmp_path, epoch_in_json=3)
    with pytest.raises(ResumeStateUnusable, match="disagree"):
        load_resume_state(tmp_path, "abc")
    (tmp_path / STATE_FILE).write_text("{not json")
    with pytest.raises(ResumeStateUnusable):
        load_resume_state(tmp_path, "abc")
    # Writing a new state replaces the pair by the single file.
    save_resume_state(tmp_path, _state(opt, sched, epoch=5))
    assert sorted(p.name for p in tmp_path.iterdir()) == [TENSORS_FILE]
    assert load_resume_state(tmp_path, "abc").epoch == 5


def test_background_writer_writes_the_snapshot_taken_at_submit(tmp_path, monkeypatch):
    """Training goes on changing LoRA and optimizer tensors in place while the state is written:
    what lands on disk is the epoch's state, and wait() returns only once both files are there."""
    params, opt, sched = _trained_optimizer()
    state = _state(opt, sched)
    expected_exp_avg = opt.state_dict()["state"][0]["exp_avg"].clone()
    from style_lora_trainer.style_lora_engine import resume_state

    release = threading.Event()
    real = resume_state.write_resume_snapshot

    def slow_write(folder, snapshot):
        release.wait(10)
        real(folder, snapshot)

    monkeypatch.setattr(resume_state, "write_resume_snapshot", slow_write)
    writer = ResumeWriter()
    writer.submit(tmp_path, state)
    state.lora["a.lora_A.weight"].mul_(0)  # the next epoch's steps
    opt.state[params[0]]["exp_avg"].add_(100.0)
    state.history["losses"].append(1.0)
    assert not (tmp_path / TENSORS_FILE).exists()  # still writing: training was not held up
    release.set()
    writer.wait()
    loaded = load_resume_state(tmp_path, "abc")
    assert loaded is not None and loaded.epoch == 3
    assert torch.equal(loaded.lora["a.lora_A.weight"], torch.ones(2, 3))
    assert torch.equal(loaded.optimizer["state"][0]["exp_avg"], expected_exp_avg)
    assert len(loaded.history["losses"]) == 2


def test_background_writer_hands_its_error_to_the_training_thread(tmp_path, monkeypatch):
    _params, opt, sched = _trained_optimizer()
    from style_lora_trainer.style_lora_engine import resume_state

    def failing(folder, snapshot):
        raise OSError("No space left on device")

    monkeypatch.setattr(resume_state, "write_resume_snapshot", failing)
    writer = ResumeWriter()
    writer.submit(tmp_path, _state(opt, sched))
    with pytest.raises(OSError, match="No space left"):
        writer.wait()
    writer.wait()  # reported once
    assert not (tmp_path / STATE_FILE).exists() and not (tmp_path / TENSORS_FILE).exists()
