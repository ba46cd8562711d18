"""The node classes, one module per node (classic API: importable and testable without ComfyUI).
They are thin: widgets in, the engine and ``integration`` do the work."""

from .caption_editor import StyleLoRACaptionEditor
from .epoch_weight_grid import StyleLoRAEpochWeightGrid
from .load_dataset import StyleLoRALoadDataset
from .pick_epoch import StyleLoRAPickEpoch
from .save_epochs import StyleLoRASaveEpochs
from .shuffle_caption import StyleLoRAShuffleCaption
from .train_lora import StyleLoRATrain
from .train_options import StyleLoRATrainOptions
from .training_samples import StyleLoRATrainingSamples

NODE_CLASS_MAPPINGS = {
    "StyleLoRALoadDataset": StyleLoRALoadDataset,
    "StyleLoRACaptionEditor": StyleLoRACaptionEditor,
    "StyleLoRAShuffleCaption": StyleLoRAShuffleCaption,
    "StyleLoRATrain": StyleLoRATrain,
    "StyleLoRATrainOptions": StyleLoRATrainOptions,
    "StyleLoRATrainingSamples": StyleLoRATrainingSamples,
    "StyleLoRASaveEpochs": StyleLoRASaveEpochs,
    "StyleLoRAEpochWeightGrid": StyleLoRAEpochWeightGrid,
    "StyleLoRAPickEpoch": StyleLoRAPickEpoch,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "StyleLoRALoadDataset": "Load Dataset (Style LoRA)",
    "StyleLoRACaptionEditor": "Caption Editor (Style LoRA)",
    "StyleLoRAShuffleCaption": "Shuffle Caption (Style LoRA)",
    "StyleLoRATrain": "Train LoRA (Style LoRA)",
    "StyleLoRATrainOptions": "Train Options (Style LoRA)",
    "StyleLoRATrainingSamples": "Training Samples (Style LoRA)",
    "StyleLoRASaveEpochs": "Save Epochs (Style LoRA)",
    "StyleLoRAEpochWeightGrid": "Epoch × Weight Grid (Style LoRA)",
    "StyleLoRAPickEpoch": "Pick Epoch (Style LoRA)",
}
