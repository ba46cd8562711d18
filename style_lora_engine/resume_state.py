"""Resume state after each finished epoch: safetensors for tensors, JSON for the rest (no pickle).

Two files per run folder, written atomically in this order: ``resume.safetensors`` then
``resume.json``. The JSON names the epoch it belongs to and so does the safetensors header, so a
crash between the two writes is detected (the pair disagrees) and the older pair is not mixed up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .atomic import atomic_write_bytes, atomic_write_text

TENSORS_FILE = "resume.safetensors"
STATE_FILE = "resume.json"
FORMAT_VERSION = 1


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
        tensors[key] = obj.detach().cpu().contiguous()
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


def save_resume_state(folder: Path, state: ResumeState) -> None:
    tensors: dict[str, torch.Tensor] = {f"lora.{k}": v.detach().float().cpu().contiguous()
                                        for k, v in state.lora.items()}
    tensors["rng.noise"] = state.noise_rng.clone()
    optimizer = _split_tensors(state.optimizer, "opt", tensors)
    scheduler = _split_tensors(state.scheduler, "sched", tensors)
    header = {"epoch": str(state.epoch), "fingerprint": state.fingerprint}
    atomic_write_bytes(folder / TENSORS_FILE, save(tensors, metadata=header))
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
    atomic_write_text(folder / STATE_FILE, json.dumps(doc))


def load_resume_state(folder: Path, fingerprint: str) -> ResumeState | None:
    """The saved state if it belongs to this run configuration and is complete, else None."""
    state_path, tensors_path = folder / STATE_FILE, folder / TENSORS_FILE
    if not (state_path.is_file() and tensors_path.is_file()):
        return None
    try:
        doc = json.loads(state_path.read_text(encoding="utf-8"))
        tensors = load_file(str(tensors_path))
        from safetensors import safe_open

        with safe_open(str(tensors_path), framework="pt") as f:
            header = f.metadata() or {}
    except (OSError, ValueError, RuntimeError):
        return None  # unreadable state: start over rather than guess
    if (doc.get("format") != FORMAT_VERSION or doc.get("fingerprint") != fingerprint
            or header.get("epoch") != str(doc.get("epoch"))):
        return None
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
