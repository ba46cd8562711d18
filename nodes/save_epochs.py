"""SaveEpochs: publish a run's epoch files into the loras folder, where LoraLoader lists them."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

from ..integration import paths
from ..integration.socket_types import CATEGORY, EPOCHS, RUN, EpochFile, EpochSet
from ..style_lora_engine.atomic import atomic_write_bytes, remove_stale_temp_files, safe_join
from ..style_lora_engine.config import check_bool, check_choice, check_int
from ..style_lora_engine.errors import StyleLoRAError
from ..style_lora_engine.lora_file import (
    epoch_file_name,
    explain_sanitized_name,
    sanitize_subfolder,
    select_epochs,
)
from ..style_lora_engine.trainer import TrainResult

log = logging.getLogger("style_lora_trainer")

SAVE_MODES = ("all", "every_n", "last_k")
MAX_N = 1000
STALE_COPY_SECONDS = 60  # a copy into loras takes well under a second; an older temp is a killed one


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish_epochs(run: TrainResult, *, name: str, mode: str, n: int, subfolder: str, overwrite: bool,
                   loras_root: Path) -> tuple[EpochSet, list[str]]:
    """Copy the selected epoch files to ``loras_root/subfolder/<name>-0000NN.safetensors``; also
    returns notes saying how the name or subfolder had to be changed to be safe (none if not).

    Each copy is atomic. An existing file with different content is refused unless ``overwrite``:
    another run's epochs are never replaced by accident.
    """
    check_choice(mode, "save", SAVE_MODES)
    check_int(n, "n", 1, MAX_N, fix="every_n saves epochs divisible by n; last_k saves the n last.")
    check_bool(overwrite, "overwrite")
    stem, name_note = explain_sanitized_name(name, "name")
    parts, folder_note = sanitize_subfolder(subfolder, "subfolder")
    notes = [f"{widget}: {note}" for widget, note in (("name", name_note), ("subfolder", folder_note)) if note]
    target_dir = safe_join(loras_root, "/".join(parts)) if parts else Path(loras_root)
    if not run.epoch_files:
        raise StyleLoRAError(f"The run in {run.run_dir} has no finished epochs to save; train first.")
    chosen = select_epochs(sorted(run.epoch_files), mode, n)
    plans = []
    for epoch in chosen:
        source = run.epoch_files[epoch]
        if not source.is_file():
            raise StyleLoRAError(f"Epoch file {source} is missing; re-run TrainLoRA to recreate it.")
        target = target_dir / epoch_file_name(stem, epoch)
        if target.exists() and not overwrite and _digest(target) != _digest(source):
            raise StyleLoRAError(
                f"{target} already exists and holds a different LoRA. Choose another name or subfolder, "
                "or enable 'overwrite'."
            )
        plans.append((epoch, source, target))
    files = []
    for epoch, source, target in plans:
        remove_stale_temp_files(target.parent, target_name=target.name, min_age_seconds=STALE_COPY_SECONDS)
        if not target.exists() or _digest(target) != _digest(source):
            atomic_write_bytes(target, source.read_bytes())
        files.append(EpochFile(epoch, target, "/".join([*parts, target.name])))
    return EpochSet(output_name=stem, files=tuple(files)), notes


class StyleLoRASaveEpochs:
    DESCRIPTION = ("Saves the run's epochs as <name>-000001.safetensors ... into the loras folder (every epoch "
                   "numbered, the last too), so LoraLoader lists them without a restart.")
    CATEGORY = CATEGORY
    FUNCTION = "save"
    RETURN_TYPES = (EPOCHS, "STRING")
    RETURN_NAMES = ("epochs", "lora_names")
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "run": (RUN,),
                "name": ("STRING", {"default": "my_style"}),
                "save": (list(SAVE_MODES), {"default": "all", "tooltip":
                         "all: every epoch (the guide); every_n: epochs divisible by n plus the last; "
                         "last_k: the k last epochs."}),
                "n": ("INT", {"default": 1, "min": 1, "max": 1000}),
                "subfolder": ("STRING", {"default": "", "tooltip": "Optional subfolder inside the loras folder."}),
                "overwrite": ("BOOLEAN", {"default": False}),
            },
        }

    def save(self, run: TrainResult, name: str, save: str, n: int, subfolder: str,
             overwrite: bool) -> dict[str, Any]:
        epoch_set, notes = publish_epochs(run, name=name, mode=save, n=n, subfolder=subfolder,
                                          overwrite=overwrite, loras_root=paths.loras_dir())
        for note in notes:
            log.warning("Style LoRA Save Epochs: %s", note)
        names = "\n".join(f.lora_name for f in epoch_set.files)
        return {"ui": {"text": ["\n".join([*notes, names])]}, "result": (epoch_set, names)}
