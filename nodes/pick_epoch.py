"""PickEpoch: the epoch (and weight) to use after the grid, by the lowest validation loss or by the cell
clicked in the grid, optionally applied to a MODEL/CLIP as LoraLoader applies it."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..integration import host, paths
from ..integration.socket_types import CATEGORY, EPOCHS, EpochSet
from ..style_lora_engine import epoch_stats
from ..style_lora_engine.atomic import safe_join
from ..style_lora_engine.errors import ConfigError, StyleLoRAError
from .epoch_weight_grid import find_saved_epochs

_GUIDE = ("The guide's rule: prefer an epoch that looks right at weight 1.0. Validation loss says how well the "
          "LoRA reconstructs images like its validation set, not how the style looks; check the grid.")


def parse_table(text: str) -> dict[str, Any]:
    """The grid's ``table`` output (JSON), checked enough that a wrong string gives a clear error."""
    fix = "connect the table output of an Epoch × Weight Grid node (or disconnect it and use epochs/lora_name)"
    try:
        table = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"The table input is not valid JSON ({exc}); {fix}.") from exc
    rows = table.get("rows") if isinstance(table, dict) else None
    if not isinstance(rows, list):
        raise ConfigError(f"The table input has no 'rows' list; {fix}.")
    for row in rows:
        ok = (isinstance(row, dict) and isinstance(row.get("epoch"), int) and not isinstance(row["epoch"], bool)
              and isinstance(row.get("lora_name"), str) and row["lora_name"]
              and all(row.get(k) is None or (isinstance(row[k], int | float) and not isinstance(row[k], bool))
                      for k in ("validation_loss", "mean_loss")))
        if not ok:
            raise ConfigError(f"The table input has a row that is not an epoch row ({str(row)[:120]}); {fix}.")
    return table


def _table_from_epochs(epoch_set: EpochSet) -> dict[str, Any]:
    return epoch_stats.build_table(epoch_set.output_name, [(f.epoch, f.path, f.lora_name) for f in epoch_set.files],
                                   [])


def _lora_path(lora_name: str) -> Path | None:
    """The file LoraLoader would load for ``lora_name`` (first loras folder holding it), or None."""
    for root in paths.lora_search_dirs():
        try:
            candidate = safe_join(root, lora_name)
        except StyleLoRAError:
            return None
        if candidate.is_file():
            return candidate
    return None


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, int | float) else "-"


def describe(row: Mapping[str, Any], rule: str, weight: float, table: Mapping[str, Any], applied: bool) -> str:
    """The info output: what was picked, why, and the guide's rule."""
    epoch = int(row["epoch"])
    if rule == epoch_stats.RULE_LOWEST:
        source = f" on {table['validation']}" if table.get("validation") else ""
        why = f"lowest validation loss{source}: {_fmt(row.get('validation_loss'))}"
        base = table.get("base_validation_loss")
        if isinstance(base, int | float):
            why += f" (before training {_fmt(base)})"
        scored = [r for r in table.get("rows", []) if isinstance(r.get("validation_loss"), int | float)]
        if len(scored) > 1:
            why += f", lowest of {len(scored)} epochs"
    else:
        why = "the chosen cell (the epoch and weight widgets; a click in the grid sets them)"
    lines = [f"Picked epoch {epoch} at weight {weight:g}: {row['lora_name']}",
             f"Why: {why}.",
             f"Validation loss {_fmt(row.get('validation_loss'))}, mean training loss {_fmt(row.get('mean_loss'))}.",
             "Applied to the connected model and clip." if applied
             else "Not applied (no model connected): load lora_name with a LoraLoader at strength.",
             _GUIDE]
    if weight != 1.0:
        lines.append(f"Weight {weight:g}, not 1.0: an epoch that only looks right below 1.0 is often overtrained; "
                     "an earlier epoch at 1.0 may be the better pick.")
    return "\n".join(lines)


class StyleLoRAPickEpoch:
    DESCRIPTION = (
        "Picks the epoch to use after the Epoch × Weight Grid: by the lowest validation loss, or the cell you "
        "chose (click a cell in the grid; it sets epoch and weight here). Outputs its lora_name and strength, "
        "and with model and clip connected applies it as LoraLoader does. " + _GUIDE
    )
    CATEGORY = CATEGORY
    FUNCTION = "pick"
    RETURN_TYPES = ("MODEL", "CLIP", "STRING", "FLOAT", "STRING")
    RETURN_NAMES = ("model", "clip", "lora_name", "strength", "info")
    # Runs (and shows its choice) even with nothing connected after it, like a preview.
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("The model with the picked LoRA (None when no model is connected).",
                       "The clip with the picked LoRA (None when no model is connected).",
                       "The picked epoch's name in LoraLoader's list.", "The weight to load it at.",
                       "What was picked and why.")

    @classmethod
    def INPUT_TYPES(cls) -> dict[str, Any]:
        return {
            "required": {
                "rule": (list(epoch_stats.RULES), {"default": epoch_stats.RULE_LOWEST, "tooltip":
                         "'lowest validation loss' ignores the epoch widget; 'chosen cell' uses epoch and weight "
                         "(a click in the grid sets them)."}),
                "epoch": ("INT", {"default": 1, "min": 1, "max": 1000, "tooltip": "The epoch for 'chosen cell'."}),
                "weight": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                           "tooltip": "The LoRA strength (model and clip), as LoraLoader's."}),
            },
            "optional": {
                "table": ("STRING", {"forceInput": True, "tooltip": "The table output of the Epoch × Weight Grid."}),
                "epochs": (EPOCHS, {"tooltip": "From Save Epochs, when no grid table is connected."}),
                "lora_name": ("STRING", {"default": "", "tooltip":
                              "Name of epochs saved earlier, e.g. 'my_style' (when no table or epochs)."}),
                "model": ("MODEL",),
                "clip": ("CLIP",),
            },
        }

    def pick(self, rule: str, epoch: int, weight: float, table: str | None = None, epochs: EpochSet | None = None,
             lora_name: str = "", model: Any = None, clip: Any = None) -> dict[str, Any]:
        if table is not None and str(table).strip():
            parsed = parse_table(str(table))
        elif epochs is not None:
            parsed = _table_from_epochs(epochs)
        elif lora_name.strip():
            parsed = _table_from_epochs(find_saved_epochs(lora_name))
        else:
            raise ConfigError("Pick Epoch needs epochs to pick from: connect the grid's table output, Save Epochs' "
                              "epochs output, or enter the saved LoRA name in lora_name (e.g. 'my_style').")
        row = epoch_stats.pick_epoch(parsed["rows"], rule, epoch)
        name, strength = str(row["lora_name"]), float(weight)
        out_model, out_clip = None, None
        if model is not None:
            known = {f.lora_name: f.path for f in epochs.files} if epochs is not None else {}
            out_model, out_clip = host.apply_lora(model, clip, name, known.get(name) or _lora_path(name), strength)
        info = describe(row, rule, strength, parsed, applied=model is not None)
        return {"ui": {"text": [info]}, "result": (out_model, out_clip, name, strength, info)}
