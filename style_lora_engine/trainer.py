"""The training loop: one readable loop in the manner of diffusers' training examples.

Per run: cache latents, inject LoRA (peft) into the backend's U-Net, then for each epoch go
through every image ``repeats`` times in bucket-sized batches, shuffling captions per step.
After each epoch the validation loss is measured (``validation_loss.py``; also once before training,
epoch 0), the LoRA is written as its own kohya-format file (atomically) with that number in its
metadata, and the resume state is saved, so a crash or Stop keeps every finished epoch and a re-run
continues. A ``SampleHook`` may render samples of the base model (epoch 0) and of epoch files while the
run goes on; training is paused around it (``_paused_for_sampling``, under inference mode) so that the host samples the user's
own model exactly as after training, and the run's numbers do not change.

A finished epoch file is never rewritten. A kill between an epoch file and its resume state leaves
files the state does not cover: the re-run trains those epochs again from the state it has (to
rebuild the optimizer's state) and keeps their files as they are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import math
import random
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft.tuners.lora import LoraModel
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load_file

from . import cpu_heap, memory_meter
from .atomic import atomic_write_text, remove_stale_temp_files
from .backend import SampleGeometry, TrainingBackend, crop_geometry
from .captions import tag_frequency
from .config import TrainConfig, fingerprint
from .data_parallel import SINGLE_PROCESS, DataParallel
from .dataset import Dataset
from .errors import StyleLoRAError, TrainingStopped
from .folder_lock import FolderBusy, folder_lock
from .images import open_image_rgb, prepare_image
from .lora_file import build_metadata, epoch_file_name, kohya_bucket_info, list_epoch_files, save_lora_file
from .lora_keys import peft_to_kohya
from .lora_network import LoraExtras, build_lora_config, install_extras, lora_layers_detached
from .loss_functions import training_loss
from .loss_masks import prepare_mask
from .memory_advice import out_of_memory_advice
from .noise import draw_noise, draw_timesteps
from .optimizers import build_optimizer, describe_optimizer, effective_lr
from .resume_state import ResumeState, ResumeStateUnusable, ResumeWriter, load_resume_state
from .schedules import build_lr_scheduler
from .shuffle import ShuffleSettings, shuffle_caption
from .validation_loss import ValidationLoss

ADAPTER = "style_lora"
DORA_SUFFIX = ".dora_scale"  # resume-state keys of the DoRA magnitudes (LoraExtras.state_dict)
HISTORY_FILE = "history.json"


@dataclass(frozen=True)
class StepInfo:
    epoch: int
    num_epochs: int
    step_in_epoch: int
    steps_per_epoch: int
    global_step: int
    total_steps: int
    loss: float
    lr: float
    dlr: float
    seconds_per_step: float

    @property
    def eta_seconds(self) -> float:
        return (self.total_steps - self.global_step) * self.seconds_per_step


@dataclass(frozen=True)
class EpochInfo:
    epoch: int
    num_epochs: int
    global_step: int
    path: Path
    mean_loss: float
    validation_loss: float | None = None


@dataclass(frozen=True)
class ValidationInfo:
    epoch: int  # 0: before training
    global_step: int
    loss: float
    source: str  # ValidationSet.describe()


@dataclass(frozen=True)
class SampleHook:
    """Samples while training: ``render(epoch, lora_file)`` is called for epoch 0 (``lora_file`` None: the
    base model, when ``include_base``) and after every ``every_n_epochs``-th epoch (and the last) is saved.
    Training is paused around each call; its time is counted apart from training's."""

    render: Callable[[int, Path | None], None]
    every_n_epochs: int = 1
    include_base: bool = True

    def wants(self, epoch: int, num_epochs: int) -> bool:
        if epoch == 0:
            return self.include_base
        return epoch % self.every_n_epochs == 0 or epoch == num_epochs


@dataclass
class TrainCallbacks:
    """Hooks for progress and cancellation; any exception raised by a hook stops training cleanly."""

    on_step: Callable[[StepInfo], None] | None = None
    on_epoch: Callable[[EpochInfo], None] | None = None
    on_message: Callable[[str], None] | None = None
    # (total_steps, steps_per_epoch, start_step): once, before the epoch-0 validation and the first step.
    on_start: Callable[[int, int, int], None] | None = None
    on_validation: Callable[[ValidationInfo], None] | None = None
    sampler: SampleHook | None = None
    # A plan's warm-up: set up exactly as for training, ``probe.steps`` steps measured, nothing written.
    probe: StepProbe | None = None


