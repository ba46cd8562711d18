"""The numbers training writes into each epoch file (validation loss, mean training loss), read back
for the sweet-spot finder: the grid's row labels and its ``table`` output, and Pick Epoch's rule.

Validation loss is the denoising loss on a fixed set of images, timesteps and noise, the same for
every epoch, so epochs compare fairly. It says how well the LoRA reconstructs images like the
validation set, not how the style looks: the guide's rule stays "prefer an epoch that looks right
at weight 1.0", and the number only points at where to look first.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError

# Metadata keys written by training (absent in files from older versions, or when unknown).
KEY_VALIDATION_LOSS = "ss_validation_loss"
KEY_VALIDATION_LOSS_BASE = "ss_validation_loss_base"
KEY_VALIDATION_SET = "ss_validation_set"
KEY_EPOCH_MEAN_LOSS = "ss_epoch_mean_loss"

RULE_LOWEST = "lowest validation loss"
RULE_CHOSEN = "chosen cell"
RULES = (RULE_LOWEST, RULE_CHOSEN)

ORDER_EPOCH = "epoch"
ORDER_VALIDATION = "validation loss"
ORDERS = (ORDER_EPOCH, ORDER_VALIDATION)

# The grid's font has Latin-1 glyphs only (no en dash or star): these draw everywhere.
MISSING = "-"
LOWEST_MARK = "» lowest val"

_BEST_N = re.compile(r"best\s*(\d+)")


@dataclass(frozen=True)
class EpochStats:
    """What one epoch file says about its training; every field None when the file does not say."""

    validation_loss: float | None = None
    validation_loss_base: float | None = None
    validation_set: dict[str, Any] | None = None
    mean_loss: float | None = None


def _float(text: str | None) -> float | None:
    # A NaN/inf loss cannot be ranked; treat it like a missing number.
    try:
        value = float(text) if text is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and math.isfinite(value) else None


def _json_dict(text: str | None) -> dict[str, Any] | None:
    try:
        value = json.loads(text) if text else None
    except (TypeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def stats_from_metadata(metadata: Mapping[str, str] | None) -> EpochStats:
    """The stats in a file's ``__metadata__``; missing or unparsable keys become None."""
    meta = metadata or {}
    return EpochStats(
        validation_loss=_float(meta.get(KEY_VALIDATION_LOSS)),
        validation_loss_base=_float(meta.get(KEY_VALIDATION_LOSS_BASE)),
        validation_set=_json_dict(meta.get(KEY_VALIDATION_SET)),
        mean_loss=_float(meta.get(KEY_EPOCH_MEAN_LOSS)),
    )


def read_epoch_stats(path: str | Path) -> EpochStats:
    """The stats of one epoch file, from its header only (no tensors read).

    A file that cannot be read gives empty stats: the numbers only annotate the grid, and the grid's
    own loading of the file reports a broken file clearly."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            metadata = fh.metadata()
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return EpochStats()
    return stats_from_metadata(metadata)


def describe_validation_set(validation_set: Mapping[str, Any] | None) -> str:
    """E.g. "training images (8 images)"; "" when the files do not say."""
    if not validation_set:
        return ""
    source = str(validation_set.get("source") or "validation images")
    images = validation_set.get("images")
    if isinstance(images, int) and not isinstance(images, bool):
        return f"{source} ({images} image{'' if images == 1 else 's'})"
    return source


def table_row(epoch: int, file: str | Path, lora_name: str, stats: EpochStats) -> dict[str, Any]:
    """One row of the table: the epoch, its numbers (None when unknown) and its file names."""
    return {"epoch": int(epoch), "validation_loss": stats.validation_loss, "mean_loss": stats.mean_loss,
            "file": Path(file).name, "lora_name": lora_name}


def best_epoch(rows: Sequence[Mapping[str, Any]]) -> int | None:
    """The epoch with the lowest validation loss (ties: the later epoch); None when no row has one."""
    scored = [r for r in rows if _float_or_none(r.get("validation_loss")) is not None]
    if not scored:
        return None
    # Ties go to the later epoch: it has seen more training for the same loss.
    best = min(scored, key=lambda r: (float(r["validation_loss"]), -int(r["epoch"])))
    return int(best["epoch"])


def _float_or_none(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def epoch_table(output_name: str, rows: Sequence[Mapping[str, Any]], weights: Sequence[float], *,
                validation: str = "", base_validation_loss: float | None = None) -> dict[str, Any]:
    """The grid's ``table`` output (and Pick Epoch's input); rows in the grid's displayed order."""
    return {"output_name": output_name, "validation": validation, "base_validation_loss": base_validation_loss,
            "best_epoch": best_epoch(rows), "weights": [float(w) for w in weights], "rows": [dict(r) for r in rows]}


