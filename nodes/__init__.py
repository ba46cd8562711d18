"""ComfyUI node classes (classic API: importable and testable without ComfyUI)."""

from .dataset_nodes import StyleLoRACaptionEditor, StyleLoRALoadDataset, StyleLoRAShuffleCaption
from .grid_node import StyleLoRAEpochWeightGrid
from .save_node import StyleLoRASaveEpochs
from .train_node import StyleLoRATrain

NODE_CLASS_MAPPINGS = {
    "StyleLoRALoadDataset": StyleLoRALoadDataset,
    "StyleLoRACaptionEditor": StyleLoRACaptionEditor,
    "StyleLoRAShuffleCaption": StyleLoRAShuffleCaption,
    "StyleLoRATrain": StyleLoRATrain,
    "StyleLoRASaveEpochs": StyleLoRASaveEpochs,
    "StyleLoRAEpochWeightGrid": StyleLoRAEpochWeightGrid,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "StyleLoRALoadDataset": "Load Dataset (Style LoRA)",
    "StyleLoRACaptionEditor": "Caption Editor (Style LoRA)",
    "StyleLoRAShuffleCaption": "Shuffle Caption (Style LoRA)",
    "StyleLoRATrain": "Train LoRA (Style LoRA)",
    "StyleLoRASaveEpochs": "Save Epochs (Style LoRA)",
    "StyleLoRAEpochWeightGrid": "Epoch × Weight Grid (Style LoRA)",
}