@dataclass
class StepProbe:
    """What a plan's warm-up measures (``training_plan.py``); the trainer fills it in."""

    steps: int = 3
    saved_bytes: int = 0  # tensors autograd kept for the first step's backward (activations; not weights)
    step_seconds: list[float] = field(default_factory=list)
    trainable_bytes: int = 0  # LoRA weights + gradients + optimizer state
    before_setup_bytes: int | None = None  # the device's memory before set-up (the model as the host loaded it)
    setup_peak_bytes: int | None = None  # the device's peak while setting up (weight copies, latent caching)
    held_before_steps: int | None = None  # the device's memory once set up (weights, LoRA, latents)
    peak_bytes: int | None = None  # the device's peak during the steps


class _ProbeComplete(Exception):
    """The warm-up's steps are done: unwinds through the trainer's clean-up like a Stop."""


class _SavedTensorBytes(torch.autograd.graph.saved_tensors_hooks):
    """Counts the storage autograd saves for backward, leaving out the module's own weights and buffers."""

    def __init__(self, module: torch.nn.Module) -> None:
        own = {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}
        self.storages: dict[int, int] = {}

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in own:
                self.storages[storage.data_ptr()] = storage.nbytes()
            return tensor

        super().__init__(pack, lambda tensor: tensor)

    @property
    def total(self) -> int:
        return sum(self.storages.values())


@dataclass
class TrainResult:
    run_dir: Path
    output_name: str
    arch: str
    config: TrainConfig
    epoch_files: dict[int, Path]
    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    dlrs: list[float] = field(default_factory=list)
    epoch_end_steps: list[int] = field(default_factory=list)
    resumed_from_epoch: int = 0
    steps_per_epoch: int = 0
    # (epoch, global step, validation loss); epoch 0 is before training.
    validation: list[tuple[int, int, float]] = field(default_factory=list)
    validation_source: str = ""
    training_seconds: float = 0.0  # the steps only (this session), without validation and sampling
    validation_seconds: float = 0.0
    sampling_seconds: float = 0.0
    is_main_process: bool = True  # False in the other processes of a data-parallel run: they write nothing

    def validation_loss(self, epoch: int) -> float | None:
        return next((loss for e, _, loss in self.validation if e == epoch), None)


def resolve_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """'auto' is bf16 on GPUs that have it, fp16 on older GPUs and fp32 on CPU."""
    if mixed_precision == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[mixed_precision]


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch * 7919) % (2**63)


