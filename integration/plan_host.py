"""The canvas plan's ComfyUI side: which checkpoint a name is, the device and its free memory, whether a
prompt is running, and the measured warm-up on the checkpoint as Load Checkpoint gives it (the copy ComfyUI
holds from a run, else one loaded for it).

``canvas_server.plan`` asks these of a host object, so its tests hand in their own; this one is ComfyUI's.
"""

from __future__ import annotations

import gc
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from ..style_lora_engine import memory_meter
from ..style_lora_engine.config import TrainConfig
from ..style_lora_engine.dataset import Dataset
from ..style_lora_engine.errors import ConfigError
from ..style_lora_engine.training_plan import WARMUP_STEPS, TrainingPlan, make_plan
from . import comfy_modules, host, paths
from .held_checkpoint import find_held_checkpoint
from .prompt_hold import prompts_held_back


class ComfyPlanHost:
    def checkpoint_path(self, name: str) -> Path:
        """A Load Checkpoint name as a file; only names ComfyUI lists in its checkpoints folders."""
        folder_paths = comfy_modules.require_comfy_module("folder_paths")
        if name not in folder_paths.get_filename_list("checkpoints"):
            raise ConfigError(f"{name!r} is not in ComfyUI's checkpoints folder; pick a checkpoint in Load Checkpoint "
                              "(press R to refresh its list after adding files).")
        return Path(folder_paths.get_full_path_or_raise("checkpoints", name))

    def device(self) -> torch.device:
        mm = comfy_modules.comfy_module("comfy.model_management")
        return torch.device(mm.get_torch_device()) if mm is not None else torch.device("cpu")

    def free_memory(self) -> int | None:
        return memory_meter.free_bytes(self.device())

    def _prompt_queue(self) -> Any:
        server = comfy_modules.comfy_module("server")
        instance = getattr(getattr(server, "PromptServer", None), "instance", None)
        return getattr(instance, "prompt_queue", None)

    def busy(self) -> str | None:
        """Why a warm-up now would disturb ComfyUI (a prompt queued or running), or None."""
        queue = self._prompt_queue()
        remaining = queue.get_tasks_remaining() if queue is not None else 0
        if remaining:
            return (f"{remaining} prompt(s) are queued or running; measure when the queue is empty (the warm-up "
                    "would share the device with them and measure both).")
        return None

    def warm_up(self, checkpoint: str, dataset: Dataset, config: TrainConfig, *, output_name: str,
                save_mode: str, save_n: int) -> TrainingPlan:
        """The plan with its measured warm-up on ``checkpoint``: on Load Checkpoint's MODEL, CLIP and VAE of it
        that ComfyUI still holds from a run (what a queued Train LoRA would train on), else on a copy loaded
        as Load Checkpoint loads it and let go afterwards."""
        path = self.checkpoint_path(checkpoint)
        queue = self._prompt_queue()
        # Prompts queued meanwhile wait: the warm-up changes the models they would use, and offloads others.
        with prompts_held_back(queue) if queue is not None else nullcontext():
            return self._warm_up(path, checkpoint, dataset, config, output_name=output_name, save_mode=save_mode,
                                 save_n=save_n)

    def _warm_up(self, path: Path, checkpoint: str, dataset: Dataset, config: TrainConfig, *, output_name: str,
                 save_mode: str, save_n: int) -> TrainingPlan:
        gc.collect()  # only what something still holds
        held = find_held_checkpoint(path, gc.get_objects())
        if held is not None:
            model, clip, vae = held
            source = "warm-up on the model ComfyUI already holds for it (Load Checkpoint's output, as Queue uses it)"
        else:
            loader = comfy_modules.require_comfy_module("nodes").CheckpointLoaderSimple()
            model, clip, vae = loader.load_checkpoint(checkpoint)[:3]
            source = "warm-up on a copy loaded for it and let go after (ComfyUI held none)"
        held = None  # the warm-up's end lets go of them (below)
        try:
            backend = host.training_backend(model, clip, vae)
            plan = make_plan(backend, dataset, config, runs_root=paths.runs_dir(), output_name=output_name,
                             save_mode=save_mode, save_n=save_n, warmup_steps=WARMUP_STEPS)
            plan.notes.append(source)
            return plan
        finally:
            backend = model = clip = vae = None
            gc.collect()
            mm = comfy_modules.comfy_module("comfy.model_management")
            if mm is not None:
                mm.soft_empty_cache()
