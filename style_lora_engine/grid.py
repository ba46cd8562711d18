"""The guide's epoch x LoRA-weight grid (an A1111-style X/Y plot), the loss plot, and IMAGE tensors.

PIL only: no matplotlib, so nothing extra to install inside ComfyUI.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_path, atomic_write_bytes

WHITE = (255, 255, 255)
BLACK = (0, 0, 0)
# Tiny previews (the 32 px test model) are unreadable at 1:1; blow them up to at least this.
MIN_CELL = 128
_MIN_FONT = 8

FontT = ImageFont.FreeTypeFont | ImageFont.ImageFont


@lru_cache(maxsize=64)
def _font(size: int) -> FontT:
    # Pillow >= 10.1 scales its embedded font; older builds / no FreeType get the fixed bitmap one.
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        return ImageFont.load_default()


_MEASURE = ImageDraw.Draw(Image.new("RGB", (1, 1)))


def _bbox(text: str, font: FontT) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in _MEASURE.textbbox((0, 0), text, font=font))  # type: ignore[return-value]


def _text_w(text: str, font: FontT) -> int:
    x0, _, x1, _ = _bbox(text, font)
    return x1 - x0


def _line_h(font: FontT) -> int:
    # A fixed sample so every label of a size gets the same height (ascenders + descenders).
    _, y0, _, y1 = _bbox("Ag|9", font)
    return y1 - y0


def _fit(text: str, max_w: int, size: int) -> tuple[str, FontT]:
    """Shrink the font until ``text`` fits ``max_w``; truncate with '...' at the smallest size."""
    for s in range(size, _MIN_FONT - 1, -1):
        font = _font(s)
        if _text_w(text, font) <= max_w:
            return text, font
    font = _font(_MIN_FONT)
    while len(text) > 1 and _text_w(text + "...", font) > max_w:
        text = text[:-1]
    return (text + "..." if text else text), font


def _draw_centered(draw: ImageDraw.ImageDraw, center: tuple[float, float], text: str, font: FontT,
                   fill: tuple[int, int, int] = BLACK) -> None:
    # Center on the ink box (works for bitmap fonts too, which reject anchor=).
    x0, y0, x1, y1 = _bbox(text, font)
    draw.text((center[0] - (x0 + x1) / 2, center[1] - (y0 + y1) / 2), text, font=font, fill=fill)


def _rotated_label(text: str, font: FontT, length: int) -> Image.Image:
    """``text`` drawn along a vertical strip (reading bottom-to-top), centered in ``length`` px."""
    h = _line_h(font) + 4
    strip = Image.new("RGB", (max(length, 1), h), WHITE)
    _draw_centered(ImageDraw.Draw(strip), (length / 2, h / 2), text, font)
    return strip.rotate(90, expand=True)


Box = tuple[int, int, int, int]
# The row with the lowest validation loss: its label and a frame around its cells.
MARK = (0, 128, 64)


def _fit_lines(text: str, max_w: int, size: int) -> list[tuple[str, FontT]]:
    """Each line of ``text`` fitted to ``max_w``; lines after the first one a size smaller."""
    lines = str(text).split("\n")
    small = max(_MIN_FONT, round(size * 0.8))
    return [_fit(line, max_w, size if k == 0 else small) for k, line in enumerate(lines)]


def _block_h(lines: Sequence[tuple[str, FontT]], spacing: int) -> int:
    return sum(_line_h(f) for _, f in lines) + spacing * max(0, len(lines) - 1)


def _draw_lines(draw: ImageDraw.ImageDraw, center: tuple[float, float], lines: Sequence[tuple[str, FontT]],
                spacing: int, fill: tuple[int, int, int] = BLACK) -> None:
    # Lines stacked and centred as one block on ``center``.
    y = center[1] - _block_h(lines, spacing) / 2
    for text, font in lines:
        h = _line_h(font)
        _draw_centered(draw, (center[0], y + h / 2), text, font, fill)
        y += h + spacing


def compose_grid(cells: Sequence[Sequence[Image.Image | None]], row_labels: Sequence[str],
                 col_labels: Sequence[str], **options: Any) -> Image.Image:
    """Tile ``cells[row][col]`` under column labels and beside row labels, with axis names
    (``options``: those of :func:`compose_grid_with_boxes`).

    Rows are epochs and columns LoRA weights in the guide's grid. Cells smaller than
    ``MIN_CELL`` are scaled up by an integer factor with NEAREST (crisp pixels); a ``None``
    cell (a failed render) is drawn as a grey "n/a" box. A row label may hold several lines
    ("\\n"); the rows in ``marked_rows`` get a coloured label and frame (the lowest validation loss).
    """
    return compose_grid_with_boxes(cells, row_labels, col_labels, **options)[0]


def compose_grid_with_boxes(
    cells: Sequence[Sequence[Image.Image | None]],
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str = "",
    x_axis: str = "LoRA weight",
    y_axis: str = "epoch",
    marked_rows: Sequence[int] = (),
) -> tuple[Image.Image, list[list[Box]]]:
    """:func:`compose_grid`, and each cell's box ``(x0, y0, x1, y1)`` in the grid image's pixels
    (x1/y1 exclusive, as ``Image.crop`` takes them): ``boxes[row][col]``, for the canvas's clicks."""
    rows = len(cells)
    cols = len(cells[0]) if rows else 0
    if rows == 0 or cols == 0 or any(len(r) != cols for r in cells):
        raise ValueError("cells must be a non-empty rectangular list of rows.")
    if len(row_labels) != rows or len(col_labels) != cols:
        raise ValueError(
            f"{rows}x{cols} cells need {rows} row labels and {cols} column labels, "
            f"got {len(row_labels)} and {len(col_labels)}."
        )
    marked = {int(i) for i in marked_rows if 0 <= int(i) < rows}
    present = [c for r in cells for c in r if c is not None]
    src_w = max((c.width for c in present), default=MIN_CELL)
    src_h = max((c.height for c in present), default=MIN_CELL)
    scale = max(1, math.ceil(MIN_CELL / max(1, min(src_w, src_h))))
    cw, ch = src_w * scale, src_h * scale

    size = max(12, min(40, round(min(cw, ch) / 9)))
    label_font = _font(size)
    line = _line_h(label_font)
    pad = max(6, size // 2)
    gap = max(2, size // 6)
    spacing = max(2, size // 5)

    grid_w = cols * cw + (cols - 1) * gap
    grid_h = rows * ch + (rows - 1) * gap
    max_row_w = max(cw * 2, 160)
    fitted_rows = [_fit_lines(t, max_row_w, size) for t in row_labels]
    row_col_w = max((_text_w(t, f) for lines in fitted_rows for t, f in lines), default=0) + 2 * pad
    fitted_cols = [_fit(str(t), cw - 4, size) for t in col_labels]
    y_axis_w = line + pad if y_axis else 0
    x_axis_h = line + pad if x_axis else 0
    col_lab_h = line + pad
    title_size = round(size * 1.3)
    title_fit = _fit(title, max(grid_w + row_col_w + y_axis_w, 200), title_size) if title else None
    title_h = _line_h(title_fit[1]) + pad if title_fit else 0

    x0 = pad + y_axis_w + row_col_w
    y0 = pad + title_h + x_axis_h + col_lab_h
    width = x0 + grid_w + pad
    if title_fit:
        width = max(width, _text_w(*title_fit) + 2 * pad)
    height = y0 + grid_h + pad
    canvas = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(canvas)

    if title_fit:
        _draw_centered(draw, (width / 2, pad + title_h / 2 - pad / 2), title_fit[0], title_fit[1])
    if x_axis:
        text, font = _fit(x_axis, grid_w, size)
        _draw_centered(draw, (x0 + grid_w / 2, pad + title_h + x_axis_h / 2 - pad / 2), text, font)
    if y_axis:
        text, font = _fit(y_axis, grid_h, size)
        strip = _rotated_label(text, font, grid_h)
        canvas.paste(strip, (pad + max(0, (y_axis_w - pad - strip.width) // 2), y0))

    for j, (text, font) in enumerate(fitted_cols):
        _draw_centered(draw, (x0 + j * (cw + gap) + cw / 2, y0 - col_lab_h / 2), text, font)
    for i, lines in enumerate(fitted_rows):
        centre = (pad + y_axis_w + row_col_w / 2, y0 + i * (ch + gap) + ch / 2)
        _draw_lines(draw, centre, lines, spacing, MARK if i in marked else BLACK)

    boxes: list[list[Box]] = []
    for i, row in enumerate(cells):
        boxes.append([])
        for j, cell in enumerate(row):
            left, top = x0 + j * (cw + gap), y0 + i * (ch + gap)
            boxes[i].append((left, top, left + cw, top + ch))
            if cell is None:
                draw.rectangle((left, top, left + cw - 1, top + ch - 1), fill=(225, 225, 225))
                _draw_centered(draw, (left + cw / 2, top + ch / 2), "n/a", label_font, (110, 110, 110))
                continue
            img = cell.convert("RGB")
            if scale > 1:
                img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
            # Cells of different sizes are centered in their slot.
            canvas.paste(img, (left + (cw - img.width) // 2, top + (ch - img.height) // 2))
    for i in sorted(marked):
        # The frame lies in the gap and margins around the row: it never covers a cell's pixels.
        top = y0 + i * (ch + gap)
        draw.rectangle((x0 - gap, top - gap, x0 + grid_w + gap - 1, top + ch + gap - 1), outline=MARK, width=gap)
    return canvas, boxes


# ---------------------------------------------------------------------------------------------
# loss plot


def smooth_ema(values: Sequence[float], beta: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing); non-finite values are skipped."""
    out: list[float] = []
    avg, weight = 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg = beta * avg + (1 - beta) * v
            weight = beta * weight + (1 - beta)
        out.append(avg / weight if weight > 0 else float("nan"))
    return out


def _nice_step(span: float, count: int) -> float:
    raw = span / max(1, count)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * mag:
            return m * mag
    return 10 * mag


def _ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    step = _nice_step(hi - lo, count)
    start = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    v = start
    while v <= hi + step * 1e-9 and len(ticks) < 50:
        ticks.append(round(v, 12))
        v += step
    return ticks


def _fmt(v: float) -> str:
    return f"{v:.3g}"


def _dashed_vline(draw: ImageDraw.ImageDraw, x: float, top: int, bottom: int,
                  fill: tuple[int, int, int], dash: int = 4) -> None:
    for y in range(top, bottom, dash * 2):
        draw.line((x, y, x, min(y + dash, bottom)), fill=fill)


class _Panel:
    """One chart area: maps (step, value) to pixels and draws axes, ticks and polylines."""

    def __init__(self, draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], n: int,
                 values: Sequence[float], log: bool) -> None:
        self.draw, self.box, self.n, self.log = draw, box, n, log
        finite = [self._t(v) for v in values if math.isfinite(v) and (v > 0 or not log)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        if hi - lo < 1e-12:
            half = abs(lo) * 0.5 if lo else 0.5
            lo, hi = lo - half, hi + half
        margin = (hi - lo) * 0.05
        self.lo, self.hi = lo - margin, hi + margin

    def _t(self, v: float) -> float:
        return math.log10(v) if self.log else v

    def x(self, step: float) -> float:
        left, _, right, _ = self.box
        return (left + right) / 2 if self.n <= 1 else left + (step - 1) / (self.n - 1) * (right - left)

    def y(self, value: float) -> float:
        _, top, _, bottom = self.box
        return bottom - (self._t(value) - self.lo) / (self.hi - self.lo) * (bottom - top)

    def axes(self, font: FontT, y_label: str) -> None:
        left, top, right, bottom = self.box
        grid = (228, 228, 228)
        if self.log:
            ticks = [10.0 ** e for e in range(math.ceil(self.lo), math.floor(self.hi) + 1)]
            if len(ticks) < 2:
                ticks = [10 ** t for t in _ticks(self.lo, self.hi, 4)]
            labels = [f"{t:.0e}" for t in ticks]
        else:
            ticks = _ticks(self.lo, self.hi, 5)
            labels = [_fmt(t) for t in ticks]
        for t, label in zip(ticks, labels, strict=True):
            py = self.y(t)
            if top <= py <= bottom:
                self.draw.line((left, py, right, py), fill=grid)
                w = _text_w(label, font)
                _draw_centered(self.draw, (left - 6 - w / 2, py), label, font, (60, 60, 60))
        self.draw.rectangle(self.box, outline=(90, 90, 90))
        _draw_centered(self.draw, (left + _text_w(y_label, font) / 2, top - _line_h(font)), y_label, font)

    def x_ticks(self, font: FontT) -> None:
        left, _, right, bottom = self.box
        ticks = [1.0] if self.n <= 1 else [t for t in _ticks(1, self.n, 6) if t >= 1]
        for t in ticks:
            px = self.x(t)
            self.draw.line((px, bottom, px, bottom + 4), fill=(90, 90, 90))
            _draw_centered(self.draw, (px, bottom + 6 + _line_h(font) / 2), str(int(t)), font, (60, 60, 60))
        _draw_centered(self.draw, (right - _text_w("step", font) / 2, bottom + 8 + 1.6 * _line_h(font)),
                       "step", font, (60, 60, 60))

    def line(self, values: Sequence[float], fill: tuple[int, int, int], width: int) -> None:
        # Break the polyline at non-finite values (a NaN step leaves a gap, not a spike).
        segment: list[tuple[float, float]] = []
        for i, v in enumerate(values, start=1):
            if math.isfinite(v) and (v > 0 or not self.log):
                segment.append((self.x(i), self.y(v)))
            else:
                self._flush(segment, fill, width)
                segment = []
        self._flush(segment, fill, width)

    def _flush(self, segment: list[tuple[float, float]], fill: tuple[int, int, int], width: int) -> None:
        if len(segment) == 1:
            x, y = segment[0]
            self.draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=fill)
        elif segment:
            self.draw.line(segment, fill=fill, width=width, joint="curve")

    def epochs(self, epoch_steps: Sequence[int], font: FontT) -> None:
        left, top, right, bottom = self.box
        last_label = -1e9
        for e, step in enumerate(epoch_steps, start=1):
            if not 1 <= step <= max(self.n, 1):
                continue
            px = self.x(step)
            _dashed_vline(self.draw, px, top + 1, bottom, (170, 170, 170))
            label = f"e{e}"
            w = _text_w(label, font)
            # Label only when it does not collide with the previous one.
            if px - last_label >= w + 6 and left <= px - w / 2 - 2 and px + w / 2 <= right:
                _draw_centered(self.draw, (px - w / 2 - 2, top + 4 + _line_h(font) / 2), label, font,
                               (120, 120, 120))
                last_label = px


def plot_loss(
    losses: Sequence[float],
    *,
    epoch_steps: Sequence[int],
    path: Path | None = None,
    dlr: Sequence[float] | None = None,
    title: str = "",
) -> Image.Image:
    """Loss per step (light), its EMA (dark) and dashed epoch boundaries; optional d*lr panel.

    ``epoch_steps[i]`` is the global step (1-based) at which epoch i+1 ended. ``dlr`` (DAdapt's
    d*lr per step) is drawn on a log axis when it spans more than ~1.5 decades. The PNG is
    written atomically when ``path`` is given.
    """
    losses = [float(v) for v in losses]
    n = len(losses)
    width, main_h, dlr_h = 900, 420, 220
    has_dlr = bool(dlr)
    height = main_h + (dlr_h if has_dlr else 0)
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    font, title_font = _font(13), _font(17)
    left, right = 78, width - 24
    top = 34 + (_line_h(title_font) + 6 if title else 0)
    if title:
        _draw_centered(draw, (width / 2, 12 + _line_h(title_font) / 2), title, title_font)

    box = (left, top, right, main_h - 52)
    ema = smooth_ema(losses, beta=0.9 if n < 500 else 0.98)
    panel = _Panel(draw, box, n, losses, log=False)
    panel.axes(font, "loss")
    panel.epochs(epoch_steps, font)
    if n == 0 or not any(math.isfinite(v) for v in losses):
        _draw_centered(draw, ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2), "no loss values yet", font,
                       (120, 120, 120))
    else:
        panel.line(losses, (160, 190, 235), 1)
        panel.line(ema, (25, 75, 190), 2)
    panel.x_ticks(font)
    # legend
    lx, ly = right - 96, top + 8
    lh = _line_h(font) + 6
    # White box so epoch labels and the curves never run through the legend text.
    draw.rectangle((lx - 8, ly - lh / 2 - 2, right - 6, ly + 1.5 * lh), fill=WHITE, outline=(200, 200, 200))
    for k, (label, colour, w) in enumerate((("loss", (160, 190, 235), 2), ("EMA", (25, 75, 190), 3))):
        yy = ly + k * lh
        draw.line((lx, yy, lx + 22, yy), fill=colour, width=w)
        draw.text((lx + 28, yy - _line_h(font) / 2 - 2), label, font=font, fill=BLACK)

    if has_dlr:
        dvals = [float(v) for v in dlr or []]
        positive = [v for v in dvals if math.isfinite(v) and v > 0]
        log = bool(positive) and len(positive) == sum(math.isfinite(v) for v in dvals) and (
            max(positive) / min(positive) > 30
        )
        dbox = (left, main_h + 24, right, height - 52)
        dpanel = _Panel(draw, dbox, max(n, len(dvals)), dvals, log=log)
        dpanel.axes(font, "d*lr" + (" (log)" if log else ""))
        dpanel.epochs(epoch_steps, font)
        dpanel.line(dvals, (200, 90, 30), 2)
        dpanel.x_ticks(font)

    if path is not None:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, buf.getvalue())
    return img


def plot_validation(
    validation: Sequence[tuple[int, float]],
    *,
    mean_losses: Sequence[tuple[int, float]] = (),
    path: Path | None = None,
    title: str = "",
) -> Image.Image:
    """Validation loss per epoch (epoch 0 = before training, dark) and the epochs' mean training loss
    (light, when given), the lowest validation loss marked. Written atomically when ``path`` is given."""
    points = sorted((int(e), float(v)) for e, v in validation if math.isfinite(v))
    means = sorted((int(e), float(v)) for e, v in mean_losses if math.isfinite(v))
    width, height = 900, 420
    img = Image.new("RGB", (width, height), WHITE)
    draw = ImageDraw.Draw(img)
    font, title_font = _font(13), _font(17)
    top = 34 + (_line_h(title_font) + 6 if title else 0)
    if title:
        _draw_centered(draw, (width / 2, 12 + _line_h(title_font) / 2), title, title_font)
    box = (78, top, width - 24, height - 52)
    epochs = [e for e, _ in points + means] or [0, 1]
    first, last = min(epochs), max(max(epochs), min(epochs) + 1)
    # _Panel counts steps from 1: epoch e sits at "step" e - first + 1.
    panel = _Panel(draw, box, last - first + 1, [v for _, v in points + means], log=False)
    panel.axes(font, "loss")
    for e in range(first, last + 1):
        px = panel.x(e - first + 1)
        draw.line((px, box[3], px, box[3] + 4), fill=(90, 90, 90))
        _draw_centered(draw, (px, box[3] + 6 + _line_h(font) / 2), str(e), font, (60, 60, 60))
    _draw_centered(draw, (box[2] - _text_w("epoch", font) / 2, box[3] + 8 + 1.6 * _line_h(font)), "epoch",
                   font, (60, 60, 60))
    for series, colour, w in ((means, (160, 190, 235), 2), (points, (25, 75, 190), 3)):
        xy = [(panel.x(e - first + 1), panel.y(v)) for e, v in series]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=w, joint="curve")
        for x, y in xy:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=colour)
    trained = [(e, v) for e, v in points if e > 0]
    if trained:
        best_e, best_v = min(trained, key=lambda p: (p[1], -p[0]))  # ties to the later epoch
        x, y = panel.x(best_e - first + 1), panel.y(best_v)
        draw.ellipse((x - 7, y - 7, x + 7, y + 7), outline=(200, 40, 40), width=2)
        label = f"lowest: epoch {best_e} ({best_v:.4f})"
        _draw_centered(draw, (min(max(x, box[0] + 90), box[2] - 90), y - 16), label, font, (200, 40, 40))
    lx, ly, lh = box[2] - 190, top + 8, _line_h(font) + 6
    draw.rectangle((lx - 8, ly - lh / 2 - 2, box[2] - 6, ly + 1.5 * lh), fill=WHITE, outline=(200, 200, 200))
    for k, (label, colour) in enumerate((("validation loss", (25, 75, 190)),
                                         ("mean training loss", (160, 190, 235)))):
        yy = ly + k * lh
        draw.line((lx, yy, lx + 22, yy), fill=colour, width=3)
        draw.text((lx + 28, yy - _line_h(font) / 2 - 2), label, font=font, fill=BLACK)
    if path is not None:
        with atomic_path(path) as tmp:
            img.save(tmp, format="PNG")
    return img
