"""The pre-flight plan: what a run will do and need, before it runs.

The arithmetic (images × repeats → steps per epoch and in all), the guide's checks, the disk its files
take, and a measured warm-up: the run is set up exactly as for training (latents cached, LoRA on the
U-Net, the optimizer) in a scratch folder, a few steps are taken and measured, and nothing is kept. Its
memory figures are counted, not guessed: what the device holds once set up, the tensors autograd saves
for a step's backward (activations, counted by a saved-tensor hook), the gradients and optimizer state,
and the copy of the LoRA and optimizer state an epoch's end takes for the resume file.
"""

from __future__ import annotations

import math
import shutil
import statistics
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import memory_meter
from .backend import TrainingBackend
from .config import TrainConfig
from .data_parallel import SINGLE_PROCESS, DataParallel
from .dataset import Dataset
from .errors import StyleLoRAError
from .lora_file import select_epochs
from .memory_advice import out_of_memory_advice
from .trainer import StepProbe, TrainCallbacks, steps_per_epoch, train_lora

GUIDE_IMAGES = (30, 100)
GUIDE_REPEATS = (8, 20)
GUIDE_EPOCHS = 20
# A step's peak holds more than the tensors autograd saved: the gradients flowing back through each layer
# and the kernels' scratch. On this project's CPU benchmark (SD1.5 U-Net, 256 px, batch 1) the measured
# (peak - held - LoRA state) / saved tensors was 1.9 in fp32 and 1.4 in bf16; 1.5 keeps every setting of
# both hosts within 10 % of the measured peak (docs/benchmarks.md, "The pre-flight plan's memory estimate").
TRANSIENT_FACTOR = 1.5
WARMUP_STEPS = 3


@dataclass(frozen=True)
class PlanCounts:
    images: int
    repeats: int
    epochs: int
    batch_size: int  # per process
    processes: int
    steps_per_epoch: int
    total_steps: int

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.processes


def plan_counts(dataset: Dataset, config: TrainConfig, parallel: DataParallel = SINGLE_PROCESS) -> PlanCounts:
    spe = steps_per_epoch(dataset, parallel.global_batch_size(config.batch_size))
    return PlanCounts(images=len(dataset.items), repeats=dataset.repeats, epochs=config.epochs,
                      batch_size=config.batch_size, processes=parallel.world_size, steps_per_epoch=spe,
                      total_steps=spe * config.epochs)


def guide_checks(counts: PlanCounts) -> list[tuple[bool, str]]:
    """(as the guide says, text) for the guide's numbers: 30-100 images, ~10 repeats (8-20), 20 epochs."""
    low, high = GUIDE_IMAGES
    checks = [(low <= counts.images <= high, f"{counts.images} images (the guide: {low}-{high})")]
    low, high = GUIDE_REPEATS
    checks.append((low <= counts.repeats <= high, f"repeats {counts.repeats} (the guide: about 10, {low}-{high})"))
    checks.append((counts.epochs == GUIDE_EPOCHS, f"{counts.epochs} epochs (the guide: {GUIDE_EPOCHS}, each saved)"))
    return checks


@dataclass(frozen=True)
class DiskNeed:
    epoch_file_bytes: int  # one epoch's LoRA file
    files_in_run: int  # every epoch, in the run folder
    files_published: int  # Save Epochs' copies in the loras folder
    resume_bytes: int  # the run's resume state (LoRA + optimizer state, fp32)
    free_bytes: int | None

    @property
    def total(self) -> int:
        return self.epoch_file_bytes * (self.files_in_run + self.files_published) + self.resume_bytes


