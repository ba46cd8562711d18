"""Resume state after each finished epoch: safetensors for tensors, JSON for the rest (no pickle).

One file per run folder, ``resume.safetensors``: the tensors, with the JSON document (epoch, step,
optimizer and scheduler structure, history) in its header. One atomic rename replaces it, so a kill
at any instant leaves either the previous epoch's complete state or the new one, never a mix.
(Format 1 kept the JSON in a second file, ``resume.json``; a torn pair could not be told from a lost
one. It is still read when the pair agrees, and removed once a format-2 state is written.)

:class:`ResumeWriter` takes a snapshot (copies of the tensors, the JSON text) on the training thread
and writes it on a background thread, so the next epoch starts at once instead of waiting for
hundreds of MB of optimizer state to reach the disk; one write at a time, in epoch order.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .atomic import atomic_path

TENSORS_FILE = "resume.safetensors"
STATE_FILE = "resume.json"  # format 1 only
FORMAT_VERSION = 2
_STATE_KEY = "style_lora_resume_state"


class ResumeStateUnusable(Exception):
    """A resume state is in the run folder but cannot be used; the message says why."""


@dataclass
class ResumeState:
    fingerprint: str
    epoch: int
    global_step: int
    lora: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    noise_rng: torch.Tensor
    history: dict[str, list] = field(default_factory=dict)


def _split_tensors(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by {"__tensor__": key}, collecting them."""
    if isinstance(obj, torch.Tensor):
        key = prefix
        # A copy: the optimizer goes on updating its state in place while the snapshot is written.
        tensors[key] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_split_tensors(k, f"{prefix}.k{i}", tensors),
                              _split_tensors(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        items = [_split_tensors(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    if isinstance(obj, float) and obj != obj:
        return {"__float__": "nan"}
    if isinstance(obj, float) and obj in (float("inf"), float("-inf")):
        return {"__float__": "inf" if obj > 0 else "-inf"}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"Cannot store {type(obj).__name__} in resume state")


def _join_tensors(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_join_tensors(k, tensors): _join_tensors(v, tensors) for k, v in obj["__dict__"]}
        if "__tuple__" in obj:
            return tuple(_join_tensors(v, tensors) for v in obj["__tuple__"])
        if "__float__" in obj:
            return float(obj["__float__"])
    if isinstance(obj, list):
        return [_join_tensors(v, tensors) for v in obj]
    return obj


@dataclass(frozen=True)
class ResumeSnapshot:
    """Everything one resume state write needs, detached from the live training objects."""

    tensors: dict[str, torch.Tensor]
    header: dict[str, str]


def snapshot_resume_state(state: ResumeState) -> ResumeSnapshot:
    tensors: dict[str, torch.Tensor] = {f"lora.{k}": v.detach().to("cpu", torch.float32, copy=True).contiguous()
                                        for k, v in state.lora.items()}
    tensors["rng.noise"] = state.noise_rng.clone()
    optimizer = _split_tensors(state.optimizer, "opt", tensors)
    scheduler = _split_tensors(state.scheduler, "sched", tensors)
    doc = {
        "format": FORMAT_VERSION,
        "fingerprint": state.fingerprint,
        "epoch": state.epoch,
        "global_step": state.global_step,
        "lora_keys": sorted(state.lora),
        "optimizer": optimizer,
        "scheduler": scheduler,
        "history": state.history,
    }
    header = {"epoch": str(state.epoch), "fingerprint": state.fingerprint, _STATE_KEY: json.dumps(doc)}
    return ResumeSnapshot(tensors, header)


def write_resume_snapshot(folder: Path, snapshot: ResumeSnapshot) -> None:
    with atomic_path(Path(folder) / TENSORS_FILE) as tmp:
        save_file(snapshot.tensors, str(tmp), metadata=snapshot.header)  # straight to the file: no bytes copy
    # A format-1 JSON beside it would be stale now; the new file alone is the state.
    (Path(folder) / STATE_FILE).unlink(missing_ok=True)


def save_resume_state(folder: Path, state: ResumeState) -> None:
    write_resume_snapshot(folder, snapshot_resume_state(state))


class ResumeWriter:
    """Writes resume states on a background thread, one at a time and in order.

    ``submit`` snapshots on the caller's thread (so training may go on changing its tensors), waits
    for the previous write, then starts this one. ``wait`` blocks until the last write is on disk and
    raises its error, if any; the trainer calls it before it returns or re-raises, so a finished
    run, a Stop or a crash still leaves the newest complete pair behind.
    """

    def __init__(self) -> None:
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, folder: Path, state: ResumeState) -> None:
        snapshot = snapshot_resume_state(state)
        self.wait()
        self._thread = threading.Thread(target=self._write, args=(folder, snapshot), daemon=True,
                                        name="style-lora-resume-writer")
        self._thread.start()

    def _write(self, folder: Path, snapshot: ResumeSnapshot) -> None:
        try:
            write_resume_snapshot(folder, snapshot)
        except BaseException as exc:  # handed to the training thread by wait()
            self._error = exc

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error


def load_resume_state(folder: Path, fingerprint: str) -> ResumeState | None:
    """The saved state of this run, or None when the folder has none.

    Raises :class:`ResumeStateUnusable` when a state is there but cannot be used (unreadable, of
    another run or format, or a format-1 pair that disagrees): the caller decides whether starting
    over is safe, since that would rewrite finished epochs.
    """
    tensors_path = Path(folder) / TENSORS_FILE
    if not tensors_path.is_file():
        if (Path(folder) / STATE_FILE).is_file():
            raise ResumeStateUnusable(f"{TENSORS_FILE} is missing beside {STATE_FILE}")
        return None
    try:
        with safe_open(str(tensors_path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(tensors_path))
        text = header.get(_STATE_KEY)
        if text is None:  # format 1: the JSON is in its own file
            text = (Path(folder) / STATE_FILE).read_text(encoding="utf-8")
        doc = json.loads(text)
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise ResumeStateUnusable(f"{tensors_path.name} cannot be read ({exc})") from exc
    if doc.get("format") not in (1, FORMAT_VERSION):
        raise ResumeStateUnusable(f"{tensors_path.name} has format {doc.get('format')!r}, not one this version reads")
    if doc.get("fingerprint") != fingerprint:
        raise ResumeStateUnusable(f"{tensors_path.name} belongs to other settings")
    if header.get("epoch") != str(doc.get("epoch")):
        raise ResumeStateUnusable(f"{TENSORS_FILE} (epoch {header.get('epoch')}) and {STATE_FILE} "
                                  f"(epoch {doc.get('epoch')}) disagree")
    try:
        lora = {k: tensors[f"lora.{k}"] for k in doc["lora_keys"]}
        return ResumeState(
            fingerprint=fingerprint,
            epoch=int(doc["epoch"]),
            global_step=int(doc["global_step"]),
            lora=lora,
            optimizer=_join_tensors(doc["optimizer"], tensors),
            scheduler=_join_tensors(doc["scheduler"], tensors),
            noise_rng=tensors["rng.noise"],
            history=doc.get("history", {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ResumeStateUnusable(f"{tensors_path.name} is incomplete ({exc!r})") from exc
