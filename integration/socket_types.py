"""Custom socket types (prefixed: core ComfyUI owns DATASET-like names such as LORA_MODEL) and the
objects that travel on them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATASET = "STYLE_LORA_DATASET"
RUN = "STYLE_LORA_RUN"
EPOCHS = "STYLE_LORA_EPOCHS"
TRAIN_OPTIONS = "STYLE_LORA_TRAIN_OPTIONS"
SAMPLES = "STYLE_LORA_SAMPLES"

CATEGORY = "Style LoRA"


@dataclass(frozen=True)
class EpochFile:
    epoch: int
    path: Path
    lora_name: str  # name as LoraLoader lists it (relative to the loras folder, "/"-separated)


@dataclass(frozen=True)
class EpochSet:
    """LoRA epoch files of one run, in epoch order: what SaveEpochs publishes and the grid reads."""

    output_name: str
    files: tuple[EpochFile, ...]

    def epochs(self) -> list[int]:
        return [f.epoch for f in self.files]
