"""The pre-flight plan for the Train LoRA panel, before Queue (``POST /style_lora/plan``, docs/CANVAS.md).

The browser sends the widgets of the Train LoRA node's own chain and the Load Checkpoint name its MODEL
comes from; ``plan_inputs`` turns them into the dataset and config Queue would train, with the node
classes the pack's ``__init__`` hands in. Without a model loaded the plan gives the arithmetic, the guide's
checks, the disk its files take (the LoRA's size from the checkpoint's header) and the device's free
memory; ``measure`` runs the warm-up on the checkpoint (``training_plan.make_plan``, through the host) for
the peak memory and the time. A measured plan is remembered for the same settings, so the panel shows it
again after a reload until something changes.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Protocol

import torch

from ..integration import paths
from ..style_lora_engine.checkpoint_header import lora_parameter_count, model_family, tensor_shapes
from ..style_lora_engine.config import TrainConfig
from ..style_lora_engine.dataset import Dataset
from ..style_lora_engine.errors import StyleLoRAError
from ..style_lora_engine.training_plan import TrainingPlan, disk_need_for, guide_checks, plan_counts
from .gallery import CanvasError
from .plan_inputs import DatasetCache, PlanInputs, read_plan_inputs

MEASURED_KEPT = 32


class PlanHost(Protocol):
    def checkpoint_path(self, name: str) -> Path: ...
    def device(self) -> torch.device: ...
    def free_memory(self) -> int | None: ...
    def busy(self) -> str | None: ...
    def warm_up(self, checkpoint: str, dataset: Dataset, config: TrainConfig, *, output_name: str,
                save_mode: str, save_n: int) -> TrainingPlan: ...


class CanvasPlanner:
    """Plans for the panels; the last header read is kept (a panel asks again on every change), and the
    measured plans by their settings."""

    def __init__(self, host: PlanHost, node_classes: dict[str, type]) -> None:
        self.host = host
        self.node_classes = node_classes
        self.datasets = DatasetCache()
        self._lock = threading.Lock()
        self._measuring = threading.Lock()
        self._header: tuple[tuple[str, float, int], dict[str, tuple[int, ...]]] | None = None
        self._measured: OrderedDict[str, dict[str, Any]] = OrderedDict()

    def read_inputs(self, data: dict[str, Any]) -> PlanInputs:
        return read_plan_inputs(data, self.node_classes, self.datasets)

    def _shapes(self, path: Path) -> dict[str, tuple[int, ...]]:
        stat = path.stat()
        key = (str(path), stat.st_mtime, stat.st_size)
        with self._lock:
            if self._header is not None and self._header[0] == key:
                return self._header[1]
        shapes = tensor_shapes(path)
        with self._lock:
            self._header = (key, shapes)
        return shapes

    def plan(self, data: dict[str, Any]) -> dict[str, Any]:
        """The plan without a model: counts, checks, disk, free memory (or the measured plan, if exactly these
        settings were measured)."""
        inputs = self.read_inputs(data)
        with self._lock:
            measured = self._measured.get(inputs.key)
        if measured is not None:
            return measured
        config = inputs.config
        counts = plan_counts(inputs.dataset, config)
        plan = TrainingPlan(counts=counts, checks=guide_checks(counts), device=str(self.host.device()),
                            free_memory=self.host.free_memory())
        plan.memory_note = "not measured yet: Measure runs a short warm-up on the checkpoint for the peak and the time"
        family = None
        if inputs.checkpoint is None:
            plan.notes.append("model: connect Train LoRA's model to a Load Checkpoint node to size the LoRA and "
                              "measure the warm-up")
            plan.memory_note = "not measured: no Load Checkpoint upstream"
        else:
            try:
                shapes = self._shapes(self.host.checkpoint_path(inputs.checkpoint))
            except (StyleLoRAError, OSError) as exc:
                plan.notes.append(f"model: {exc}")
            else:
                family = model_family(shapes)
                plan.notes.append(f"model: {inputs.checkpoint} ({family or 'not an SD1.5/SDXL checkpoint'})")
                if family is not None:
                    params = lora_parameter_count(shapes, config.rank, config.options.conv_dim)
                    plan.disk = disk_need_for(params, config, inputs.save_mode, inputs.save_n, paths.runs_dir())
        return _answer(inputs, plan, measured=False, family=family)

    def measure(self, data: dict[str, Any]) -> dict[str, Any]:
        """The plan with the warm-up measured on the checkpoint (one at a time; never while a prompt runs)."""
        inputs = self.read_inputs(data)
        if inputs.checkpoint is None:
            raise CanvasError("Nothing to measure on: connect Train LoRA's model input to a Load Checkpoint node.")
        busy = self.host.busy()
        if busy:
            raise CanvasError(busy, 409)
        if not self._measuring.acquire(blocking=False):
            raise CanvasError("A warm-up is already being measured; wait for it.", 409)
        try:
            plan = self.host.warm_up(inputs.checkpoint, inputs.dataset, inputs.config, output_name=inputs.output_name,
                                     save_mode=inputs.save_mode, save_n=inputs.save_n)
        finally:
            self._measuring.release()
        plan.notes.insert(0, f"model: {inputs.checkpoint}")
        answer = _answer(inputs, plan, measured=True)
        with self._lock:
            self._measured[inputs.key] = answer
            while len(self._measured) > MEASURED_KEPT:
                self._measured.popitem(last=False)
        return answer


def _answer(inputs: PlanInputs, plan: TrainingPlan, *, measured: bool, family: str | None = None) -> dict[str, Any]:
    c = plan.counts
    return {
        "text": plan.to_text(),
        "measured": measured,
        "checkpoint": inputs.checkpoint,
        "family": family,
        "images": c.images, "repeats": c.repeats, "epochs": c.epochs, "batch_size": c.batch_size,
        "steps_per_epoch": c.steps_per_epoch, "total_steps": c.total_steps,
        "checks": [{"ok": ok, "text": text} for ok, text in plan.checks],
        "disk_bytes": plan.disk.total if plan.disk is not None else None,
        "device": plan.device,
        "free_memory": plan.free_memory,
        "estimated_peak": plan.estimated_peak(),
        "stepping_peak": plan.stepping_peak(),  # the steps alone (the estimate may be the set-up's peak)
        "seconds_per_step": plan.seconds_per_step(),
        "fits": plan.fits(),
        "failed": plan.failed or None,
    }
