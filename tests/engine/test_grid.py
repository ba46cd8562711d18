"""Epoch x weight grid, loss plot and ComfyUI IMAGE conversion."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from style_lora_trainer.style_lora_engine.grid import (
    MARK,
    MIN_CELL,
    compose_grid,
    compose_grid_with_boxes,
    plot_loss,
    smooth_ema,
)


def colour(i: int, j: int) -> tuple[int, int, int]:
    # Unique, saturated, never near white or black-text grey.
    return (40 + 9 * i, 60 + 37 * j, 200 - 5 * i)


def checker(i: int, j: int, size: int) -> Image.Image:
    """A cell in colour(i, j) with one dark pixel in the corner (to check NEAREST placement)."""
    img = Image.new("RGB", (size, size), colour(i, j))
    img.putpixel((0, 0), (0, 0, 0))
    return img


def find_box(arr: np.ndarray, rgb: tuple[int, int, int]) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(np.all(arr == np.array(rgb, dtype=arr.dtype), axis=-1))
    assert len(xs), f"colour {rgb} not found"
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def dark(region: np.ndarray) -> bool:
    return bool((region.max(axis=-1) < 128).any())


def grid(rows: int, cols: int, size: int = 32, **kw) -> tuple[Image.Image, list[list[Image.Image]]]:
    cells = [[checker(i, j, size) for j in range(cols)] for i in range(rows)]
    img = compose_grid(cells, [f"epoch {i + 1}" for i in range(rows)],
                       [f"{j * 0.25:.2f}" for j in range(cols)], **kw)
    return img, cells


def test_grid_grows_with_rows_and_cols() -> None:
    one, _ = grid(1, 1)
    wide, _ = grid(1, 5)
    tall, _ = grid(20, 1)
    big, _ = grid(20, 5)
    assert wide.width > one.width and wide.height == one.height
    assert tall.height > one.height
    assert big.width >= wide.width and big.height >= tall.height  # "epoch 20" is wider than "epoch 1"
    assert big.mode == "RGB"


@pytest.mark.parametrize(("rows", "cols"), [(1, 1), (2, 3), (20, 5)])
def test_cells_are_upscaled_and_placed_in_order(rows: int, cols: int) -> None:
    img, cells = grid(rows, cols, size=32)
    arr = np.asarray(img)
    scale = MIN_CELL // 32
    boxes = [[find_box(arr, colour(i, j)) for j in range(cols)] for i in range(rows)]
    side = 32 * scale
    for i in range(rows):
        for j in range(cols):
            x0, y0, x1, y1 = boxes[i][j]
            assert (x1 - x0, y1 - y0) == (side, side)
            # the whole cell is the NEAREST-upscaled source, dark corner pixel included
            expected = np.asarray(cells[i][j].resize((side, side), Image.Resampling.NEAREST))
            assert np.array_equal(arr[y0:y1, x0:x1], expected)
            assert dark(arr[y0:y0 + scale, x0:x0 + scale])
            if j:
                assert x0 > boxes[i][j - 1][2] and y0 == boxes[i][j - 1][1]  # same row, to the right
            if i:
                assert y0 > boxes[i - 1][j][3] and x0 == boxes[i - 1][j][0]  # same column, below
    # uniform pitch
    if cols > 1:
        pitch = boxes[0][1][0] - boxes[0][0][0]
        assert all(boxes[0][j][0] - boxes[0][j - 1][0] == pitch for j in range(1, cols))


def test_big_cells_are_not_scaled() -> None:
    img, _ = grid(1, 2, size=200)
    x0, y0, x1, y1 = find_box(np.asarray(img), colour(0, 1))
    assert (x1 - x0, y1 - y0) == (200, 200)


def test_labels_are_drawn_beside_and_above_cells() -> None:
    img, _ = grid(3, 4, title="my style")
    arr = np.asarray(img)
    boxes = [[find_box(arr, colour(i, j)) for j in range(4)] for i in range(3)]
    grid_left, grid_top = boxes[0][0][0], boxes[0][0][1]
    # the canvas is white outside cells and text
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[-1, -1]) == (255, 255, 255)
    for i in range(3):  # row label: left of the grid, within the row's height
        _, y0, _, y1 = boxes[i][0]
        assert dark(arr[y0:y1, :grid_left])
    for j in range(4):  # column label: above the grid, within the column's width
        x0, _, x1, _ = boxes[0][j]
        assert dark(arr[:grid_top, x0:x1])
    # without labels/axes/title those areas stay white
    cells = [[checker(i, j, 32) for j in range(4)] for i in range(3)]
    bare = np.asarray(compose_grid(cells, [""] * 3, [""] * 4, x_axis="", y_axis=""))
    b = find_box(bare, colour(0, 0))
    assert not dark(bare[:, : b[0]]) and not dark(bare[: b[1], :])


def test_axis_names_and_title_appear() -> None:
    cells = [[checker(0, 0, 32)]]
    plain = np.asarray(compose_grid(cells, [""], [""], x_axis="", y_axis=""))
    with_axes = np.asarray(compose_grid(cells, [""], [""], title="T"))
    assert with_axes.shape[0] > plain.shape[0] and with_axes.shape[1] > plain.shape[1]
    assert dark(with_axes)


def test_long_labels_and_missing_cells() -> None:
    cells = [[checker(0, 0, 64), None], [None, checker(1, 1, 64)]]
    img = compose_grid(cells, ["x" * 200, "epoch 2"], ["a very long column label indeed", "1.0"])
    arr = np.asarray(img)
    assert img.width < 2000  # long labels are shrunk / truncated, not stretching the canvas
    find_box(arr, colour(0, 0))
    find_box(arr, colour(1, 1))
    assert (np.all(arr == np.array([225, 225, 225], dtype=arr.dtype), axis=-1)).sum() > 1000  # n/a boxes


def test_grid_rejects_bad_shapes() -> None:
    cell = checker(0, 0, 8)
    with pytest.raises(ValueError):
        compose_grid([], [], [])
    with pytest.raises(ValueError):
        compose_grid([[cell, cell], [cell]], ["a", "b"], ["x", "y"])
    with pytest.raises(ValueError):
        compose_grid([[cell]], ["a", "b"], ["x"])
    with pytest.raises(ValueError):
        compose_grid([[cell]], ["a"], [])


def test_grid_accepts_other_modes() -> None:
    cells = [[Image.new("L", (16, 16), 90), Image.new("RGBA", (16, 16), (10, 200, 30, 128))]]
    img = compose_grid(cells, ["1"], ["0.5", "1.0"])
    assert img.mode == "RGB"


def solid_cells(rows: int, cols: int, size: int) -> list[list[Image.Image]]:
    return [[Image.new("RGB", (size, size), colour(i, j)) for j in range(cols)] for i in range(rows)]


@pytest.mark.parametrize(("rows", "cols", "size"), [(1, 1, 32), (3, 4, 32), (2, 3, 200), (5, 2, 48)])
def test_cell_boxes_are_the_exact_pixels_of_each_cell(rows: int, cols: int, size: int) -> None:
    labels = [f"epoch {i + 1}\nval 0.1234 · loss 0.1400" for i in range(rows)]
    img, boxes = compose_grid_with_boxes(solid_cells(rows, cols, size), labels, [f"{j}" for j in range(cols)],
                                         title="t", marked_rows=[rows - 1])
    arr = np.asarray(img)
    assert len(boxes) == rows and all(len(r) == cols for r in boxes)
    for i in range(rows):
        for j in range(cols):
            x0, y0, x1, y1 = boxes[i][j]
            assert 0 <= x0 < x1 <= img.width and 0 <= y0 < y1 <= img.height
            inside = arr[y0:y1, x0:x1]
            assert np.all(inside == np.array(colour(i, j), dtype=arr.dtype))  # every pixel of the box
            assert find_box(arr, colour(i, j)) == (x0, y0, x1, y1)  # and nothing of the cell outside it
    # compose_grid draws the same image
    same = compose_grid(solid_cells(rows, cols, size), labels, [f"{j}" for j in range(cols)], title="t",
                        marked_rows=[rows - 1])
    assert np.array_equal(np.asarray(same), arr)


def test_marked_row_gets_a_frame_outside_its_cells_and_a_coloured_label() -> None:
    labels = ["epoch 1\nval 0.2 · loss 0.2", "epoch 2\nval 0.1 · loss 0.2\n» lowest val", "epoch 3\nval -"]
    img, boxes = compose_grid_with_boxes(solid_cells(3, 2, 32), labels, ["0.8", "1"], marked_rows=[1])
    arr = np.asarray(img)
    is_mark = np.all(arr == np.array(MARK, dtype=arr.dtype), axis=-1)
    x0, y0 = boxes[1][0][:2]
    x1, y1 = boxes[1][-1][2:]
    # the frame: just outside the row's cells, on all four sides
    assert is_mark[y0 - 1, x0:x1].all() and is_mark[y1, x0:x1].all()
    assert is_mark[y0:y1, x0 - 1].all() and is_mark[y0:y1, x1].all()
    # the label is drawn in the mark colour, left of the row
    assert is_mark[y0:y1, : x0 - 1 - 8].any()
    plain = np.asarray(compose_grid(solid_cells(3, 2, 32), labels, ["0.8", "1"]))
    assert not np.all(plain == np.array(MARK, dtype=plain.dtype), axis=-1).any()
    # out-of-range marks are ignored
    compose_grid(solid_cells(1, 1, 32), ["a"], ["b"], marked_rows=[5, -1])


def test_multi_line_row_labels_stay_within_their_row() -> None:
    labels = [f"epoch {i + 1}\nval 0.1234 · loss 0.1400\n» lowest val" for i in range(3)]
    img, boxes = compose_grid_with_boxes(solid_cells(3, 1, 32), labels, ["1"], x_axis="", y_axis="")
    arr = np.asarray(img)
    left = boxes[0][0][0]
    for i in range(3):
        _, y0, _, y1 = boxes[i][0]
        assert dark(arr[y0:y1, :left])
    # nothing dark in the label column between rows' cells (each label block is inside its row's height)
    gap_top, gap_bottom = boxes[0][0][3], boxes[1][0][1]
    assert not dark(arr[gap_top:gap_bottom, :left])
    single = compose_grid(solid_cells(3, 1, 32), [f"epoch {i + 1}" for i in range(3)], ["1"], x_axis="", y_axis="")
    assert img.width > single.width  # the longer second line widens the label column


# --------------------------------------------------------------------------------------------
# loss plot


def test_smooth_ema() -> None:
    assert smooth_ema([2.0, 2.0, 2.0]) == pytest.approx([2.0, 2.0, 2.0])  # debiased: no ramp-up
    out = smooth_ema([1.0, float("nan"), 3.0], beta=0.5)
    assert out[0] == 1.0 and out[1] == 1.0 and 1.0 < out[2] < 3.0
    assert math.isnan(smooth_ema([float("nan")])[0])


def test_plot_loss_writes_png(tmp_path: Path) -> None:
    losses = [0.3 * math.exp(-i / 40) + 0.05 * ((i * 7919) % 13) / 13 for i in range(120)]
    losses[30] = float("nan")
    dlr = [1e-6 * 1.1**i for i in range(120)]
    path = tmp_path / "plots" / "loss.png"
    img = plot_loss(losses, epoch_steps=[40, 80, 120], path=path, dlr=dlr, title="my_style")
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["loss.png"]  # no temp left behind
    with Image.open(path) as saved:
        assert saved.format == "PNG" and saved.size == img.size
    no_dlr = plot_loss(losses, epoch_steps=[40, 80, 120])
    assert img.height > no_dlr.height and img.width == no_dlr.width
    arr = np.asarray(no_dlr).astype(int)
    # the dark EMA curve is drawn
    assert (np.abs(arr - np.array([25, 75, 190])).sum(axis=-1) < 30).sum() > 100


@pytest.mark.parametrize("losses", [[], [0.5], [float("nan")] * 3, [1.0, 1.0]])
def test_plot_loss_edge_cases(losses: list[float], tmp_path: Path) -> None:
    img = plot_loss(losses, epoch_steps=[1, 99], path=tmp_path / "l.png", dlr=[0.0] * len(losses) or None)
    assert img.size[0] > 0 and (tmp_path / "l.png").is_file()
