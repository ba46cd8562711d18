"""SaveEpochs: publish a run's epoch files into the loras folder, where LoraLoader lists them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from ..integration import paths
from ..integration.socket_types import CATEGORY, EPOCHS, RUN, EpochFile, EpochSet
from ..style_lora_engine.atomic import atomic_write_bytes, safe_join
from ..style_lora_engine.errors import StyleLoRAError
from ..style_lora_engine.lora_file import epoch_file_name, sanitize_name, select_epochs
from ..style_lora_engine.trainer import TrainResult

SAVE_MODES = ("all", "every_n", "last_k")


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def publish_epochs(run: TrainResult, *, name: str, mode: str, n: int, subfolder: str, overwrite: bool,
                   loras_root: Path) -> EpochSet:
    """Copy the selected epoch files to ``loras_root/subfolder/<name>-0000NN.safetensors``.

    Each copy is atomic. An existing file with different content is refused unless ``overwrite``:
    another run's epochs are never replaced by accident.
    """
    if mode not in SAVE_MODES:
        raise StyleLoRAError(f"Unknown save mode {mode!r}; choose one of {', '.join(SAVE_MODES)}.")
    stem = sanitize_name(name)
    parts = [sanitize_name(p) for p in subfolder.replace("\\", "/").split("/") if p.strip()]
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
        if not target.exists() or _digest(target) != _digest(source):
            atomic_write_bytes(target, source.read_bytes())
        files.append(EpochFile(epoch, target, "/".join([*parts, target.name])))
    return EpochSet(output_name=stem, files=tuple(files))


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
        epoch_set = publish_epochs(run, name=name, mode=save, n=n, subfolder=subfolder, overwrite=overwrite,
                                   loras_root=paths.loras_dir())
        names = "\n".join(f.lora_name for f in epoch_set.files)
        return {"ui": {"text": [names]}, "result": (epoch_set, names)}
