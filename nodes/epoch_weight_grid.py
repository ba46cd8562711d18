"""EpochWeightGrid: the guide's X/Y plot of epochs (rows) against LoRA weights (columns)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from PIL import Image

from ..integration import host, paths, previews, progress, samplers
from ..integration.images import pil_to_image
from ..integration.socket_types import CATEGORY, EPOCHS, EpochFile, EpochSet
from ..style_lora_engine import epoch_stats
from ..style_lora_engine.atomic import safe_join
from ..style_lora_engine.errors import ConfigError, StyleLoRAError
from ..style_lora_engine.grid import compose_grid_with_boxes
from ..style_lora_engine.lora_file import list_epoch_files

# The key of the node's ui output that the canvas's grid picker reads (no "images": the frontend would
# draw the grid a second time under the node).
UI_KEY = "style_lora_grid"


def parse_weights(text: str) -> list[float]:
    try:
        weights = [float(p) for p in re.split(r"[,\s]+", text.strip()) if p]
    except ValueError as exc:
        raise ConfigError(f"LoRA weights must be numbers separated by commas, e.g. '0.6, 0.8, 1.0' ({exc}).") from exc
    if not weights:
        raise ConfigError("Give at least one LoRA weight, e.g. '0.6, 0.8, 1.0'.")
    return weights


def parse_epoch_selection(text: str, available: list[int]) -> list[int]:
    """'all', or a list like '5, 10, 15-20' (ranges inclusive); only epochs that exist."""
    text = text.strip().lower()
    if text in ("", "all"):
        return sorted(available)
    wanted: set[int] = set()
    for part in re.split(r"[,\s]+", text):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise ConfigError(f"Cannot read epoch selection {part!r}; use 'all', e.g. '5, 10, 15-20', or 'best 3'.")
        lo, hi = int(match[1]), int(match[2] or match[1])
        wanted.update(range(lo, hi + 1))
    chosen = sorted(e for e in available if e in wanted)
    if not chosen:
        raise ConfigError(f"None of the epochs {text!r} exist; available: {sorted(available)}.")
    return chosen


def find_saved_epochs(lora_prefix: str) -> EpochSet:
    """Epoch files saved earlier: ``<prefix>-NNNNNN.safetensors`` inside a loras folder."""
    prefix = lora_prefix.strip().replace("\\", "/")
    if not prefix:
        raise ConfigError("Connect the epochs output of SaveEpochs, or enter the saved LoRA name (e.g. 'my_style').")
    sub, _, stem = prefix.rpartition("/")
    for root in paths.lora_search_dirs():
        folder = safe_join(root, sub) if sub else Path(root)
        found = list_epoch_files(folder, stem) if folder.is_dir() else {}
        if found:
            files = tuple(EpochFile(e, p, f"{sub + '/' if sub else ''}{p.name}") for e, p in sorted(found.items()))
            return EpochSet(stem, files)
    raise StyleLoRAError(f"No files named {stem}-000001.safetensors ... found in the loras folder(s) "
                         f"{', '.join(str(r) for r in paths.lora_search_dirs())}.")


def hstack(images: list[Image.Image]) -> Image.Image:
    width = sum(i.width for i in images)
    out = Image.new("RGB", (width, max(i.height for i in images)), "white")
    x = 0
    for img in images:
        out.paste(img.convert("RGB"), (x, 0))
        x += img.width
    return out


def select_epochs(epochs_to_show: str, epoch_set: EpochSet, order: str = epoch_stats.ORDER_EPOCH,
                  ) -> tuple[list[int], dict[int, epoch_stats.EpochStats]]:
    """The epochs ``epochs_to_show`` names ('all', '5, 10-12', or 'best N'), in ``order``, and the stats
    read from their files (each file's header read once)."""
    by_epoch = {f.epoch: f for f in epoch_set.files}
    n = epoch_stats.parse_best_n(epochs_to_show)
    candidates = sorted(by_epoch) if n is not None else parse_epoch_selection(epochs_to_show, list(by_epoch))
    stats = {e: epoch_stats.read_epoch_stats(by_epoch[e].path) for e in candidates}
    rows = [epoch_stats.table_row(e, by_epoch[e].path, by_epoch[e].lora_name, stats[e]) for e in candidates]
    if n is not None:
        rows = epoch_stats.best_n(rows, n)
    shown = [int(r["epoch"]) for r in epoch_stats.order_rows(rows, order)]
    return shown, {e: stats[e] for e in shown}


class StyleLoRAEpochWeightGrid:
    DESCRIPTION = (
        "Renders every chosen epoch at several LoRA weights (the guide's X/Y plot) to find the 'sweet spot'. "
        "The guide's rule: prefer an epoch that looks right at weight 1.0 (a LoRA that needs a low weight "
        "to look right is overtrained). Each row shows the epoch's validation loss (the denoising loss on a "
        "fixed set of images, timesteps and noise, the same for every epoch) and its mean training loss; the "
        "lowest validation loss is marked. Validation loss says how well the LoRA reconstructs images like "
        "the validation set, not how the style looks: use it to choose where to look first ('best 3' in "
        "epochs_to_show, order by validation loss), then judge the images. The table output feeds Pick Epoch; "
        "clicking a cell in the grid sets Pick Epoch's epoch and weight."
    )
    CATEGORY = CATEGORY
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE", "STRING")
    RETURN_NAMES = ("grid", "table")
    OUTPUT_TOOLTIPS = ("The grid image.",
                       "JSON: each shown epoch's validation and training loss and file, for Pick Epoch.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "model": ("MODEL",),
                "clip": ("CLIP",),
                "vae": ("VAE",),
                "prompts": ("STRING", {"default": "a lighthouse on a cliff at dusk", "multiline": True,
                            "tooltip": "One prompt per line; each cell shows every prompt."}),
                "negative": ("STRING", {"default": "", "multiline": True}),
                "weights": ("STRING", {"default": "0.6, 0.8, 1.0"}),
                "epochs_to_show": ("STRING", {"default": "all", "tooltip":
                                   "'all', e.g. '5, 10, 15-20', or 'best 3' (the 3 epochs with the lowest "
                                   "validation loss)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": False}),
                "images_per_prompt": ("INT", {"default": 1, "min": 1, "max": 8}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 150}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 30.0, "step": 0.1}),
                "sampler_name": (samplers.sampler_names(),),
                "scheduler": (samplers.scheduler_names(),),
                "width": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8}),
            },
            # New widgets go last, after lora_name: workflows saved before them keep their widget values.
            "optional": {
                "epochs": (EPOCHS, {"tooltip": "From SaveEpochs; or leave unconnected and name saved files below."}),
                "lora_name": ("STRING", {"default": "", "tooltip":
                              "Name of epochs saved earlier, e.g. 'my_style' for my_style-000001.safetensors."}),
                "order": (list(epoch_stats.ORDERS), {"default": epoch_stats.ORDER_EPOCH, "tooltip":
                          "Rows by epoch, or by validation loss (lowest first; epochs without one last)."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def render(self, model: Any, clip: Any, vae: Any, prompts: str, negative: str, weights: str,
               epochs_to_show: str, seed: int, images_per_prompt: int, steps: int, cfg: float, sampler_name: str,
               scheduler: str, width: int, height: int, epochs: EpochSet | None = None, lora_name: str = "",
               order: str = epoch_stats.ORDER_EPOCH, unique_id: str | None = None) -> dict[str, Any]:
        epoch_set = epochs if epochs is not None else find_saved_epochs(lora_name)
        by_epoch = {f.epoch: f for f in epoch_set.files}
        weight_list = parse_weights(weights)
        shown, stats = select_epochs(epochs_to_show, epoch_set, order)
        prompt_list = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not prompt_list:
            raise ConfigError("Enter at least one prompt (one per line).")
        bar = progress.Progress(len(shown) * len(weight_list), str(unique_id) if unique_id else None)

        def on_cell(done: int, total: int) -> None:
            progress.check_interrupt()
            bar.update_absolute(done, total)

        # Rendered in epoch order whatever the display order: the cells (and the LoRA loader's cache)
        # do not depend on how the rows are sorted.
        cells = host.render_grid_cells(model, clip, vae, [by_epoch[e] for e in sorted(shown)], weight_list,
                                       prompt_list, negative=negative, seed=seed,
                                       images_per_prompt=images_per_prompt, steps=steps, cfg=cfg,
                                       sampler=sampler_name, scheduler=scheduler, width=width, height=height,
                                       on_cell=on_cell)
        table = epoch_stats.build_table(
            epoch_set.output_name, [(e, by_epoch[e].path, by_epoch[e].lora_name) for e in shown], weight_list,
            stats=stats)
        best = table["best_epoch"]
        labels = [epoch_stats.row_label(r, lowest=r["epoch"] == best) for r in table["rows"]]
        grid, boxes = compose_grid_with_boxes(
            [[hstack(cells[(e, w)]) for w in weight_list] for e in shown], labels, [f"{w:g}" for w in weight_list],
            title=f"{epoch_set.output_name}: " + " | ".join(prompt_list),
            marked_rows=[i for i, e in enumerate(shown) if e == best])
        layout = {"image": previews.save_temp_images([grid], f"grid_{epoch_set.output_name}")[0],
                  "epochs": shown, "weights": weight_list, "width": grid.width, "height": grid.height,
                  "cells": [[list(box) for box in row] for row in boxes], "best_epoch": best, "table": table}
        return {"ui": {UI_KEY: [layout]}, "result": (pil_to_image(grid), json.dumps(table))}
