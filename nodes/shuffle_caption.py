"""ShuffleCaption: the guide's caption (token) shuffling, first part(s) kept in place."""

from __future__ import annotations

from typing import Any

from ..integration.socket_types import CATEGORY, DATASET
from ..style_lora_engine.config import check_bool, check_int, check_text
from ..style_lora_engine.dataset import Dataset
from ..style_lora_engine.errors import DatasetError
from ..style_lora_engine.shuffle import ShuffleSettings, preview_shuffles


class StyleLoRAShuffleCaption:
    DESCRIPTION = ("Shuffle the comma-separated parts of each caption at every training step, keeping the first "
                   "part(s) in place (the guide's token shuffling).")
    CATEGORY = CATEGORY
    FUNCTION = "configure"
    RETURN_TYPES = (DATASET, "STRING")
    RETURN_NAMES = ("dataset", "preview")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "dataset": (DATASET,),
                "enabled": ("BOOLEAN", {"default": True}),
                "separator": ("STRING", {"default": ",", "tooltip": "What separates caption parts."}),
                "keep_tokens": ("INT", {"default": 1, "min": 0, "max": 32, "tooltip":
                                "Leading parts that never move (the guide keeps the first one)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": False}),
                "preview_count": ("INT", {"default": 3, "min": 1, "max": 10}),
            },
        }

    def configure(self, dataset: Dataset, enabled: bool, separator: str, keep_tokens: int, seed: int,
                  preview_count: int) -> dict[str, Any]:
        # Values sent straight to /prompt skip the widgets' limits: checked here, naming the widget.
        enabled = check_bool(enabled, "enabled", error=DatasetError)
        separator = check_text(separator, "separator", error=DatasetError)
        if not separator or len(separator) > 100:
            raise DatasetError("separator must be 1-100 characters; the guide's captions use ','.")
        keep_tokens = check_int(keep_tokens, "keep_tokens", 0, 32, error=DatasetError,
                                fix="The guide keeps the first part in place: 1.")
        seed = check_int(seed, "seed", 0, 0xFFFFFFFF, error=DatasetError)
        preview_count = check_int(preview_count, "preview_count", 1, 10, error=DatasetError)
        settings = ShuffleSettings(enabled=enabled, separator=separator, keep_tokens=keep_tokens, seed=seed)
        preview = preview_shuffles(dataset.captions(), settings, count=preview_count)
        # "ui" shows the examples in the node after it runs (the js panel also previews before).
        return {"ui": {"text": [preview]}, "result": (dataset.with_shuffle(settings), preview)}
