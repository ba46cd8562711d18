"""The pre-flight plan: its arithmetic, the guide's checks, the disk its files take, and a measured warm-up
whose memory estimate is held against the measured peak of the real run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from style_lora_trainer.dev.synthetic_data import make_style_dataset
from style_lora_trainer.dev.tiny_model import build_tiny_sd15
from style_lora_trainer.headless.diffusers_backend import DiffusersBackend
from style_lora_trainer.style_lora_engine import memory_meter
from style_lora_trainer.style_lora_engine.buckets import BucketSettings
from style_lora_trainer.style_lora_engine.config import TrainConfig
from style_lora_trainer.style_lora_engine.data_parallel import DataParallel
from style_lora_trainer.style_lora_engine.dataset import load_dataset
from style_lora_trainer.style_lora_engine.trainer import TrainCallbacks, train_lora
from style_lora_trainer.style_lora_engine.training_plan import (
    guide_checks,
    make_plan,
    plan_counts,
)

CONFIG = TrainConfig(rank=4, alpha=2.0, epochs=2, batch_size=2, seed=3, mixed_precision="fp32")


def dataset_of(folder, count, repeats, sizes=None, resolution=32):
    make_style_dataset(folder, count=count, size=32, seed=1)
    if sizes:  # a second aspect ratio: a second bucket
        from PIL import Image

        for i, (w, h) in enumerate(sizes):
            Image.new("RGB", (w, h), (200, 40, 40)).save(folder / f"wide_{i}.png")
            (folder / f"wide_{i}.txt").write_text("painting of a wide thing, red", encoding="utf-8")
    return load_dataset(folder, repeats=repeats, resolution=resolution,
                        buckets=BucketSettings(min_size=32, max_size=128, step=32))


def test_the_arithmetic_follows_the_buckets_and_the_global_batch(tmp_path):
    ds = dataset_of(tmp_path / "d", count=30, repeats=10, sizes=[(128, 32)] * 3, resolution=64)
    config = dataclasses.replace(CONFIG, epochs=20, batch_size=4)
    counts = plan_counts(ds, config)
    buckets = sorted(ds.bucket_counts().values())
    assert len(buckets) == 2
    # each bucket's images x repeats in batches of 4, rounded up per bucket (kohya's rule)
    expected = sum(-(-n * 10 // 4) for n in buckets)
    assert (counts.images, counts.repeats, counts.steps_per_epoch, counts.total_steps) == (33, 10, expected, 20 * expected)
    two = plan_counts(ds, dataclasses.replace(config, batch_size=2), DataParallel(0, 2))
    assert (two.steps_per_epoch, two.global_batch, two.processes) == (expected, 4, 2)
    assert [ok for ok, _ in guide_checks(counts)] == [True, True, True]
    few = plan_counts(dataset_of(tmp_path / "e", count=4, repeats=2), CONFIG)
    checks = guide_checks(few)
    assert [ok for ok, _ in checks] == [False, False, False]
    assert checks[0][1] == "4 images (the guide: 30-100)"
    assert checks[1][1] == "repeats 2 (the guide: about 10, 8-20)"


@pytest.fixture
def dataset(tmp_path):
    return dataset_of(tmp_path / "data", count=4, repeats=2)


@pytest.mark.slow
def test_the_disk_figures_are_the_files_the_run_writes(dataset, clip_tokenizer, tmp_path):
    backend = DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0))
    plan = make_plan(backend, dataset, CONFIG, runs_root=tmp_path / "runs", output_name="style", warmup_steps=0)
    result = train_lora(backend, dataset, CONFIG, runs_root=tmp_path / "runs", output_name="style")
    epoch_file = result.epoch_files[1].stat().st_size
    assert abs(plan.disk.epoch_file_bytes - epoch_file) <= 64 * 1024  # tensors exact; the header estimated
    assert plan.disk.files_in_run == plan.disk.files_published == 2
    resume = (result.run_dir / "resume.safetensors").stat().st_size
    assert resume == pytest.approx(plan.disk.resume_bytes, rel=0.2)
    assert plan.disk.free_bytes is not None and plan.disk.free_bytes > 0


@pytest.mark.slow
def test_the_warm_up_estimate_is_within_a_quarter_of_the_runs_measured_peak(dataset, pretrained_tiny, tmp_path):
    backend = DiffusersBackend(pretrained_tiny)
    before = {k: v.clone() for k, v in pretrained_tiny.unet.state_dict().items()}
    plan = make_plan(backend, dataset, CONFIG, runs_root=tmp_path / "runs", output_name="style")
    assert not (tmp_path / "runs").exists()  # the warm-up trains in a scratch folder it removes
    after = pretrained_tiny.unet.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
    probe = plan.probe
    assert len(probe.step_seconds) == 3 and probe.saved_bytes > 0 and probe.trainable_bytes > 0
    assert plan.seconds_per_step() > 0 and plan.free_memory > 0 and plan.fits() is True

    measured = {}

    def watch(info):
        measured["peak"] = max(measured.get("peak", 0), memory_meter.peak_bytes(backend.device))

    def start(*_):
        memory_meter.reset_peak(backend.device)

    train_lora(backend, dataset, CONFIG, runs_root=tmp_path / "real", output_name="style",
               callbacks=TrainCallbacks(on_start=start, on_epoch=watch))
    estimate = plan.estimated_peak()
    assert estimate == pytest.approx(measured["peak"], rel=0.25), (estimate, measured)
    text = plan.to_text()
    assert "4 images x 2 repeats = 8 per epoch; batch 2 -> 4 steps per epoch, 8 steps in 2 epochs" in text
    assert "[!!] 4 images (the guide: 30-100)" in text and "memory on cpu: about" in text and "s/step" in text


def test_out_of_memory_in_the_warm_up_says_it_does_not_fit_and_what_to_change(dataset, clip_tokenizer, tmp_path,
                                                                              monkeypatch):
    backend = DiffusersBackend(build_tiny_sd15(clip_tokenizer, seed=0))

    def no_memory(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(backend, "predict", no_memory)
    plan = make_plan(backend, dataset, CONFIG, runs_root=tmp_path / "runs", output_name="style")
    assert plan.fits() is False
    text = plan.to_text()
    assert "does not fit on cpu" in text and "enable gradient checkpointing" in text and "batch size 1" in text


def test_the_peak_is_the_largest_moment_and_fits_counts_from_what_was_held_at_the_start(tmp_path):
    """Stepping (held once set up + LoRA state + activations x 1.5), setting up (half-precision copies beside
    the originals, latent caching: bf16's peak) or the model as loaded (where the run ends)."""
    from style_lora_trainer.style_lora_engine.trainer import StepProbe
    from style_lora_trainer.style_lora_engine.training_plan import TRANSIENT_FACTOR, PlanCounts, TrainingPlan

    gib = 2**30
    counts = PlanCounts(images=30, repeats=10, epochs=20, batch_size=1, processes=1, steps_per_epoch=300,
                        total_steps=6000)
    probe = StepProbe(steps=3, saved_bytes=gib, step_seconds=[2.0, 1.0, 1.2], trainable_bytes=gib // 4,
                      before_setup_bytes=4 * gib, setup_peak_bytes=5 * gib, held_before_steps=3 * gib)
    plan = TrainingPlan(counts=counts, checks=[], device="cpu", probe=probe, free_memory=2 * gib, held_at_start=4 * gib)
    stepping = int(3 * gib + gib // 4 + TRANSIENT_FACTOR * gib)
    assert plan.stepping_peak() == stepping < 5 * gib
    assert plan.estimated_peak() == 5 * gib  # the set-up's peak
    assert "while setting up" in plan.to_text() and plan.seconds_per_step() == pytest.approx(1.1)
    assert plan.fits() is True  # 5 GiB - the 4 GiB held at the start <= 2 GiB free
    plan.free_memory = gib // 2
    assert plan.fits() is False
    probe.setup_peak_bytes, probe.before_setup_bytes = 3 * gib, 2 * gib
    assert plan.estimated_peak() == stepping and "while setting up" not in plan.to_text()
