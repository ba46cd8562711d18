"""CaptionEditor: bulk and per-image caption edits, optionally written back atomically."""

from __future__ import annotations

from typing import Any

from ..integration.socket_types import CATEGORY, DATASET
from ..style_lora_engine.captions import CaptionEdits, apply_caption_list, apply_edits, write_captions
from ..style_lora_engine.config import check_bool
from ..style_lora_engine.dataset import Dataset
from ..style_lora_engine.errors import DatasetError


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
        if check_bool(write_back[0], "write_back", error=DatasetError):  # "false" from /prompt is truthy
            written = write_captions(ds, only_changed=True)
            lines.append(f"-- wrote {len(written)} caption file(s)")
        return ds, "\n".join(lines)
