// The grid picker's logic (Epoch × Weight Grid panel, docs/CANVAS.md): the grid's layout from the
// node's execution output, a click on the displayed grid mapped to a cell, and the Pick Epoch
// nodes fed by the grid's `table` output, whose widgets a pick sets. Works on plain objects shaped
// like LiteGraph nodes, so tests use fakes. Pure module: no DOM, no ComfyUI imports, no side
// effects on import.
import { findWidget, inputLinked, nodeType, outputNodes, PICK_EPOCH } from "./graph.js";

export const OUTPUT_KEY = "style_lora_grid"; // the node's {"ui": {...}} key holding [layout]
export const TABLE_OUTPUT = "table";
export const TABLE_SLOT = 1;
export const CHOSEN_CELL = "chosen cell";
export const LOWEST_VALIDATION = "lowest validation loss";
const WEIGHT_EPS = 1e-6;

const isBox = (b) => Array.isArray(b) && b.length === 4 && b.every(Number.isFinite);

/**
 * The layout of an execution output ({style_lora_grid: [layout]}), or null when it has none or is
 * malformed: {image, epochs, weights, width, height, cells: [[[x0, y0, x1, y1] per weight] per row],
 * best_epoch, table}.
 */
export function readLayout(output) {
  const layout = output?.[OUTPUT_KEY]?.[0];
  if (!layout || typeof layout !== "object" || !layout.image?.filename) return null;
  if (!(layout.width > 0) || !(layout.height > 0)) return null;
  if (!Array.isArray(layout.epochs) || !Array.isArray(layout.weights) || !Array.isArray(layout.cells)) return null;
  if (layout.cells.length !== layout.epochs.length) return null;
  if (!layout.cells.every((row) => Array.isArray(row) && row.length === layout.weights.length && row.every(isBox))) return null;
  return layout;
}

function cellOf(layout, row, col) {
  return { row, col, epoch: layout.epochs[row], weight: layout.weights[col], box: layout.cells[row][col] };
}

/**
 * A point on the displayed image in grid pixels: ``clientX``/``clientY`` against the image's
 * displayed rectangle {left, top, width, height} (getBoundingClientRect, so canvas zoom is included).
 */
export function toGridPoint(layout, clientX, clientY, rect) {
  if (!(rect?.width > 0) || !(rect?.height > 0)) return null;
  return { x: ((clientX - rect.left) / rect.width) * layout.width, y: ((clientY - rect.top) / rect.height) * layout.height };
}

/** The cell under grid point (x, y), or null (a label, a gap, outside). */
export function cellAt(layout, x, y) {
  if (!layout || !Number.isFinite(x) || !Number.isFinite(y)) return null;
  for (let row = 0; row < layout.cells.length; row += 1) {
    for (let col = 0; col < layout.cells[row].length; col += 1) {
      const [x0, y0, x1, y1] = layout.cells[row][col];
      if (x >= x0 && x < x1 && y >= y0 && y < y1) return cellOf(layout, row, col);
    }
  }
  return null;
}

/** The cell of ``epoch`` at ``weight``, or null when the grid does not show that pair. */
export function cellFor(layout, epoch, weight) {
  if (!layout) return null;
  const row = layout.epochs.findIndex((e) => Number(e) === Number(epoch));
  const col = layout.weights.findIndex((w) => Math.abs(Number(w) - Number(weight)) < WEIGHT_EPS);
  return row >= 0 && col >= 0 ? cellOf(layout, row, col) : null;
}

/** A cell's box as CSS percentages of the grid image ({left, top, width, height}, numbers). */
export function boxPercent(layout, cell) {
  const [x0, y0, x1, y1] = cell.box;
  const pct = (v, total) => (v / total) * 100;
  return { left: pct(x0, layout.width), top: pct(y0, layout.height), width: pct(x1 - x0, layout.width),
    height: pct(y1 - y0, layout.height) };
}

/** The Pick Epoch nodes fed by the grid's `table` output (slot 1), through Reroutes. */
export function pickNodes(grid) {
  const named = grid?.outputs?.some((o) => o.name === TABLE_OUTPUT);
  return outputNodes(grid, named ? TABLE_OUTPUT : TABLE_SLOT).filter((n) => nodeType(n) === PICK_EPOCH);
}

/** A Pick Epoch node's {rule, epoch, weight} widget values. */
export function pickState(pick) {
  return { rule: findWidget(pick, "rule")?.value ?? null, epoch: Number(findWidget(pick, "epoch")?.value),
    weight: Number(findWidget(pick, "weight")?.value) };
}

/**
 * Point a Pick Epoch node at ``cell``: rule "chosen cell", its epoch and weight. A widget turned
 * into a connected input is left alone (its value comes from the link). Returns {set, linked}:
 * the widget names set and those skipped.
 */
export function applyPick(pick, cell) {
  const set = [];
  const linked = [];
  for (const [name, value] of [["rule", CHOSEN_CELL], ["epoch", cell.epoch], ["weight", cell.weight]]) {
    const widget = findWidget(pick, name);
    if (!widget) continue;
    if (inputLinked(pick, name)) {
      linked.push(name);
      continue;
    }
    widget.value = value;
    try {
      widget.callback?.(value);
    } catch (error) {
      console.warn(`[Style LoRA] Pick Epoch's ${name} widget callback failed:`, error);
    }
    set.push(name);
  }
  return { set, linked };
}

/**
 * The cell to highlight for the grid's first Pick Epoch node: its chosen cell ("chosen"), or under
 * "lowest validation loss" the best epoch at its weight ("best"); null when the grid has no such cell.
 */
export function shownCell(layout, picks) {
  if (!layout || !picks?.length) return null;
  const { rule, epoch, weight } = pickState(picks[0]);
  if (rule === LOWEST_VALIDATION) {
    const cell = layout.best_epoch === null || layout.best_epoch === undefined ? null : cellFor(layout, layout.best_epoch, weight);
    return cell ? { ...cell, kind: "best" } : null;
  }
  const cell = cellFor(layout, epoch, weight);
  return cell ? { ...cell, kind: "chosen" } : null;
}

/** A string that changes exactly when the highlighted cell would change. */
export function pickKey(layout, picks) {
  const cell = shownCell(layout, picks);
  return cell ? `${cell.kind}:${cell.row}:${cell.col}` : `none:${picks?.length ?? 0}`;
}

/** The panel's status line for a grid, its picks and the last click's outcome. */
export function statusText(layout, picks, shown) {
  if (!layout) return "Queue the workflow: the grid appears here; click a cell to pick that epoch and weight.";
  const best = layout.best_epoch === null || layout.best_epoch === undefined ? "" : ` · lowest validation loss: epoch ${layout.best_epoch}`;
  if (!picks.length) return `Connect the table output to a Pick Epoch node to pick a cell by clicking it${best}.`;
  if (!shown) return `Click a cell to pick its epoch and weight${best}.`;
  const weight = Number(shown.weight);
  const what = `epoch ${shown.epoch} at weight ${Number.isInteger(weight) ? weight.toFixed(1) : weight}`;
  return shown.kind === "best" ? `Pick Epoch uses the lowest validation loss: ${what}. Click a cell to choose another.`
    : `Picked ${what} (${picks.length} Pick Epoch node${picks.length === 1 ? "" : "s"})${best}.`;
}
