"""LoadDataset, CaptionEditor and ShuffleCaption: thin adapters over the engine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..style_lora_engine.atomic import safe_join
from ..style_lora_engine.buckets import BucketSettings
from ..style_lora_engine.captions import CaptionEdits, apply_caption_list, apply_edits, write_captions
from ..style_lora_engine.dataset import Dataset, load_dataset
from ..style_lora_engine.errors import DatasetError
from ..style_lora_engine.lint import lint_dataset
from ..style_lora_engine.shuffle import ShuffleSettings, preview_shuffles
from . import comfy_bridge
from .node_types import CATEGORY, DATASET


def resolve_dataset_folder(folder: str) -> Path:
    """A dataset folder from a widget: relative to the first dataset root (ComfyUI's input folder),
    or absolute inside one of the roots. Anything else is refused, so a shared workflow cannot
    point the pack at arbitrary folders."""
    text = folder.strip()
    if not text:
        raise DatasetError("No dataset folder given. Put your images in a folder under ComfyUI's input "
                           "folder and enter its name, e.g. 'my_style'.")
    roots = comfy_bridge.dataset_roots()
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        return safe_join(roots[0], text)
    resolved = candidate.resolve()
    for root in roots:
        if comfy_bridge.is_within(root, resolved):
            return resolved
    allowed = ", ".join(str(r) for r in roots)
    raise DatasetError(
        f"Dataset folder {resolved} is outside the folders this pack may read ({allowed}). Move it "
        "into ComfyUI's input folder, or add its parent to STYLE_LORA_DATASET_ROOTS."
    )


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
                "caption_extension": ("STRING", {"default": ".txt"}),
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
                                    "Skip images that cannot be read instead of stopping."}),
            },
            "optional": {
                "clip": ("CLIP", {"tooltip": "Connect to check captions against the text encoder's 75-token window."}),
            },
        }

    def load(self, folder: str, caption_extension: str, repeats: int, resolution: int, enable_bucket: bool,
             min_bucket_size: int, max_bucket_size: int, bucket_step: int, bucket_no_upscale: bool,
             skip_unreadable: bool, clip: Any = None) -> tuple[Dataset, str]:
        buckets = BucketSettings(enabled=enable_bucket, min_size=min_bucket_size, max_size=max_bucket_size,
                                 step=bucket_step, no_upscale=bucket_no_upscale)
        dataset = load_dataset(resolve_dataset_folder(folder), caption_extension=caption_extension,
                               repeats=repeats, resolution=resolution, buckets=buckets,
                               skip_unreadable=skip_unreadable)
        report = lint_dataset(dataset, count_tokens=comfy_bridge.token_counter(clip),
                              token_cap=comfy_bridge.token_cap(clip))
        return dataset, report.to_text()


class StyleLoRACaptionEditor:
    DESCRIPTION = ("Edit captions: bulk prefix/suffix (e.g. a trigger word or 'by <artist>'), find/replace, "
                   "per-image overrides, and optional atomic write-back to the caption files.")
    CATEGORY = CATEGORY
    FUNCTION = "edit"
    RETURN_TYPES = (DATASET, "STRING")
    RETURN_NAMES = ("dataset", "captions")
    # A captioning pack's list output arrives whole (not one node run per caption).
    INPUT_IS_LIST = True

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "dataset": (DATASET,),
                "prefix": ("STRING", {"default": "", "tooltip": "Added as the first part, e.g. a trigger word."}),
                "suffix": ("STRING", {"default": "", "tooltip": "Added as the last part, e.g. 'by Honoré Daumier'."}),
                "find": ("STRING", {"default": ""}),
                "replace": ("STRING", {"default": ""}),
                "write_back": ("BOOLEAN", {"default": False, "tooltip":
                               "Write edited captions to the caption files (atomic replace, inside the dataset folder)."}),
                "edits": ("STRING", {"default": "{}", "multiline": True, "tooltip":
                          "Per-image caption overrides as JSON {\"overrides\": {\"image.png\": \"caption\"}}; "
                          "the caption editor panel fills this in."}),
            },
            "optional": {
                "captions": ("STRING", {"forceInput": True, "tooltip":
                             "Captions from another captioning node, one per image in file-name order."}),
            },
        }

    def edit(self, dataset: list, prefix: list, suffix: list, find: list, replace: list, write_back: list,
             edits: list, captions: list | None = None) -> tuple[Dataset, str]:
        ds: Dataset = dataset[0]
        if captions:
            ds = apply_caption_list(ds, [str(c) for c in captions])
        stored = CaptionEdits.from_json(edits[0] or "{}")
        merged = CaptionEdits(prefix=prefix[0], suffix=suffix[0], find=find[0], replace=replace[0],
                              overrides=stored.overrides)
        separator = ds.shuffle.separator if ds.shuffle else ","
        ds = apply_edits(ds, merged, separator=separator)
        lines = [f"{item.image_path.name}: {item.caption}" for item in ds.items]
        if write_back[0]:
            written = write_captions(ds, only_changed=True)
            lines.append(f"-- wrote {len(written)} caption file(s)")
        return ds, "\n".join(lines)


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
        if not separator:
            raise DatasetError("The caption separator cannot be empty; the guide's captions use ','.")
        settings = ShuffleSettings(enabled=enabled, separator=separator, keep_tokens=keep_tokens, seed=seed)
        preview = preview_shuffles(dataset.captions(), settings, count=preview_count)
        # "ui" shows the examples in the node after it runs (the js panel also previews before).
        return {"ui": {"text": [preview]}, "result": (dataset.with_shuffle(settings), preview)}