def plan_epoch(dataset: Dataset, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches (lists of item indices) for one epoch: every image ``repeats`` times, one bucket per
    batch (kohya's rule), order reproducible from (seed, epoch) without saved RNG state."""
    rng = random.Random(_epoch_seed(seed, epoch))
    batches: list[list[int]] = []
    for items in dataset.items_by_bucket().values():
        indices = [index for index in items for _ in range(dataset.repeats)]
        rng.shuffle(indices)
        batches.extend(indices[i : i + batch_size] for i in range(0, len(indices), batch_size))
    rng.shuffle(batches)
    return batches


def steps_per_epoch(dataset: Dataset, batch_size: int) -> int:
    return sum(math.ceil(n * dataset.repeats / batch_size) for n in dataset.bucket_counts().values())


def run_fingerprint(backend: TrainingBackend, dataset: Dataset, config: TrainConfig, output_name: str) -> str:
    """Identifies a run: same model, dataset, captions, shuffle and options → same run folder."""
    items = [
        (item.image_path.name, item.pixel_hash, item.caption, list(item.bucket)) for item in dataset.items
    ]
    shuffle = dataset.shuffle.__dict__ if dataset.shuffle else None
    if dataset.masks is not None and dataset.masks.source != "none":  # an edited mask is another run
        items.append(("masks", dataset.masks.source, [m.digest if m else None for m in dataset.masks.masks]))
    # A backend may name its weights more precisely than its display name (ComfyUI: checkpoint + a
    # digest of the weights and of upstream patches), so runs on different weights never resume each other.
    model_id = getattr(backend, "model_identity", None) or backend.model_name
    # Processes train one global batch of batch_size x processes: a run is what it trains, so a
    # 2-process run at batch 2 and a 1-process run at batch 4 are the same run (and resume each other).
    parallel = data_parallel_of(backend)
    if parallel.active:
        config = dataclasses.replace(config, batch_size=parallel.global_batch_size(config.batch_size))
    return fingerprint(config.to_json_dict(), items, dataset.repeats, dataset.resolution, shuffle,
                       backend.arch, model_id, output_name)


def data_parallel_of(backend: TrainingBackend) -> DataParallel:
    """The process group a backend trains in (the headless trainer under accelerate); one process else."""
    return getattr(backend, "data_parallel", None) or SINGLE_PROCESS


class _LatentSource:
    """Latents per item: encoded once up front (cache) or on demand each step."""

    def __init__(self, backend: TrainingBackend, dataset: Dataset, cache: bool, on_message,
                 masked: bool = False) -> None:
        self.backend, self.dataset, self.cache = backend, dataset, cache
        self._cached: dict[int, torch.Tensor] = {}
        # Masks at the bucket size (a few MB for a dataset); the loss averages them down to the latent.
        self._masks = ({i: prepare_mask(m, item.bucket)
                        for i, (item, m) in enumerate(zip(dataset.items, dataset.item_masks(), strict=True))}
                       if masked else None)
        if cache:
            if on_message:
                on_message(f"Caching latents of {len(dataset.items)} images")
            for indices in dataset.items_by_bucket().values():
                for start in range(0, len(indices), 8):
                    chunk = indices[start : start + 8]
                    latents = backend.encode_images(torch.stack([self._pixels(i) for i in chunk]))
                    self._cached.update(zip(chunk, latents, strict=True))

    def _pixels(self, index: int) -> torch.Tensor:
        item = self.dataset.items[index]
        return prepare_image(open_image_rgb(item.image_path), *item.bucket)

    def masks(self, indices: list[int]) -> torch.Tensor | None:
        """Loss masks [B,1,H,W] of the batch (pixel size; the loss resizes them), or None without masked loss."""
        return None if self._masks is None else torch.stack([self._masks[i] for i in indices])

    def batch(self, indices: list[int]) -> torch.Tensor:
        if self.cache:
            return torch.stack([self._cached[i] for i in indices])
        return self.backend.encode_images(torch.stack([self._pixels(i) for i in indices]))


def train_lora(
    backend: TrainingBackend,
    dataset: Dataset,
    config: TrainConfig,
    *,
    runs_root: Path,
    output_name: str,
    callbacks: TrainCallbacks | None = None,
    training_comment: str = "",
) -> TrainResult | None:
    """Train (or resume) a run; every finished epoch is a file in the run folder. With ``callbacks.probe``
    (a plan's warm-up) the result is None once the probe's steps are measured."""
    # Training needs autograd; hosts such as ComfyUI call nodes under torch.inference_mode().
    with torch.inference_mode(False):
        try:
            return _train_lora(backend, dataset, config, runs_root=runs_root, output_name=output_name,
                               callbacks=callbacks, training_comment=training_comment)
        except _ProbeComplete:
            return None


def _train_lora(
    backend: TrainingBackend,
    dataset: Dataset,
    config: TrainConfig,
    *,
    runs_root: Path,
    output_name: str,
    callbacks: TrainCallbacks | None,
    training_comment: str,
) -> TrainResult:
    config.validate()
    callbacks = callbacks or TrainCallbacks()
    run_id = run_fingerprint(backend, dataset, config, output_name)
    run_dir = Path(runs_root) / f"{output_name}-{run_id}"
    run_dir.mkdir(parents=True, exist_ok=True)
    parallel = data_parallel_of(backend)
    with contextlib.ExitStack() as stack:
        try:
            if parallel.is_main:  # the one writer; the other processes only read the folder
                stack.enter_context(folder_lock(run_dir))
        except FolderBusy:
            raise StyleLoRAError(
                f"Another training run is writing {run_dir} right now (the same settings and output name, from "
                "a second ComfyUI or a headless run on the same output folder). Wait for it to finish and "
                "queue again (this run then resumes from its epochs), or change output_name.") from None
        if parallel.is_main:
            remove_stale_temp_files(run_dir)  # a run killed mid-save (SIGKILL, power loss) left its temp file
            _remove_temp_files_of_idle_runs(Path(runs_root), run_dir)
        try:
            return _train_in_folder(backend, dataset, config, run_dir=run_dir, run_id=run_id,
                                    output_name=output_name, callbacks=callbacks,
                                    training_comment=training_comment)
        except (OSError, SafetensorError) as exc:
            raise StyleLoRAError(_write_failure_message(exc, run_dir, output_name)) from exc


def _remove_temp_files_of_idle_runs(runs_root: Path, current: Path) -> None:
    """Temp files that kills left in other run folders (other settings, older runs): only in folders no
    run holds now, under that folder's lock."""
    with contextlib.suppress(OSError):
        for folder in runs_root.iterdir():
            if folder == current or not folder.is_dir() or not any(folder.glob(".*.tmp")):
                continue
            with contextlib.suppress(FolderBusy, OSError), folder_lock(folder):
                remove_stale_temp_files(folder)


def _write_failure_message(exc: BaseException, run_dir: Path, output_name: str) -> str:
    text = str(exc)
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "os error 28" in text \
        or "No space left" in text
    finished = sorted(list_epoch_files(run_dir, output_name))
    if not finished:
        kept = f"No epoch had finished yet ({run_dir})"
    elif len(finished) == 1:
        kept = f"Finished epoch {finished[0]} is kept in {run_dir}"
    else:
        kept = f"Finished epochs {_epoch_list(finished)} are kept in {run_dir}"
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    if full:
        return (f"The disk is full: training could not write{where} {text}. {kept}. Free some space on the "
                "disk holding that folder and queue again: the run resumes after its last finished epoch.")
    return (f"Training could not read or write a file{where}: {text}. {kept}. Fix the cause (permissions, a "
            "removed disk) and queue again: the run resumes after its last finished epoch.")


def _epoch_list(epochs: list[int]) -> str:
    if len(epochs) > 2 and epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"{epochs[0]}-{epochs[-1]}"
    return ", ".join(str(e) for e in epochs)


def _usable_resume_state(run_dir: Path, run_id: str, say: Callable[[str], None]) -> ResumeState | None:
    try:
        return load_resume_state(run_dir, run_id)
    except ResumeStateUnusable as exc:
        say(f"The resume state in {run_dir} cannot be used: {exc}. Training starts again from epoch 1; "
            "epoch files already finished are kept as they are.")
        return None


def _train_in_folder(
    backend: TrainingBackend,
    dataset: Dataset,
    config: TrainConfig,
    *,
    run_dir: Path,
    run_id: str,
    output_name: str,
    callbacks: TrainCallbacks,
    training_comment: str,
) -> TrainResult:
    say = callbacks.on_message or (lambda _msg: None)
    parallel = data_parallel_of(backend)
    main = parallel.is_main
    if main:
        atomic_write_text(run_dir / "config.json", json.dumps(
            {"output_name": output_name, "arch": backend.arch, "model": backend.model_name,
             "config": config.to_json_dict(), "processes": parallel.world_size, "dataset": dataset.summary()},
            indent=2, default=str))

    per_process = config.batch_size
    global_batch = parallel.global_batch_size(per_process)
    spe = steps_per_epoch(dataset, global_batch)
    total_steps = spe * config.epochs
    result = TrainResult(run_dir, output_name, backend.arch, config, {}, steps_per_epoch=spe,
                         is_main_process=main)
    resume = _usable_resume_state(run_dir, run_id, say)
    done = resume.epoch if resume is not None else 0
    existing = {e: p for e, p in list_epoch_files(run_dir, output_name).items() if e <= config.epochs}
    parallel.same_everywhere([done, resume.global_step if resume else 0, len(existing)],
                             f"the resume point found in {run_dir}: every machine must see the same run "
                             "folder, so put --output-dir on a filesystem they share")
    if resume is not None:
        result.resumed_from_epoch = resume.epoch
        result.losses = list(resume.history.get("losses", []))
        result.lrs = list(resume.history.get("lrs", []))
        result.dlrs = list(resume.history.get("dlrs", []))
        result.epoch_end_steps = list(resume.history.get("epoch_end_steps", []))
        saved_source = resume.history.get("validation_set", "")
        current_source = dataset.validation_set().describe()
        if saved_source == current_source:
            result.validation = [(int(e), int(st), float(v)) for e, st, v in resume.history.get("validation", [])]
        elif saved_source:
            say(f"The validation set changed since the last session ({saved_source} → {current_source}): the "
                "earlier epochs' validation losses were measured on other images and are left out.")
    result.epoch_files = {e: p for e, p in existing.items() if e <= done}
    if all(e in existing for e in range(done + 1, config.epochs + 1)):
        result.epoch_files = dict(existing)
        say(f"All {config.epochs} epochs already trained in {run_dir}; nothing to do.")
        return result
    # Finished before their resume state was written (a kill then): trained again, files kept.
    kept = {e: p for e, p in existing.items() if e > done}
    if kept:
        say(f"Epoch(s) {_epoch_list(sorted(kept))} finished but the resume state covers epoch {done} only "
            f"(training was killed while it was written): training them again to rebuild the optimizer's "
            "state; their files are kept unchanged.")
    elif resume is not None:
        say(f"Resuming from epoch {resume.epoch} of {config.epochs} ({run_dir}).")

    if config.options.masked_loss:
        _check_masks(dataset, say)
    dtype = resolve_dtype(config.mixed_precision, backend.device)
    shuffle = dataset.shuffle or ShuffleSettings(enabled=False)
    unet = backend.lora_module()
    lora_config = build_lora_config(unet, config)  # kohya's module set (+ LoCon convs), raises if none

    if callbacks.probe is not None:
        # What the host holds before set-up (the model as loaded: training ends back there), and the set-up's
        # own peak (half-precision copies made, latents cached) below.
        callbacks.probe.before_setup_bytes = memory_meter.held_bytes(backend.device)
        memory_meter.reset_peak(backend.device)
    backend.begin_training(dtype=dtype, gradient_checkpointing=config.gradient_checkpointing)
    lora_model, lora_params, optimizer, extras = None, [], None, None
    resume_writer = ResumeWriter()
    try:
        latents = _LatentSource(backend, dataset, config.cache_latents, say, masked=config.options.masked_loss)
        # Measured (and its images encoded, while the VAE is here) by the main process only.
        validation = ValidationLoss(backend, dataset.validation_set(), config.seed) if main else None
        result.validation_source = dataset.validation_set().describe()
        if config.cache_latents and hasattr(backend, "latents_cached"):
            backend.latents_cached()  # the backend may free what only encoding needed
        torch.manual_seed(config.seed)  # peft's lora_A init draws from the global RNG
        lora_model = LoraModel(unet, lora_config, ADAPTER)
        lora_params = [p for n, p in unet.named_parameters() if "lora_" in n]
        for p in lora_params:
            p.requires_grad_(True)
        # LoRA weights train in fp32 whatever the U-Net dtype (diffusers' helper casts the trainable ones;
        # imported here: diffusers.training_utils pulls in accelerate, too slow for ComfyUI's start-up).
        from diffusers.training_utils import cast_training_params

        cast_training_params(unet, dtype=torch.float32)
        if dtype != torch.float32:
            # Under autocast peft's own cast of each LoRA layer's input to fp32 only makes copies (autocast
            # casts back to bf16/fp16 for the matmul, as in kohya's LoRA): one less per layer and step.
            for module in unet.modules():
                if isinstance(module, BaseTunerLayer):
                    module.cast_input_dtype_enabled = False
        noise_rng = torch.Generator().manual_seed(config.seed)
        # DoRA magnitudes and kohya's dropouts (options); the dropouts draw from noise_rng, which resume restores.
        extras = install_extras(unet, config, generator=noise_rng)
        lora_params = lora_params + extras.parameters
        optimizer = build_optimizer(lora_params, config)
        scheduler = build_lr_scheduler(optimizer, config.lr_scheduler,
                                       warmup_steps=config.lr_warmup_steps, total_steps=total_steps)
        global_step, start_epoch = 0, 1
        if resume is not None:
            saved = {k: v for k, v in resume.lora.items() if not k.endswith(DORA_SUFFIX)}
            set_peft_model_state_dict(unet, saved, adapter_name=ADAPTER)
            extras.load_state_dict({k: v for k, v in resume.lora.items() if k.endswith(DORA_SUFFIX)})
            optimizer.load_state_dict(resume.optimizer)
            scheduler.load_state_dict(resume.scheduler)
            noise_rng.set_state(resume.noise_rng)
            global_step, start_epoch = resume.global_step, resume.epoch + 1
        scaler = torch.amp.GradScaler(backend.device.type) if dtype == torch.float16 else None
        options = config.options
        alphas_cumprod = backend.alphas_cumprod()
        prediction_type = getattr(backend, "prediction_type", "epsilon")

        session_id = uuid.uuid4().hex
        started_at = time.time()
        if callbacks.on_start:
            callbacks.on_start(total_steps, spe, global_step)

        def pause_for_sampling():
            return _paused_for_sampling(backend, unet, dtype, config)

        def measure_validation(epoch: int) -> float:
            if validation is None:
                return math.nan
            began = time.perf_counter()
            value = validation.measure(unet)
            result.validation = [v for v in result.validation if v[0] != epoch] + [(epoch, global_step, value)]
            result.validation_seconds += time.perf_counter() - began
            if callbacks.on_validation:
                callbacks.on_validation(ValidationInfo(epoch, global_step, value, result.validation_source))
            return value

        def render_samples(epoch: int, path: Path | None) -> None:
            sampler = callbacks.sampler
            if sampler is None or not main or not sampler.wants(epoch, config.epochs):
                return
            began = time.perf_counter()
            with pause_for_sampling():
                sampler.render(epoch, path)
            result.sampling_seconds += time.perf_counter() - began

        probe = callbacks.probe
        if start_epoch == 1 and probe is None:
            # Before any step: the LoRA starts as a no-op (lora_B = 0), so this is the base model's value.
            measure_validation(0)
            render_samples(0, None)
        if probe is not None:
            probe.setup_peak_bytes = memory_meter.peak_bytes(backend.device)
            probe.held_before_steps = memory_meter.held_bytes(backend.device)
            memory_meter.reset_peak(backend.device)
        step_timer = time.perf_counter()
        per_step = 0.0
        # CPU: the steps' freed activations stay in the heap for the next step (no page faults each step).
        with cpu_heap.kept_between_steps(backend.device):
            for epoch in range(start_epoch, config.epochs + 1):
                epoch_losses: list[float] = []
                for step_in_epoch, batch in enumerate(plan_epoch(dataset, global_batch, config.seed, epoch), 1):
                    # With several processes every one draws the global batch's noise and timesteps (the same
                    # draws as one process would) and trains on its own slice of it (data_parallel.py).
                    batch_latents = latents.batch(batch)
                    # Noise first, then timesteps, all from noise_rng: the order runs and resumes depend on.
                    noise = draw_noise(batch_latents, noise_rng, options)
                    timesteps = draw_timesteps(len(batch), noise_rng, options, backend.num_train_timesteps)
                    mine = slice(parallel.rank * per_process, (parallel.rank + 1) * per_process)
                    local = batch[mine] if parallel.active else batch
                    counting = _SavedTensorBytes(unet) if probe is not None and not probe.step_seconds else None
                    if counting is not None:
                        counting.__enter__()
                    if local:
                        items = [dataset.items[i] for i in local]
                        captions = [shuffle_caption(item.caption, shuffle, global_step, i)
                                    for item, i in zip(items, local, strict=True)]
                        geometry: list[SampleGeometry] = [crop_geometry(it.width, it.height, it.bucket) for it in items]
                        if parallel.active:
                            batch_latents, noise = batch_latents[mine], noise[mine]
                            timesteps = timesteps[mine]
                        pred, target = backend.predict(batch_latents, noise, timesteps, captions, geometry)
                        loss = training_loss(pred, target, timesteps, options=options, alphas_cumprod=alphas_cumprod,
                                             prediction_type=prediction_type, mask=latents.masks(local))
                    if parallel.active:
                        # This slice's share of the global batch's mean loss; summed over processes it is that mean.
                        weight = len(local) / len(batch)
                        loss = loss * weight if local else torch.zeros((), device=backend.device)
                        global_loss = parallel.sum_(loss.detach().float().reshape(1).clone())[0]
                    else:
                        global_loss = loss.detach()
                    if not torch.isfinite(global_loss):
                        raise TrainingStopped(
                            f"The loss became {global_loss.item()} at epoch {epoch}, step {step_in_epoch}. Epochs "
                            f"1-{epoch - 1} are saved in {run_dir}. Fixes: use constant LR with warmup "
                            f"(e.g. 5% of steps), lower the learning rate, or train in fp32/bf16 instead of fp16."
                        )
                    if counting is not None:
                        counting.__exit__(None, None, None)
                        probe.saved_bytes = counting.total
                    if local:
                        (scaler.scale(loss) if scaler is not None else loss).backward()
                    parallel.sum_gradients_(lora_params)  # DDP's all-reduce, before unscaling and clipping
                    if scaler is not None:
                        scaler.unscale_(optimizer)
                    if config.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(lora_params, config.max_grad_norm)
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    global_step += 1
                    lr, dlr = effective_lr(optimizer)
                    value = float(global_loss)
                    epoch_losses.append(value)
                    result.losses.append(value)
                    result.lrs.append(lr)
                    result.dlrs.append(dlr)
                    now = time.perf_counter()
                    elapsed, step_timer = now - step_timer, now
                    result.training_seconds += elapsed
                    per_step = elapsed if per_step == 0 else 0.9 * per_step + 0.1 * elapsed
                    if probe is not None:
                        probe.step_seconds.append(elapsed)
                        if len(probe.step_seconds) >= probe.steps:
                            probe.peak_bytes = memory_meter.peak_bytes(backend.device)
                            probe.trainable_bytes = 2 * sum(p.numel() * p.element_size() for p in lora_params) + sum(
                                v.numel() * v.element_size() for state in optimizer.state.values()
                                for v in state.values() if isinstance(v, torch.Tensor))
                            raise _ProbeComplete
                    if callbacks.on_step:
                        callbacks.on_step(StepInfo(epoch, config.epochs, step_in_epoch, spe, global_step,
                                                   total_steps, value, lr, dlr, per_step))

                result.epoch_end_steps.append(global_step)
                mean_loss = sum(epoch_losses) / max(1, len(epoch_losses))
                validation_loss = measure_validation(epoch)
                path = run_dir / epoch_file_name(output_name, epoch)
                if not main:  # the main process writes the epoch file and the resume state
                    result.epoch_files[epoch] = path
                    step_timer = time.perf_counter()
                    continue
                peft_state = get_peft_model_state_dict(unet, adapter_name=ADAPTER)
                tensors = _kohya_tensors(peft_state, extras, backend, config)
                peft_state.update(extras.state_dict())  # DoRA magnitudes resume with the LoRA weights
                if epoch in kept and path.is_file():
                    say(_kept_epoch_message(path, tensors))
                else:
                    metadata = _metadata(backend, dataset, config, shuffle, output_name, epoch, global_step, spe,
                                         training_comment, session_id, started_at, dtype)
                    metadata.update(_epoch_numbers(result, validation, epoch, mean_loss))
                    save_lora_file(path, tensors, metadata)
                # The epoch file is written here (the canvas shows it at once); the resume state, hundreds of MB
                # of optimizer state, is snapshotted here and written while the next epoch trains.
                resume_writer.submit(run_dir, ResumeState(
                    fingerprint=run_id, epoch=epoch, global_step=global_step, lora=peft_state,
                    optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict(),
                    noise_rng=noise_rng.get_state(),
                    history={"losses": result.losses, "lrs": result.lrs, "dlrs": result.dlrs,
                             "epoch_end_steps": result.epoch_end_steps,
                             "validation": [list(v) for v in result.validation],
                             "validation_set": result.validation_source},
                ))
                result.epoch_files[epoch] = path
                say(f"Epoch {epoch}/{config.epochs} saved: {path.name} (mean loss {mean_loss:.4f}, validation loss "
                    f"{validation_loss:.4f})")
                if callbacks.on_epoch:
                    callbacks.on_epoch(EpochInfo(epoch, config.epochs, global_step, path, mean_loss, validation_loss))
                render_samples(epoch, path)
                cpu_heap.trim()  # what validation, saving and sampling freed goes back before the next epoch
                step_timer = time.perf_counter()  # validation, saving and sampling are not a step's time
        resume_writer.wait()
        parallel.barrier()  # every process returns once the last epoch's file and state are written
    except torch.OutOfMemoryError as exc:
        advice = out_of_memory_advice(
            config, arch=backend.arch, resolution=dataset.resolution, dtype=dtype,
            frozen=[p for p in unet.parameters() if not p.requires_grad], lora_params=lora_params,
            optimizer=optimizer)
        steps = "; ".join(f"{i}. {line}" for i, line in enumerate(advice, 1))
        raise StyleLoRAError(
            f"Out of memory while training ({exc}). Finished epochs are kept in {run_dir}. To fit, change in "
            f"this order: {steps}.") from exc
    finally:
        try:
            resume_writer.wait()  # a Stop or crash still leaves the last finished epoch's state complete
        except Exception as exc:  # noqa: BLE001  (the error that stopped training is the one to report)
            say(f"Could not write the resume state in {run_dir}: {exc}")
        finally:
            if extras is not None:
                extras.remove()  # DoRA and dropout hooks first: they sit on peft's layers
            if lora_model is not None:
                lora_model.unload()  # put the original layers back: the user's model is unchanged
            backend.end_training()
    return result


@contextlib.contextmanager
def _paused_for_sampling(backend: TrainingBackend, unet: torch.nn.Module, dtype: torch.dtype, config: TrainConfig):
    """Training set aside while a host samples: the LoRA layers detached, the backend's training state
    undone (the user's own weights, text encoder and VAE back, as after training) and redone afterwards;
    the global RNGs are forked so sampling's seeding does not reach training. The run then goes on exactly
    as without sampling (its draws come from the run's own generator)."""
    devices = [backend.device] if backend.device.type == "cuda" else []
    with lora_layers_detached(unet), torch.random.fork_rng(devices=devices):
        backend.end_training()
        try:
            # Hosts sample under inference mode (ComfyUI runs every node so; its weights may be inference
            # tensors, which autograd refuses). begin_training makes the U-Net's weights trainable again.
            with torch.inference_mode():
                yield
        finally:
            backend.begin_training(dtype=dtype, gradient_checkpointing=config.gradient_checkpointing)
            if config.cache_latents and hasattr(backend, "latents_cached"):
                backend.latents_cached()


def _epoch_numbers(result: TrainResult, validation: ValidationLoss, epoch: int, mean_loss: float) -> dict[str, str]:
    """The sweet-spot finder's numbers in an epoch file's metadata (``docs/kohya-metadata.md``)."""
    numbers = {"ss_epoch_mean_loss": repr(float(mean_loss)),
               "ss_validation_set": json.dumps(validation.to_json_dict())}
    value, base = result.validation_loss(epoch), result.validation_loss(0)
    if value is not None:
        numbers["ss_validation_loss"] = repr(float(value))
    if base is not None:
        numbers["ss_validation_loss_base"] = repr(float(base))
    return numbers


def _check_masks(dataset: Dataset, say: Callable[[str], None]) -> None:
    count = sum(1 for m in dataset.item_masks() if m is not None)
    if not count:
        raise StyleLoRAError(
            f"masked_loss is on but no image of {dataset.folder} has a mask. Set Load Dataset's masks to 'alpha "
            "channel' (PNG transparency marks what not to train) or 'masks folder' (a same-name image in "
            f"{dataset.folder / 'masks'}, white = train, black = ignore), or turn masked_loss off.")
    say(f"Masked loss: {count} of {len(dataset.items)} images have a mask ({dataset.masks.source}); "
        "the others train on the whole image.")


def _kept_epoch_message(path: Path, retrained: dict[str, torch.Tensor]) -> str:
    """Whether training the epoch again gave the kept file's weights (bit for bit on CPU; GPU kernels
    need not be deterministic), so the log says what the later epochs build on."""
    try:
        kept = load_file(str(path))
        same = kept.keys() == retrained.keys() and all(torch.equal(kept[k], retrained[k]) for k in kept)
    except (OSError, SafetensorError):
        same = False
    detail = "the same weights as before" if same else "weights that differ slightly from the kept file"
    return f"{path.name} is kept unchanged (training it again gave {detail})."


def _kohya_tensors(peft_state, extras: LoraExtras, backend: TrainingBackend,
                   config: TrainConfig) -> dict[str, torch.Tensor]:
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[config.save_precision]
    tensors = peft_to_kohya(peft_state, alpha=config.alpha, arch=backend.arch,
                            layers_per_block=backend.layers_per_block, source_naming=backend.naming, dtype=dtype,
                            conv_alpha=config.options.conv_alpha)
    tensors.update(extras.kohya_tensors(arch=backend.arch, layers_per_block=backend.layers_per_block,
                                        naming=backend.naming, dtype=dtype))
    return tensors


def _metadata(backend, dataset: Dataset, config: TrainConfig, shuffle: ShuffleSettings, output_name: str,
              epoch: int, steps: int, spe: int, comment: str, session_id: str, started_at: float,
              dtype: torch.dtype) -> dict:
    folder = dataset.folder.name
    res = dataset.resolution
    return build_metadata(
        config=config, arch=backend.arch, output_name=output_name, epoch=epoch, num_epochs=config.epochs,
        steps=steps, num_batches_per_epoch=spe, num_train_images=dataset.num_train_images(),
        dataset_dirs={f"{dataset.repeats}_{folder}": {"n_repeats": dataset.repeats,
                                                      "img_count": len(dataset.items)}},
        tag_frequency={f"{dataset.repeats}_{folder}": tag_frequency(dataset, shuffle.separator)},
        bucket_info=kohya_bucket_info(dataset), buckets=dataset.buckets, mixed_precision=dtype,
        max_token_length=getattr(backend, "max_token_length", None), dora_wd_on_output=False,
        shuffle_caption=shuffle.enabled, keep_tokens=shuffle.keep_tokens, caption_separator=shuffle.separator,
        resolution=(res, res), optimizer_repr=describe_optimizer(config), base_model_name=backend.model_name,
        training_comment=comment, session_id=session_id, started_at=started_at, seed=config.seed,
        prediction_type=getattr(backend, "prediction_type", "epsilon"),
        processes=data_parallel_of(backend).world_size,
    )
