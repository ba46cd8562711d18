"""LoadDataset: a folder of images and captions, checked against the guide."""

from __future__ import annotations

import logging
from typing import Any

from ..integration import tokens
from ..integration.paths import resolve_dataset_folder
from ..integration.socket_types import CATEGORY, DATASET
from ..style_lora_engine.buckets import BucketSettings
from ..style_lora_engine.config import check_text
from ..style_lora_engine.dataset import Dataset, folder_signature, load_dataset
from ..style_lora_engine.errors import DatasetError
from ..style_lora_engine.lint import lint_dataset
from ..style_lora_engine.loss_masks import MASK_SOURCES, MASKS_FOLDER
from ..style_lora_engine.validation_set import (
    VALIDATION_SOURCES,
    check_source,
    with_folder_validation,
    with_held_out_validation,
)

log = logging.getLogger("style_lora_trainer")


class StyleLoRALoadDataset:
    DESCRIPTION = ("Loads a folder of images with same-name caption files (the guide: 30-100 high-resolution "
                   "images, each repeated ~10 times per epoch) and checks it against the guide.")
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = (DATASET, "STRING")
    RETURN_NAMES = ("dataset", "lint_report")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "folder": ("STRING", {"default": "my_style_dataset", "tooltip":
                           "Folder under ComfyUI's input folder (or an absolute path inside an allowed root)."}),
                "caption_extension": ("STRING", {"default": ".txt", "tooltip":
                                      "Extension of the caption files next to the images: '.txt' or '.caption'."}),
                "repeats": ("INT", {"default": 10, "min": 1, "max": 100, "tooltip":
                            "Times each image is seen per epoch. The guide: ~10, between 8 and 20."}),
                "resolution": ("INT", {"default": 512, "min": 32, "max": 4096, "step": 8, "tooltip":
                               "Training resolution: 512 for SD1.5, 1024 for SDXL."}),
                "enable_bucket": ("BOOLEAN", {"default": True, "tooltip": "Aspect-ratio bucketing (kohya)."}),
                "min_bucket_size": ("INT", {"default": 256, "min": 32, "max": 4096, "step": 8}),
                "max_bucket_size": ("INT", {"default": 1024, "min": 32, "max": 8192, "step": 8}),
                "bucket_step": ("INT", {"default": 64, "min": 8, "max": 256, "step": 8}),
                "bucket_no_upscale": ("BOOLEAN", {"default": False, "tooltip":
                                      "Never enlarge small images; give them a smaller bucket."}),
                "skip_unreadable": ("BOOLEAN", {"default": False, "tooltip":
                                    "Skip images that cannot be read (or whose caption file cannot be read) "
                                    "instead of stopping; each is listed in the lint report."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Connect to check captions against the text encoder's 75-token window."}),
                "masks": (list(MASK_SOURCES), {"default": "none", "tooltip":
                          "Loss masks for Train Options' masked_loss (kohya): each image's alpha channel, or a "
                          "same-name image in the dataset's masks/ folder. White trains, black is ignored."}),
                "validation": (list(VALIDATION_SOURCES), {"default": VALIDATION_SOURCES[0], "tooltip":
                               "Images for the validation loss per epoch: up to 8 training images (a small style "
                               "dataset keeps every image), 'hold out' some (never trained on), or a folder."}),
                "hold_out": ("FLOAT", {"default": 0.1, "min": 0.01, "max": 1000.0, "step": 0.01, "tooltip":
                             "For 'hold out': a fraction (0.1 = 10 % of the images) or a count (3)."}),
                "validation_folder": ("STRING", {"default": "", "tooltip":
                                      "For 'folder': a folder of images + captions, found like the dataset folder."}),
            },
        }

    @classmethod
    def IS_CHANGED(cls, folder: Any = None, caption_extension: Any = None, masks: Any = "none",
                   validation: Any = VALIDATION_SOURCES[0], validation_folder: Any = "", **_: Any) -> str | float:
        """ComfyUI reuses the cached dataset while this value stays the same: a stat-only digest of the
        images and captions the folder holds, and of its masks/ folder when masks come from there (the
        other widgets are already in ComfyUI's cache key)."""
        try:
            resolved = resolve_dataset_folder(folder)
            signature = folder_signature(resolved, caption_extension)
            if masks == "masks folder" and (resolved / MASKS_FOLDER).is_dir():
                signature += "+" + folder_signature(resolved / MASKS_FOLDER, caption_extension)
            if validation == "folder":
                signature += "+" + folder_signature(resolve_dataset_folder(validation_folder), caption_extension)
            return signature
        except Exception:  # any problem: NaN never equals itself, so load() runs and reports it
            return float("nan")

    def load(self, folder: str, caption_extension: str, repeats: int, resolution: int, enable_bucket: bool,
             min_bucket_size: int, max_bucket_size: int, bucket_step: int, bucket_no_upscale: bool,
             skip_unreadable: bool, clip: Any = None, masks: str = "none",
             validation: str = VALIDATION_SOURCES[0], hold_out: float = 0.1,
             validation_folder: str = "") -> tuple[Dataset, str]:
        buckets = BucketSettings(enabled=enable_bucket, min_size=min_bucket_size, max_size=max_bucket_size,
                                 step=bucket_step, no_upscale=bucket_no_upscale)
        folder = check_text(folder, "folder", error=DatasetError)
        dataset = load_dataset(resolve_dataset_folder(folder), caption_extension=caption_extension,
                               repeats=repeats, resolution=resolution, buckets=buckets,
                               skip_unreadable=skip_unreadable, masks=masks)
        source = check_source(validation)
        if source == "hold out":
            dataset = with_held_out_validation(dataset, hold_out)
        elif source == "folder":
            name = check_text(validation_folder, "validation_folder", error=DatasetError)
            if not name.strip():
                raise DatasetError("validation is 'folder' but validation_folder is empty: enter a folder of images "
                                   "with captions (found like the dataset folder), or choose 'training images'.")
            extra = load_dataset(resolve_dataset_folder(name), caption_extension=caption_extension, repeats=repeats,
                                 resolution=resolution, buckets=buckets, skip_unreadable=skip_unreadable)
            dataset = with_folder_validation(dataset, extra)
        for _path, reason in dataset.skipped:
            log.warning("Style LoRA dataset: skipped %s", reason)
        report = lint_dataset(dataset, count_tokens=tokens.token_counter(clip),
                              token_cap=tokens.token_cap(clip))
        text = report.to_text() + f"\nValidation loss on {dataset.validation_set().describe()}."
        return dataset, text
