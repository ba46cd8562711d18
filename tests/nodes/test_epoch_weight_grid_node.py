"""The Epoch × Weight Grid node's sweet-spot finder: annotated rows, order, 'best N', the table output and
the layout the canvas's grid picker reads (cell boxes in the grid image's pixels)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from epoch_fixtures import LOSSES, OwnHostModel, cell_colour, loras_folder, write_epochs
from PIL import Image

from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS as NODES
from style_lora_trainer.nodes.epoch_weight_grid import UI_KEY
from style_lora_trainer.style_lora_engine.errors import ConfigError

GRID = NODES["StyleLoRAEpochWeightGrid"]
# The widget order of workflows saved before issue 9: new widgets must come after these.
OLD_REQUIRED = ["model", "clip", "vae", "prompts", "negative", "weights", "epochs_to_show", "seed",
                "images_per_prompt", "steps", "cfg", "sampler_name", "scheduler", "width", "height"]
OLD_OPTIONAL = ["epochs", "lora_name"]


@pytest.fixture
def loras(tmp_path, monkeypatch) -> Path:
    return loras_folder(tmp_path, monkeypatch)


def render(model, **kw):
    args = dict(model=model, clip=model, vae=model, prompts="a red circle\na blue square", negative="",
                weights="0.8, 1.0", epochs_to_show="all", seed=1, images_per_prompt=1, steps=2, cfg=1.0,
                sampler_name="euler", scheduler="normal", width=32, height=24)
    args.update(kw)
    return GRID().render(**args)


def grid_pixels(tensor) -> np.ndarray:
    return np.round(tensor[0].numpy() * 255).astype(np.uint8)


def test_new_widgets_leave_old_workflows_widget_positions_alone():
    spec = GRID.INPUT_TYPES()
    assert list(spec["required"]) == OLD_REQUIRED
    assert list(spec["optional"])[: len(OLD_OPTIONAL)] == OLD_OPTIONAL
    assert spec["optional"]["order"][0] == ["epoch", "validation loss"]
    assert spec["optional"]["order"][1]["default"] == "epoch"
    assert "best 3" in spec["required"]["epochs_to_show"][1]["tooltip"]
    assert GRID.RETURN_TYPES == ("IMAGE", "STRING") and GRID.RETURN_NAMES == ("grid", "table")
    assert "1.0" in GRID.DESCRIPTION and "validation loss" in GRID.DESCRIPTION.lower()
    assert "not how the style looks" in GRID.DESCRIPTION


def test_grid_layout_cells_are_the_pixels_of_each_cell(loras):
    epochs = write_epochs(loras, "my_style", LOSSES, subfolder="sub", mean={e: 0.2 for e in LOSSES})
    model = OwnHostModel()
    out = render(model, epochs=epochs, unique_id="9")
    assert set(out) == {"ui", "result"} and set(out["ui"]) == {UI_KEY}  # no "images": the picker draws it
    grid, table_text = out["result"]
    (layout,) = out["ui"][UI_KEY]
    arr = grid_pixels(grid)
    assert (layout["width"], layout["height"]) == (arr.shape[1], arr.shape[0])
    assert layout["epochs"] == [1, 2, 3, 4, 5] and layout["weights"] == [0.8, 1.0]
    assert layout["best_epoch"] == 4  # 2 and 4 tie at 0.12: the later epoch
    assert len(layout["cells"]) == 5 and all(len(r) == 2 for r in layout["cells"])
    for i, e in enumerate(layout["epochs"]):
        for j, w in enumerate(layout["weights"]):
            x0, y0, x1, y1 = layout["cells"][i][j]
            assert (x1 - x0, y1 - y0) == (64 * 6, 24 * 6)  # two 32x24 prompts side by side, x6 (128 / 24)
            assert np.all(arr[y0:y1, x0:x1] == np.array(cell_colour(e, w), dtype=np.uint8))
    # the saved preview is the grid image itself
    ref = layout["image"]
    assert ref["type"] == "temp" and ref["subfolder"] == "style_lora" and ref["filename"].startswith("grid_my_style")
    saved = loras.parent / "output" / "temp" / "style_lora" / ref["filename"]
    with Image.open(saved) as img:
        assert np.array_equal(np.asarray(img.convert("RGB")), arr)
    # the table output is the layout's table, as JSON
    table = json.loads(table_text)
    assert table == layout["table"]
    assert table["output_name"] == "my_style" and table["best_epoch"] == 4 and table["weights"] == [0.8, 1.0]
    assert table["validation"] == "training images (8 images)" and table["base_validation_loss"] == 0.25
    assert [r["epoch"] for r in table["rows"]] == [1, 2, 3, 4, 5]
    assert table["rows"][3] == {"epoch": 4, "validation_loss": 0.12, "mean_loss": 0.2,
                                "file": "my_style-000004.safetensors",
                                "lora_name": "sub/my_style-000004.safetensors"}


def test_order_by_validation_loss_and_best_n(loras):
    epochs = write_epochs(loras, "my_style", LOSSES)
    model = OwnHostModel()
    out = render(model, epochs=epochs, order="validation loss")
    (layout,) = out["ui"][UI_KEY]
    assert layout["epochs"] == [4, 2, 3, 1, 5]
    assert [r["epoch"] for r in layout["table"]["rows"]] == [4, 2, 3, 1, 5]
    arr = grid_pixels(out["result"][0])
    x0, y0, x1, y1 = layout["cells"][0][1]
    assert np.all(arr[y0:y1, x0:x1] == np.array(cell_colour(4, 1.0), dtype=np.uint8))  # first row: epoch 4
    assert model.rendered[-1] == [1, 2, 3, 4, 5]  # rendered in epoch order whatever the display order

    out = render(model, epochs=epochs, epochs_to_show="best 3")
    assert out["ui"][UI_KEY][0]["epochs"] == [2, 3, 4] and model.rendered[-1] == [2, 3, 4]
    out = render(model, epochs=epochs, epochs_to_show="Best 2", order="validation loss")
    assert out["ui"][UI_KEY][0]["epochs"] == [4, 2] and model.rendered[-1] == [2, 4]
    # an explicit selection: best_epoch is the best of the shown rows
    out = render(model, epochs=epochs, epochs_to_show="1, 3, 5")
    assert out["ui"][UI_KEY][0]["best_epoch"] == 3 and json.loads(out["result"][1])["best_epoch"] == 3


def test_lowest_row_is_marked_in_the_image(loras):
    from style_lora_trainer.style_lora_engine.grid import MARK

    epochs = write_epochs(loras, "my_style", {1: 0.3, 2: 0.1, 3: 0.2})
    out = render(OwnHostModel(), epochs=epochs)
    arr = grid_pixels(out["result"][0])
    cells = out["ui"][UI_KEY][0]["cells"]
    is_mark = np.all(arr == np.array(MARK, dtype=np.uint8), axis=-1)
    x0, y0 = cells[1][0][:2]
    x1, y1 = cells[1][-1][2:]
    assert is_mark[y0 - 1, x0:x1].all() and is_mark[y1, x0:x1].all()  # a frame around epoch 2's row
    assert not is_mark[cells[0][0][1] - 1, x0:x1].any()  # none around epoch 1's


def test_old_files_without_numbers_still_render(loras):
    epochs = write_epochs(loras, "old", {1: None, 2: None})
    out = render(OwnHostModel(), epochs=epochs, order="validation loss")
    (layout,) = out["ui"][UI_KEY]
    assert layout["best_epoch"] is None and layout["epochs"] == [1, 2]
    table = json.loads(out["result"][1])
    assert table["validation"] == "" and all(r["validation_loss"] is None for r in table["rows"])
    with pytest.raises(ConfigError, match="Train with this version"):
        render(OwnHostModel(), epochs=epochs, epochs_to_show="best 2")


def test_grid_from_saved_files_by_name(loras):
    write_epochs(loras, "my_style", LOSSES, subfolder="styles")
    out = render(OwnHostModel(), lora_name="styles/my_style", epochs_to_show="best 1")
    table = json.loads(out["result"][1])
    assert [r["lora_name"] for r in table["rows"]] == ["styles/my_style-000004.safetensors"]
