"""TrainLoRA: a thin adapter from widgets to ``style_lora_engine.trainer.train_lora``."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from ..canvas_server.training_history import HISTORY
from ..integration import events, host, paths, previews, progress
from ..integration.images import pil_to_image
from ..integration.socket_types import CATEGORY, DATASET, RUN, SAMPLES, TRAIN_OPTIONS
from ..style_lora_engine import memory_meter
from ..style_lora_engine.config import (
    LR_SCHEDULERS,
    MIXED_PRECISIONS,
    OPTIMIZERS,
    PRESET_NAMES,
    PRESETS,
    TrainConfig,
    TrainOptions,
    apply_preset,
    check_text,
)
from ..style_lora_engine.dataset import Dataset
from ..style_lora_engine.errors import ConfigError
from ..style_lora_engine.grid import plot_loss
from ..style_lora_engine.lora_file import explain_sanitized_name
from ..style_lora_engine.sample_settings import SampleSettings
from ..style_lora_engine.trainer import (
    EpochInfo,
    SampleHook,
    StepInfo,
    TrainCallbacks,
    TrainResult,
    ValidationInfo,
    train_lora,
)
from ..style_lora_engine.training_plan import make_plan

log = logging.getLogger("style_lora_trainer")


def format_status(info: StepInfo) -> str:
    eta = int(info.eta_seconds)
    return (f"epoch {info.epoch}/{info.num_epochs} · step {info.global_step}/{info.total_steps} · "
            f"loss {info.loss:.4f} · d·lr {info.dlr:.2e} · ETA {eta // 60}:{eta % 60:02d}")


def step_payload(info: StepInfo, node_id: str | None, run: str | None = None) -> dict[str, Any]:
    """Payload of the train-step server event (``canvas_contract.EVENT_STEP``, docs/CANVAS.md)."""
    return {"node": node_id, "run": run, "epoch": info.epoch, "num_epochs": info.num_epochs,
            "step": info.global_step, "total_steps": info.total_steps,
            "step_in_epoch": info.step_in_epoch, "steps_per_epoch": info.steps_per_epoch,
            "loss": info.loss, "lr": info.lr, "dlr": info.dlr, "eta_seconds": info.eta_seconds}


def summarize(result: TrainResult) -> str:
    cfg = result.config
    lines = [
        f"Run folder: {result.run_dir}",
        f"{len(result.epoch_files)} epoch file(s): {', '.join(p.name for _, p in sorted(result.epoch_files.items()))}",
        f"rank {cfg.rank} / alpha {cfg.alpha:g} · {cfg.optimizer} lr {cfg.learning_rate:g} · "
        f"{cfg.lr_scheduler} · {cfg.epochs} epochs × {result.steps_per_epoch} steps",
    ]
    if result.resumed_from_epoch:
        lines.append(f"Resumed after epoch {result.resumed_from_epoch}.")
    if result.losses:
        lines.append(f"Final loss {result.losses[-1]:.4f}; last d·lr {result.dlrs[-1]:.3e}")
    lines.extend(validation_lines(result))
    timing = [f"training {result.training_seconds:.0f} s"]
    if result.validation_seconds:
        timing.append(f"validation {result.validation_seconds:.0f} s")
    if result.sampling_seconds:
        timing.append(f"sampling {result.sampling_seconds:.0f} s")
    if result.training_seconds:
        lines.append("Time this session: " + ", ".join(timing))
    return "\n".join(lines)


def validation_lines(result: TrainResult) -> list[str]:
    """The validation losses per epoch and the lowest, saying what they are measured on."""
    if not result.validation:
        return []
    values = {epoch: loss for epoch, _, loss in result.validation}
    trained = {e: v for e, v in values.items() if e > 0}
    lines = [f"Validation loss on {result.validation_source}: "
             + ", ".join(f"{'base' if e == 0 else e}: {v:.4f}" for e, v in sorted(values.items()))]
    if trained:
        best = min(sorted(trained), key=lambda e: (trained[e], -e))  # ties go to the later epoch
        lines.append(f"Lowest validation loss: epoch {best} ({trained[best]:.4f}). It measures how well the LoRA "
                     "denoises these images, not how the style looks: check it in the Epoch × Weight Grid.")
    return lines


def train_config(*, preset: str, rank: int, alpha: float, optimizer: str, learning_rate: float, lr_scheduler: str,
                 lr_warmup_steps: int, epochs: int, batch_size: int, seed: int, mixed_precision: str,
                 gradient_checkpointing: bool, cache_latents: bool, options: TrainOptions | None = None,
                 **_other_widgets: Any) -> TrainConfig:
    """The engine's config from Train LoRA's widgets (a guide preset applied), checked."""
    config = TrainConfig(rank=rank, alpha=alpha, optimizer=optimizer, learning_rate=learning_rate,
                         lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps, epochs=epochs,
                         batch_size=batch_size, seed=seed, mixed_precision=mixed_precision,
                         gradient_checkpointing=gradient_checkpointing, cache_latents=cache_latents,
                         options=TrainOptions() if options is None else options)
    return apply_preset(config, preset).validate()


class StyleLoRATrain:
    DESCRIPTION = ("Trains a U-Net-only style LoRA in-process (peft), saving every epoch as its own kohya-format "
                   "file. Defaults follow the guide: rank 32 / alpha 16, DAdapt-AdamW at lr 1.0, 20 epochs. "
                   "Stop keeps finished epochs; queueing the same settings again resumes.")
    CATEGORY = CATEGORY
    FUNCTION = "train"
    RETURN_TYPES = (RUN, "IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("run", "loss_plot", "summary", "plan")
    OUTPUT_TOOLTIPS = ("The run: its epoch files, for Save Epochs and the grid.", "Loss per step, with d·lr.",
                       "What was trained, the validation losses and the time it took.",
                       "The pre-flight plan (steps, the guide's checks, disk, free memory) and the peak memory "
                       "measured while training. The panel shows the plan before Queue, with a measured warm-up.")
    OUTPUT_NODE = True
    # The canvas plan builds the config the way train() does (canvas_server/plan_inputs.py).
    config_from_widgets = staticmethod(train_config)

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        d = TrainConfig()
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "dataset": (DATASET,),
                "preset": (list(PRESET_NAMES), {"default": PRESET_NAMES[0], "tooltip":
                           "A guide preset overrides rank, alpha, optimizer and learning rate; "
                           "choose 'custom' to use the widgets below."}),
                "output_name": ("STRING", {"default": "my_style"}),
                "rank": ("INT", {"default": d.rank, "min": 1, "max": 256}),
                "alpha": ("FLOAT", {"default": d.alpha, "min": 0.01, "max": 256.0, "step": 0.5}),
                "optimizer": (list(OPTIMIZERS), {"default": d.optimizer}),
                "learning_rate": ("FLOAT", {"default": d.learning_rate, "min": 1e-7, "max": 10.0, "step": 1e-6,
                                            "round": False, "tooltip": "DAdapt/Prodigy: 1.0. AdamW: ~1e-4."}),
                "lr_scheduler": (list(LR_SCHEDULERS), {"default": d.lr_scheduler}),
                "lr_warmup_steps": ("INT", {"default": 0, "min": 0, "max": 100000}),
                "epochs": ("INT", {"default": d.epochs, "min": 1, "max": 1000}),
                "batch_size": ("INT", {"default": d.batch_size, "min": 1, "max": 64}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": False}),
                "mixed_precision": (list(MIXED_PRECISIONS), {"default": d.mixed_precision}),
                "gradient_checkpointing": ("BOOLEAN", {"default": d.gradient_checkpointing}),
                "cache_latents": ("BOOLEAN", {"default": d.cache_latents}),
            },
            "optional": {
                "training_comment": ("STRING", {"default": "", "multiline": True}),
                "options": (TRAIN_OPTIONS, {"tooltip": "kohya's advanced options from a Train Options node "
                                            "(min-SNR, noise offset, masked loss, LoCon, DoRA, ...)."}),
                "samples": (SAMPLES, {"tooltip": "Sample images while training, from a Training Samples node: "
                                      "ComfyUI's KSampler on the saved epochs, shown in the panel."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model: Any, clip: Any, vae: Any, dataset: Dataset, preset: str, output_name: str,
              rank: int, alpha: float, optimizer: str, learning_rate: float, lr_scheduler: str,
              lr_warmup_steps: int, epochs: int, batch_size: int, seed: int, mixed_precision: str,
              gradient_checkpointing: bool, cache_latents: bool, training_comment: str = "",
              options: TrainOptions | None = None, samples: SampleSettings | None = None,
              unique_id: str | None = None) -> dict[str, Any]:
        config = train_config(preset=preset, rank=rank, alpha=alpha, optimizer=optimizer, learning_rate=learning_rate,
                              lr_scheduler=lr_scheduler, lr_warmup_steps=lr_warmup_steps, epochs=epochs,
                              batch_size=batch_size, seed=seed, mixed_precision=mixed_precision,
                              gradient_checkpointing=gradient_checkpointing, cache_latents=cache_latents,
                              options=options)
        if samples is not None and not isinstance(samples, SampleSettings):
            raise ConfigError(f"samples must come from a Training Samples node, got {type(samples).__name__}.")
        name, name_note = explain_sanitized_name(output_name, "output_name")
        if name_note:
            log.warning("Style LoRA Train: output_name %s", name_note)
        training_comment = check_text("" if training_comment is None else training_comment, "training_comment")
        backend = host.training_backend(model, clip, vae)
        # The plan's arithmetic, the guide's checks and the disk it needs, in ComfyUI's log before any step
        # (the panel's Measure and the headless --plan add the measured warm-up).
        plan = make_plan(backend, dataset, config, runs_root=paths.runs_dir(), output_name=name, warmup_steps=0)
        plan.free_memory = memory_meter.free_bytes(backend.device)
        plan_text = plan.to_text()
        log.info("Style LoRA Train: %s", plan_text)
        node_id = str(unique_id) if unique_id is not None else None
        bar = progress.Progress(config.epochs, node_id)

        run_id = uuid.uuid4().hex[:12]
        node_key = node_id or "?"
        started = False

        def begin(total_steps: int, steps_per_epoch: int, start_step: int) -> None:
            nonlocal started
            started = True
            HISTORY.start(node_key, run_id, total_steps=total_steps, num_epochs=config.epochs,
                          steps_per_epoch=steps_per_epoch, start_step=start_step)
            events.send_event(events.EVENT_START, {
                "node": node_id, "run": run_id, "total_steps": total_steps, "num_epochs": config.epochs,
                "steps_per_epoch": steps_per_epoch, "start_step": start_step})

        def on_step(info: StepInfo) -> None:
            if not started:
                begin(info.total_steps, info.steps_per_epoch, info.global_step - 1)
            progress.check_interrupt()  # Stop takes effect within one step
            bar.update_absolute(info.global_step, info.total_steps)
            events.send_status_text(format_status(info), node_id)
            HISTORY.step(node_key, run_id, step=info.global_step, epoch=info.epoch, loss=info.loss, lr=info.lr,
                         dlr=info.dlr, eta_seconds=info.eta_seconds)
            events.send_event(events.EVENT_STEP, step_payload(info, node_id, run_id))

        def on_epoch(info: EpochInfo) -> None:
            HISTORY.epoch(node_key, run_id, epoch=info.epoch, step=info.global_step, file=info.path.name,
                          mean_loss=info.mean_loss, validation_loss=info.validation_loss)
            events.send_event(events.EVENT_EPOCH, {
                "node": node_id, "run": run_id, "epoch": info.epoch, "num_epochs": info.num_epochs,
                "step": info.global_step, "file": info.path.name, "mean_loss": info.mean_loss,
                "validation_loss": info.validation_loss})

        def on_validation(info: ValidationInfo) -> None:
            HISTORY.validation(node_key, run_id, epoch=info.epoch, step=info.global_step, loss=info.loss,
                               source=info.source)
            events.send_event(events.EVENT_VALIDATION, {
                "node": node_id, "run": run_id, "epoch": info.epoch, "step": info.global_step,
                "validation_loss": info.loss, "source": info.source})

        shown: list[dict[str, Any]] = []

        def render_samples(epoch: int, lora_path: Any) -> None:
            progress.check_interrupt()
            began = time.perf_counter()
            rendered = host.render_samples(model, clip, vae, lora_path, list(samples.weights),
                                           list(samples.prompts), **samples.render_kwargs())
            cells = [{"weight": weight, "images": previews.save_temp_images(images, f"{name}_e{epoch:03d}")}
                     for weight, images in rendered]
            sample = {"epoch": epoch, "seconds": time.perf_counter() - began, "cells": cells,
                      "prompts": list(samples.prompts)}
            shown.append(sample)
            HISTORY.sample(node_key, run_id, sample)
            events.send_event(events.EVENT_SAMPLE, {"node": node_id, "run": run_id, **sample})
            last = rendered[-1][1]
            if last:  # ComfyUI's own preview on the node (API clients get it as a preview image)
                bar.update_absolute(max(epoch, 0), config.epochs, preview=last[0])

        sampler = (SampleHook(render=render_samples, every_n_epochs=samples.every_n_epochs,
                              include_base=samples.include_base) if samples is not None else None)

        def on_end(state: str, message: str) -> None:
            if not started:  # ended before the first step (out of memory caching latents, nothing left to train)
                begin(0, 0, 0)
            HISTORY.end(node_key, run_id, state, message)
            events.send_event(events.EVENT_END, {"node": node_id, "run": run_id, "state": state,
                                                             "message": message})

        memory_meter.reset_peak(backend.device)
        try:
            result = train_lora(backend, dataset, config, runs_root=paths.runs_dir(), output_name=name,
                                callbacks=TrainCallbacks(on_step=on_step, on_epoch=on_epoch, on_message=log.info,
                                                         on_start=begin, on_validation=on_validation,
                                                         sampler=sampler),
                                training_comment=training_comment)
        except BaseException as exc:  # ComfyUI's Stop is a BaseException; re-raised unchanged
            stopped = progress.is_interrupt(exc)
            on_end("stopped" if stopped else "failed", "Stopped; finished epochs are kept." if stopped else str(exc))
            raise
        on_end("finished", f"{len(result.epoch_files)} epoch file(s) in {result.run_dir}")
        peak = memory_meter.peak_bytes(backend.device)
        if peak is not None:
            plan_text += f"\n  measured while training on {backend.device}: {peak / 2**30:.2f} GiB at the peak"
        plot = plot_loss(result.losses, epoch_steps=result.epoch_end_steps, dlr=result.dlrs,
                         title=f"{name}: loss per step",
                         path=result.run_dir / "loss.png" if result.is_main_process else None)
        summary = summarize(result)
        if preset in PRESETS:
            summary += f"\nPreset: {preset}"
        if name_note:
            summary += f"\noutput_name: {name_note}"
        ui: dict[str, Any] = {"text": [summary]}
        if shown:
            ui["style_lora_samples"] = shown
        return {"ui": ui, "result": (result, pil_to_image(plot), summary, plan_text)}