@dataclass
class TrainingPlan:
    counts: PlanCounts
    checks: list[tuple[bool, str]]
    device: str
    disk: DiskNeed | None = None
    probe: StepProbe | None = None
    free_memory: int | None = None
    advice: list[str] = field(default_factory=list)
    failed: str = ""  # the warm-up's error (out of memory), when it could not run
    held_at_start: int | None = None  # what the device held when ``free_memory`` was read
    notes: list[str] = field(default_factory=list)  # lines after the counts (the model the plan is for)
    memory_note: str = ""  # what to do for the memory figures when there is no warm-up

    def estimated_peak(self) -> int | None:
        """Peak memory of the whole run on the device: what it holds once set up, plus the larger of a step's
        gradients, optimizer state and activations (saved tensors x TRANSIENT_FACTOR) and the epoch end's copy
        of the LoRA and optimizer state for the resume file; or the set-up's own peak (the frozen weights'
        half-precision copies made beside the originals, the VAE caching latents), or the model as loaded
        (the run ends with the user's weights back), when either is larger."""
        probe = self.probe
        if probe is None or probe.held_before_steps is None:
            return None
        return int(max(self.stepping_peak() or 0, probe.setup_peak_bytes or 0, probe.before_setup_bytes or 0))

    def stepping_peak(self) -> int | None:
        probe = self.probe
        if probe is None or probe.held_before_steps is None:
            return None
        step = probe.trainable_bytes + TRANSIENT_FACTOR * probe.saved_bytes
        epoch_end = probe.trainable_bytes  # weights + optimizer state copied; no gradients then
        return int(probe.held_before_steps + max(step, epoch_end))

    def seconds_per_step(self) -> float | None:
        if self.probe is None or len(self.probe.step_seconds) < 2:
            return None
        return statistics.median(self.probe.step_seconds[1:])  # the first step warms kernels up

    def fits(self) -> bool | None:
        """Whether the peak fits in the memory that was free when the plan began (beside what was held then:
        the loaded model headless; nothing of the model in the canvas, whose warm-up loads it)."""
        peak = self.estimated_peak()
        if self.failed:
            return False
        if peak is None or self.free_memory is None or self.held_at_start is None:
            return None
        return peak - self.held_at_start <= self.free_memory

    def to_text(self) -> str:
        c = self.counts
        lines = ["Pre-flight plan",
                 f"  {c.images} images x {c.repeats} repeats = {c.images * c.repeats} per epoch; batch {c.batch_size}"
                 + (f" x {c.processes} processes = {c.global_batch}" if c.processes > 1 else "")
                 + f" -> {c.steps_per_epoch} steps per epoch, {c.total_steps} steps in {c.epochs} epochs"]
        lines += [f"  [{'ok' if ok else '!!'}] {text}" for ok, text in self.checks]
        lines += [f"  {note}" for note in self.notes]
        if self.disk is not None:
            d = self.disk
            free = f"; {_size(d.free_bytes)} free there" if d.free_bytes is not None else ""
            lines.append(f"  disk: {_size(d.total)} ({d.files_in_run} epoch files of {_size(d.epoch_file_bytes)} in the "
                         f"run folder, {d.files_published} copies in loras/, resume state {_size(d.resume_bytes)}){free}")
        peak = self.estimated_peak()
        if self.failed:
            lines.append(f"  memory: does not fit on {self.device}: {self.failed}")
        elif peak is not None and self.probe is not None:
            p = self.probe
            free = f"; {_size(self.free_memory)} free now" if self.free_memory is not None else ""
            parts = (f"set up {_size(p.held_before_steps)}, LoRA + gradients + optimizer {_size(p.trainable_bytes)}, "
                     f"activations {_size(TRANSIENT_FACTOR * p.saved_bytes)}")
            stepping = self.stepping_peak() or 0
            if max(p.setup_peak_bytes or 0, p.before_setup_bytes or 0) > stepping:
                what = (f"while setting up (the model as loaded, weight copies, latent caching); the steps need "
                        f"{_size(stepping)} ({parts})")
            else:
                what = f"({parts})"
            lines.append(f"  memory on {self.device}: about {_size(peak)} at its peak {what}{free}")
            if p.peak_bytes is not None:
                lines.append(f"  measured in the warm-up: {_size(p.peak_bytes)} peak over {len(p.step_seconds)} steps")
            if self.fits() is False:
                lines.append("  it does not fit: " + "; ".join(self.advice))
        elif self.free_memory is not None or self.memory_note:
            free = f"{_size(self.free_memory)} free now" if self.free_memory is not None else "free memory unknown"
            lines.append(f"  memory on {self.device}: {free}" + (f"; {self.memory_note}" if self.memory_note else ""))
        per_step = self.seconds_per_step()
        if per_step is not None:
            total = per_step * c.total_steps
            lines.append(f"  time: {per_step:.2f} s/step (warm-up) -> about {_duration(total)} of training steps, "
                         "plus the validation loss and samples after each epoch")
        return "\n".join(lines)


