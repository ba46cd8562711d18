"""Epoch files with the numbers training writes (``ss_validation_loss`` ...), for the grid and Pick Epoch
node tests: small real safetensors files in a loras folder, and a model that brings its own host."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import save_file

from style_lora_trainer.integration.socket_types import EpochFile, EpochSet

VALIDATION_SET = {"source": "training images", "images": 8, "timesteps": [250, 500, 750]}


def write_epochs(loras: Path, name: str, losses: dict[int, float | None], *, subfolder: str = "",
                 mean: dict[int, float] | None = None) -> EpochSet:
    """``<loras>/<subfolder>/<name>-00000N.safetensors`` per epoch; a None loss writes an old-style file
    (no validation keys at all)."""
    folder = loras / subfolder if subfolder else loras
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for epoch, loss in sorted(losses.items()):
        meta: dict[str, str] = {"ss_output_name": name}
        if loss is not None:
            meta |= {"ss_validation_loss": repr(loss), "ss_validation_loss_base": repr(0.25),
                     "ss_validation_set": json.dumps(VALIDATION_SET)}
        if mean and epoch in mean:
            meta["ss_epoch_mean_loss"] = repr(mean[epoch])
        path = folder / f"{name}-{epoch:06d}.safetensors"
        save_file({"lora_unet_x.lora_down.weight": torch.full((2, 2), float(epoch))}, str(path), metadata=meta)
        files.append(EpochFile(epoch, path, f"{subfolder + '/' if subfolder else ''}{path.name}"))
    return EpochSet(name, tuple(files))


def cell_colour(epoch: int, weight: float) -> tuple[int, int, int]:
    # Unique per cell, never white, black or the mark colour.
    return (30 + 11 * epoch, 40 + round(100 * weight), 220 - 7 * epoch)


class OwnHostModel:
    """A model that brings its own host (as headless.DiffusersSD): each grid cell is one solid
    image per prompt in ``cell_colour``; records what it was asked to render / apply."""

    def __init__(self) -> None:
        self.rendered: list[list[int]] = []
        self.applied: list[tuple[Path, float]] = []

    def render_grid_cells(self, epoch_files: list[tuple[int, Path]], weights: list[float], prompts: list[str],
                          **settings: Any) -> dict[tuple[int, float], list[Image.Image]]:
        self.rendered.append([e for e, _ in epoch_files])
        size = (settings["width"], settings["height"])
        return {(e, w): [Image.new("RGB", size, cell_colour(e, w)) for _ in prompts]
                for e, _ in epoch_files for w in weights}

    def apply_lora(self, path: Path, weight: float) -> tuple[Any, Any]:
        self.applied.append((Path(path), weight))
        return ("model with", Path(path).name, weight), ("clip with", Path(path).name, weight)


# Validation losses of the five epochs the grid and pick tests write (ties at 2 and 4: the later wins).
LOSSES = {1: 0.20, 2: 0.12, 3: 0.15, 4: 0.12, 5: 0.30}


def loras_folder(tmp_path, monkeypatch):
    """The pack's loras and output folders under ``tmp_path``; returns the loras folder."""
    monkeypatch.setenv("STYLE_LORA_LORAS_DIR", str(tmp_path / "loras"))
    monkeypatch.setenv("STYLE_LORA_OUTPUT_DIR", str(tmp_path / "output"))
    return tmp_path / "loras"
