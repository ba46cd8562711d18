"""EpochWeightGrid: the guide's X/Y plot of epochs (rows) against LoRA weights (columns)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from PIL import Image

from ..integration import host, paths, progress, samplers
from ..integration.images import pil_to_image
from ..integration.socket_types import CATEGORY, EPOCHS, EpochFile, EpochSet
from ..style_lora_engine.atomic import safe_join
from ..style_lora_engine.errors import ConfigError, StyleLoRAError
from ..style_lora_engine.grid import compose_grid
from ..style_lora_engine.lora_file import list_epoch_files


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
            raise ConfigError(f"Cannot read epoch selection {part!r}; use 'all' or e.g. '5, 10, 15-20'.")
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


class StyleLoRAEpochWeightGrid:
    DESCRIPTION = ("Renders every chosen epoch at several LoRA weights (the guide's X/Y plot) to find the "
                   "'sweet spot': prefer an epoch that looks right at weight 1.0.")
    CATEGORY = CATEGORY
    FUNCTION = "render"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("grid",)

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
                "epochs_to_show": ("STRING", {"default": "all", "tooltip": "'all' or e.g. '5, 10, 15-20'."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "control_after_generate": False}),
                "images_per_prompt": ("INT", {"default": 1, "min": 1, "max": 8}),
                "steps": ("INT", {"default": 20, "min": 1, "max": 150}),
                "cfg": ("FLOAT", {"default": 7.0, "min": 0.0, "max": 30.0, "step": 0.1}),
                "sampler_name": (samplers.sampler_names(),),
                "scheduler": (samplers.scheduler_names(),),
                "width": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8}),
                "height": ("INT", {"default": 512, "min": 16, "max": 4096, "step": 8}),
            },
            "optional": {
                "epochs": (EPOCHS, {"tooltip": "From SaveEpochs; or leave unconnected and name saved files below."}),
                "lora_name": ("STRING", {"default": "", "tooltip":
                              "Name of epochs saved earlier, e.g. 'my_style' for my_style-000001.safetensors."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def render(self, model: Any, clip: Any, vae: Any, prompts: str, negative: str, weights: str,
               epochs_to_show: str, seed: int, images_per_prompt: int, steps: int, cfg: float, sampler_name: str,
               scheduler: str, width: int, height: int, epochs: EpochSet | None = None, lora_name: str = "",
               unique_id: str | None = None) -> tuple[Any]:
        epoch_set = epochs if epochs is not None else find_saved_epochs(lora_name)
        by_epoch = {f.epoch: f for f in epoch_set.files}
        chosen = parse_epoch_selection(epochs_to_show, list(by_epoch))
        weight_list = parse_weights(weights)
        prompt_list = [p.strip() for p in prompts.splitlines() if p.strip()]
        if not prompt_list:
            raise ConfigError("Enter at least one prompt (one per line).")
        bar = progress.Progress(len(chosen) * len(weight_list), str(unique_id) if unique_id else None)

        def on_cell(done: int, total: int) -> None:
            progress.check_interrupt()
            bar.update_absolute(done, total)

        cells = host.render_grid_cells(model, clip, vae, [by_epoch[e] for e in chosen], weight_list, prompt_list,
                             negative=negative, seed=seed, images_per_prompt=images_per_prompt, steps=steps,
                             cfg=cfg, sampler=sampler_name, scheduler=scheduler, width=width, height=height,
                             on_cell=on_cell)
        rows = [[hstack(cells[(e, w)]) for w in weight_list] for e in chosen]
        grid = compose_grid(rows, [f"epoch {e}" for e in chosen], [f"{w:g}" for w in weight_list],
                            title=f"{epoch_set.output_name}: " + " | ".join(prompt_list))
        return (pil_to_image(grid),)