def _size(n: float | None) -> str:
    if n is None:
        return "?"
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.0f} MiB"


def _duration(seconds: float) -> str:
    minutes = int(math.ceil(seconds / 60))
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def lora_parameter_count(unet: torch.nn.Module, config: TrainConfig) -> int:
    """The LoRA's parameters from the U-Net's own target layers: rank x (fan-in + fan-out) each."""
    from .lora_network import find_targets

    targets = find_targets(unet, config.options.conv_dim)
    modules = dict(unet.named_modules())
    params = 0
    for name in targets.modules:
        weight = modules[name].weight
        rank = int(config.options.conv_dim) if name in targets.conv_modules else config.rank
        params += rank * (weight.shape[1] * math.prod(weight.shape[2:]) + weight.shape[0])
    return params


def disk_need(unet: torch.nn.Module, config: TrainConfig, save_mode: str, save_n: int, where: Path) -> DiskNeed:
    """The files' sizes from the LoRA's own shapes (rank x (in + out) per module, in the save precision)."""
    return disk_need_for(lora_parameter_count(unet, config), config, save_mode, save_n, where)


def disk_need_for(params: int, config: TrainConfig, save_mode: str, save_n: int, where: Path) -> DiskNeed:
    """The files' sizes for a LoRA of ``params`` parameters (``checkpoint_header.lora_parameter_count`` before
    a model is loaded), and the free space where they go."""
    save_bytes = {"fp16": 2, "bf16": 2, "fp32": 4}[config.save_precision]
    header = 64 * 1024  # kohya's metadata and the tensor index (measured: 40-60 KiB)
    published = len(select_epochs(list(range(1, config.epochs + 1)), save_mode, save_n))
    free = None
    probe_dir = Path(where)
    while not probe_dir.exists() and probe_dir != probe_dir.parent:
        probe_dir = probe_dir.parent
    try:
        free = shutil.disk_usage(probe_dir).free
    except OSError:
        pass
    # The resume state: the LoRA in fp32 and DAdapt/Adam's state (about three fp32 copies).
    return DiskNeed(epoch_file_bytes=params * save_bytes + header, files_in_run=config.epochs,
                    files_published=published, resume_bytes=params * 4 * 4, free_bytes=free)


def make_plan(backend: TrainingBackend, dataset: Dataset, config: TrainConfig, *, runs_root: Path,
              output_name: str, save_mode: str = "all", save_n: int = 1, warmup_steps: int = WARMUP_STEPS,
              parallel: DataParallel = SINGLE_PROCESS) -> TrainingPlan:
    """The plan, with a measured warm-up of ``warmup_steps`` steps (0: the arithmetic and disk only)."""
    counts = plan_counts(dataset, config, parallel)
    plan = TrainingPlan(counts=counts, checks=guide_checks(counts), device=str(backend.device))
    plan.disk = disk_need(backend.lora_module(), config, save_mode, save_n, Path(runs_root))
    if warmup_steps <= 0:
        return plan
    plan.free_memory = memory_meter.free_bytes(backend.device)
    plan.held_at_start = memory_meter.held_bytes(backend.device)
    probe = StepProbe(steps=min(warmup_steps, counts.total_steps))
    scratch = Path(tempfile.mkdtemp(prefix="style_lora_plan-"))
    try:
        train_lora(backend, dataset, config, runs_root=scratch, output_name=output_name,
                   callbacks=TrainCallbacks(probe=probe))
        plan.probe = probe
    except StyleLoRAError as exc:
        if not isinstance(exc.__cause__, torch.OutOfMemoryError):
            raise
        plan.failed = str(exc)  # the trainer's message: what to change, in order, with what each saves
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if plan.fits() is False and not plan.failed:
        plan.advice = out_of_memory_advice(config, arch=backend.arch, resolution=dataset.resolution,
                                           dtype=torch.float32 if config.mixed_precision == "fp32" else torch.bfloat16)
    return plan
