"""The last training run of each TrainLoRA node, kept in memory so the live panel can redraw after
a page reload (the server events only reach pages that are open at the time)."""

from __future__ import annotations

import threading
import time
from typing import Any

STATES = ("idle", "running", "finished", "stopped", "failed")
MAX_POINTS = 20_000  # 100 images x 10 repeats x 20 epochs at batch 1


def _idle(node: str) -> dict[str, Any]:
    return {"node": node, "run": None, "state": "idle", "message": "", "total_steps": 0, "num_epochs": 0,
            "steps_per_epoch": 0, "start_step": 0, "eta_seconds": None, "points": [], "epochs": [],
            "validation": [], "samples": [], "validation_source": "", "updated": None}


class TrainingHistory:
    """Thread-safe: training runs on ComfyUI's execution thread, the route reads on the event loop."""

    def __init__(self, max_points: int = MAX_POINTS) -> None:
        self._runs: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.max_points = max_points

    def start(self, node: str, run: str, *, total_steps: int, num_epochs: int, steps_per_epoch: int,
              start_step: int) -> None:
        entry = _idle(node)
        entry.update(run=run, state="running", total_steps=total_steps, num_epochs=num_epochs,
                     steps_per_epoch=steps_per_epoch, start_step=start_step, updated=time.time())
        with self._lock:
            self._runs[node] = entry

    def step(self, node: str, run: str, *, step: int, epoch: int, loss: float, lr: float, dlr: float,
             eta_seconds: float) -> None:
        with self._lock:
            entry = self._runs.get(node)
            if entry is None or entry["run"] != run:
                return
            points = entry["points"]
            points.append({"step": step, "epoch": epoch, "loss": loss, "lr": lr, "dlr": dlr})
            if len(points) > self.max_points:
                # Keep the shape of a very long run: drop every other point of the older half.
                half = len(points) // 2
                entry["points"] = points[:half:2] + points[half:]
            entry["eta_seconds"] = eta_seconds
            entry["updated"] = time.time()

    def epoch(self, node: str, run: str, *, epoch: int, step: int, file: str, mean_loss: float,
              validation_loss: float | None = None) -> None:
        with self._lock:
            entry = self._runs.get(node)
            if entry is not None and entry["run"] == run:
                entry["epochs"].append({"epoch": epoch, "step": step, "file": file, "mean_loss": mean_loss,
                                        "validation_loss": validation_loss})

    def validation(self, node: str, run: str, *, epoch: int, step: int, loss: float, source: str) -> None:
        """A validation loss (epoch 0: before training); a repeated epoch replaces the earlier value."""
        with self._lock:
            entry = self._runs.get(node)
            if entry is not None and entry["run"] == run:
                entry["validation"] = [v for v in entry["validation"] if v["epoch"] != epoch]
                entry["validation"].append({"epoch": epoch, "step": step, "loss": loss})
                entry["validation_source"] = source

    def sample(self, node: str, run: str, sample: dict[str, Any]) -> None:
        """The sample images of one epoch (the ``train_sample`` payload without node and run)."""
        with self._lock:
            entry = self._runs.get(node)
            if entry is not None and entry["run"] == run:
                entry["samples"] = [s for s in entry["samples"] if s["epoch"] != sample["epoch"]] + [sample]

    def end(self, node: str, run: str, state: str, message: str = "") -> None:
        if state not in STATES:
            raise ValueError(f"unknown training state {state!r}")
        with self._lock:
            entry = self._runs.get(node)
            if entry is not None and entry["run"] == run:
                entry.update(state=state, message=message, eta_seconds=0 if state == "finished" else None,
                             updated=time.time())

    def snapshot(self, node: str) -> dict[str, Any]:
        """A copy of ``node``'s last run (or an idle entry), safe to serialise as JSON."""
        with self._lock:
            entry = self._runs.get(node)
            if entry is None:
                return _idle(node)
            return {**entry, "points": list(entry["points"]), "epochs": list(entry["epochs"]),
                    "validation": list(entry["validation"]), "samples": list(entry["samples"])}


HISTORY = TrainingHistory()