def build_table(output_name: str, files: Sequence[tuple[int, str | Path, str]], weights: Sequence[float],
                stats: Mapping[int, EpochStats] | None = None) -> dict[str, Any]:
    """The table for ``files`` ((epoch, path, lora_name), in displayed order), reading each file's stats
    unless ``stats`` (by epoch) already holds them."""
    known = dict(stats or {})
    per_file = [(e, p, n, known[e] if e in known else read_epoch_stats(p)) for e, p, n in files]
    rows = [table_row(e, p, n, s) for e, p, n, s in per_file]
    # One run's files share the validation set and base loss; take the first file that records them.
    validation = next((describe_validation_set(s.validation_set) for *_, s in per_file if s.validation_set), "")
    base = next((s.validation_loss_base for *_, s in per_file if s.validation_loss_base is not None), None)
    return epoch_table(output_name, rows, weights, validation=validation, base_validation_loss=base)


def order_rows(rows: Sequence[Mapping[str, Any]], order: str) -> list[Mapping[str, Any]]:
    """``rows`` by epoch, or by validation loss (lowest first, ties: later epoch first; rows without a
    number last, by epoch)."""
    if order == ORDER_EPOCH:
        return sorted(rows, key=lambda r: int(r["epoch"]))
    if order == ORDER_VALIDATION:
        def key(r: Mapping[str, Any]) -> tuple[int, float, int]:
            loss = _float_or_none(r.get("validation_loss"))
            return (0, loss, -int(r["epoch"])) if loss is not None else (1, 0.0, int(r["epoch"]))
        return sorted(rows, key=key)
    raise ConfigError(f"order must be one of {', '.join(repr(o) for o in ORDERS)}, not {order!r}.")


def parse_best_n(text: str) -> int | None:
    """N for an ``epochs_to_show`` of "best N" (e.g. "best 3"); None for any other text."""
    match = _BEST_N.fullmatch(text.strip().lower())
    if not match:
        return None
    n = int(match[1])
    if n < 1:
        raise ConfigError("epochs_to_show 'best N' needs N of at least 1, e.g. 'best 3'.")
    return n


def _no_validation(what: str, epochs: Sequence[int]) -> ConfigError:
    return ConfigError(
        f"{what} needs validation losses, but none of the epoch files {list(epochs)} records one (they were "
        "trained by an older version, or without validation). Train with this version of Style LoRA Trainer "
        "to record them, or choose 'chosen cell' and pick the epoch and weight yourself (click a cell of the "
        "grid)."
    )


def best_n(rows: Sequence[Mapping[str, Any]], n: int) -> list[Mapping[str, Any]]:
    """The ``n`` rows with the lowest validation loss (ties: later epoch), returned in epoch order.

    Rows without a number are left out; a clear error when no row has one."""
    scored = [r for r in rows if _float_or_none(r.get("validation_loss")) is not None]
    if not scored:
        raise _no_validation(f"epochs_to_show 'best {n}'", [int(r["epoch"]) for r in rows])
    return sorted(order_rows(scored, ORDER_VALIDATION)[:n], key=lambda r: int(r["epoch"]))


def pick_epoch(rows: Sequence[Mapping[str, Any]], rule: str, epoch: int | None = None) -> Mapping[str, Any]:
    """The row ``rule`` picks: "lowest validation loss" (ties: later epoch; ``epoch`` ignored) or
    "chosen cell" (the row of ``epoch``)."""
    if not rows:
        raise ConfigError("There are no epochs to pick from: connect the grid's table, Save Epochs' epochs, "
                          "or enter the saved LoRA name.")
    epochs = [int(r["epoch"]) for r in rows]
    if rule == RULE_LOWEST:
        best = best_epoch(rows)
        if best is None:
            raise _no_validation("rule 'lowest validation loss'", epochs)
        chosen = best
    elif rule == RULE_CHOSEN:
        if epoch is None:
            raise ConfigError("rule 'chosen cell' needs an epoch: set the epoch widget or click a cell of the grid.")
        chosen = int(epoch)
    else:
        raise ConfigError(f"rule must be one of {', '.join(repr(r) for r in RULES)}, not {rule!r}.")
    for row in rows:
        if int(row["epoch"]) == chosen:
            return row
    raise ConfigError(f"Epoch {chosen} is not among the epochs {sorted(epochs)}; set the epoch widget to one "
                      "of them (or click a cell of the grid).")


def row_label(row: Mapping[str, Any], *, lowest: bool = False) -> str:
    """The grid's row label: "epoch 3", then "val 0.1234 · loss 0.1400" ("-" for a missing number), then
    the mark on the row with the lowest validation loss."""
    val, loss = _float_or_none(row.get("validation_loss")), _float_or_none(row.get("mean_loss"))
    numbers = (f"val {val:.4f}" if val is not None else f"val {MISSING}") + (
        f" · loss {loss:.4f}" if loss is not None else f" · loss {MISSING}")
    lines = [f"epoch {int(row['epoch'])}", numbers]
    if lowest:
        lines.append(LOWEST_MARK)
    return "\n".join(lines)
