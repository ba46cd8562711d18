"""The numbers training writes into epoch files, read back: the table, the best epoch, the pick rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from style_lora_trainer.style_lora_engine import epoch_stats
from style_lora_trainer.style_lora_engine.epoch_stats import (
    EpochStats,
    best_epoch,
    best_n,
    build_table,
    describe_validation_set,
    order_rows,
    parse_best_n,
    pick_epoch,
    read_epoch_stats,
    row_label,
)
from style_lora_trainer.style_lora_engine.errors import ConfigError

VALIDATION_SET = {"source": "training images", "images": 8, "timesteps": [100, 500, 900]}


def epoch_file(folder: Path, epoch: int, **meta: str) -> Path:
    path = folder / f"my_style-{epoch:06d}.safetensors"
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(path), metadata=meta or None)
    return path


def with_stats(folder: Path, epoch: int, val: float | None, mean: float | None = None) -> Path:
    meta = {"ss_validation_loss_base": repr(0.21), "ss_validation_set": json.dumps(VALIDATION_SET)}
    if val is not None:
        meta["ss_validation_loss"] = repr(val)
    if mean is not None:
        meta["ss_epoch_mean_loss"] = repr(mean)
    return epoch_file(folder, epoch, **meta)


def row(epoch: int, val: float | None, mean: float | None = None) -> dict:
    return {"epoch": epoch, "validation_loss": val, "mean_loss": mean, "file": f"f{epoch}", "lora_name": f"f{epoch}"}


def test_reads_all_four_keys(tmp_path: Path) -> None:
    path = epoch_file(tmp_path, 3, ss_validation_loss=repr(0.1234567), ss_validation_loss_base=repr(0.2),
                      ss_validation_set=json.dumps(VALIDATION_SET), ss_epoch_mean_loss=repr(0.14),
                      ss_output_name="my_style")
    assert read_epoch_stats(path) == EpochStats(0.1234567, 0.2, VALIDATION_SET, 0.14)
    assert read_epoch_stats(str(path)).validation_loss == 0.1234567  # str paths too


def test_old_files_and_bad_values_give_none(tmp_path: Path) -> None:
    assert read_epoch_stats(epoch_file(tmp_path, 1)) == EpochStats()  # no metadata at all
    assert read_epoch_stats(epoch_file(tmp_path, 2, ss_output_name="x")) == EpochStats()
    bad = epoch_file(tmp_path, 3, ss_validation_loss="n/a", ss_validation_loss_base="nan",
                     ss_validation_set="{not json", ss_epoch_mean_loss="inf")
    assert read_epoch_stats(bad) == EpochStats()
    assert read_epoch_stats(epoch_file(tmp_path, 4, ss_validation_set="[1, 2]")).validation_set is None
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a safetensors file")
    assert read_epoch_stats(broken) == EpochStats()
    assert read_epoch_stats(tmp_path / "missing.safetensors") == EpochStats()


def test_describe_validation_set() -> None:
    assert describe_validation_set(VALIDATION_SET) == "training images (8 images)"
    assert describe_validation_set({"source": "held out", "images": 1}) == "held out (1 image)"
    assert describe_validation_set({"source": "folder"}) == "folder"
    assert describe_validation_set(None) == ""


def test_table_has_the_documented_shape(tmp_path: Path) -> None:
    files = [(e, with_stats(tmp_path, e, v, m), f"sub/my_style-{e:06d}.safetensors")
             for e, v, m in [(1, 0.19, 0.2), (2, 0.17, 0.18), (3, None, None)]]
    table = build_table("my_style", files, [0.8, 0.9, 1])
    assert table == {
        "output_name": "my_style", "validation": "training images (8 images)", "base_validation_loss": 0.21,
        "best_epoch": 2, "weights": [0.8, 0.9, 1.0],
        "rows": [
            {"epoch": 1, "validation_loss": 0.19, "mean_loss": 0.2, "file": "my_style-000001.safetensors",
             "lora_name": "sub/my_style-000001.safetensors"},
            {"epoch": 2, "validation_loss": 0.17, "mean_loss": 0.18, "file": "my_style-000002.safetensors",
             "lora_name": "sub/my_style-000002.safetensors"},
            {"epoch": 3, "validation_loss": None, "mean_loss": None, "file": "my_style-000003.safetensors",
             "lora_name": "sub/my_style-000003.safetensors"},
        ],
    }
    assert json.loads(json.dumps(table)) == table  # plain JSON (no NaN)
    # Stats handed in are used as they are (no file read); rows keep the given order.
    given = build_table("x", [(3, tmp_path / "absent", "a"), (1, tmp_path / "absent", "b")], [1.0],
                        stats={3: EpochStats(0.5), 1: EpochStats(0.4)})
    assert [r["epoch"] for r in given["rows"]] == [3, 1] and given["best_epoch"] == 1
    assert given["validation"] == "" and given["base_validation_loss"] is None


def test_old_files_table_has_no_best_epoch(tmp_path: Path) -> None:
    table = build_table("old", [(e, epoch_file(tmp_path, e), f"old-{e}") for e in (1, 2)], [1.0])
    assert table["best_epoch"] is None and table["validation"] == "" and table["base_validation_loss"] is None
    assert all(r["validation_loss"] is None and r["mean_loss"] is None for r in table["rows"])


def test_best_epoch_ties_go_to_the_later_epoch() -> None:
    assert best_epoch([row(1, 0.3), row(2, 0.1), row(3, 0.2)]) == 2
    assert best_epoch([row(1, 0.1), row(4, 0.1), row(2, 0.1)]) == 4
    assert best_epoch([row(1, None), row(2, 0.5)]) == 2
    assert best_epoch([row(1, None)]) is None and best_epoch([]) is None


def test_order_rows() -> None:
    rows = [row(1, 0.3), row(2, None), row(3, 0.1), row(4, 0.1), row(5, None)]
    assert [r["epoch"] for r in order_rows(rows, "epoch")] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in order_rows(rows[::-1], "epoch")] == [1, 2, 3, 4, 5]
    # lowest first, ties: later epoch first (as best_epoch), rows without a number last by epoch
    assert [r["epoch"] for r in order_rows(rows, "validation loss")] == [4, 3, 1, 2, 5]
    with pytest.raises(ConfigError, match="order must be one of"):
        order_rows(rows, "loss")


def test_best_n() -> None:
    assert parse_best_n("best 3") == 3 and parse_best_n("  Best3 ") == 3
    assert parse_best_n("all") is None and parse_best_n("5, 10") is None and parse_best_n("best") is None
    with pytest.raises(ConfigError, match="at least 1"):
        parse_best_n("best 0")
    rows = [row(1, 0.3), row(2, None), row(3, 0.1), row(4, 0.2), row(5, 0.1)]
    assert [r["epoch"] for r in best_n(rows, 2)] == [3, 5]  # in epoch order
    assert [r["epoch"] for r in best_n(rows, 3)] == [3, 4, 5]
    assert [r["epoch"] for r in best_n(rows, 10)] == [1, 3, 4, 5]  # rows without a number left out
    assert [r["epoch"] for r in best_n([row(1, 0.1), row(2, 0.1), row(3, 0.1)], 1)] == [3]  # tie → later
    with pytest.raises(ConfigError, match="Train with this version"):
        best_n([row(1, None), row(2, None)], 2)


def test_pick_lowest_validation_loss_ignores_the_epoch() -> None:
    rows = [row(1, 0.3), row(2, 0.1), row(3, 0.1), row(4, None)]
    assert pick_epoch(rows, "lowest validation loss")["epoch"] == 3
    assert pick_epoch(rows, "lowest validation loss", epoch=1)["epoch"] == 3


def test_pick_lowest_without_numbers_explains_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        pick_epoch([row(1, None), row(2, None)], "lowest validation loss")
    message = str(err.value)
    assert "Train with this version" in message and "'chosen cell'" in message and "[1, 2]" in message


def test_pick_chosen_cell() -> None:
    rows = [row(1, 0.3), row(2, 0.1), row(3, None)]
    assert pick_epoch(rows, "chosen cell", epoch=3) is rows[2]
    assert pick_epoch(rows, "chosen cell", epoch=1)["epoch"] == 1
    with pytest.raises(ConfigError, match=r"Epoch 7 is not among the epochs \[1, 2, 3\]"):
        pick_epoch(rows, "chosen cell", epoch=7)
    with pytest.raises(ConfigError, match="needs an epoch"):
        pick_epoch(rows, "chosen cell")
    with pytest.raises(ConfigError, match="rule must be one of"):
        pick_epoch(rows, "best looking", epoch=1)
    with pytest.raises(ConfigError, match="no epochs"):
        pick_epoch([], "chosen cell", epoch=1)


def test_row_label() -> None:
    assert row_label(row(3, 0.123456, 0.14)) == "epoch 3\nval 0.1235 · loss 0.1400"
    assert row_label(row(12, None, 0.2)) == "epoch 12\nval - · loss 0.2000"
    assert row_label(row(1, 0.1), lowest=True) == f"epoch 1\nval 0.1000 · loss -\n{epoch_stats.LOWEST_MARK}"
