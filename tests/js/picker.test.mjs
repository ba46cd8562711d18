// js/lib/picker.js (and graph.js outputNodes): the Epoch × Weight Grid picker's logic on plain
// LiteGraph-shaped fakes: layout, click → cell, the Pick Epoch nodes fed by the `table` output.
import { test } from "node:test";
import assert from "node:assert/strict";

import { outputNodes } from "../../js/lib/graph.js";
import { applyPick, boxPercent, cellAt, cellFor, CHOSEN_CELL, LOWEST_VALIDATION, pickKey, pickNodes, pickState,
  readLayout, shownCell, statusText, toGridPoint } from "../../js/lib/picker.js";

/** A grid of 2 epochs × 3 weights: a 100 px label column, 200 px cells with a 10 px gap, 40 px header. */
function layout(extra = {}) {
  const weights = [0.8, 0.9, 1];
  const epochs = [5, 3];
  const cells = epochs.map((_, r) => weights.map((__, c) => [100 + c * 210, 40 + r * 210, 300 + c * 210, 240 + r * 210]));
  return { image: { filename: "grid_00001_.png", subfolder: "", type: "temp" }, epochs, weights, width: 730, height: 460,
    cells, best_epoch: 5, table: { rows: [] }, ...extra };
}

/** LiteGraph-like graph: outputs[slot].links, graph.links (a Map, or an object), getNodeById. */
function makeGraph({ objectLinks = false } = {}) {
  const nodes = new Map();
  const links = objectLinks ? {} : new Map();
  let nextLink = 1;
  const graph = {
    links,
    getNodeById: (id) => nodes.get(id) ?? null,
    add(type, { widgets = {}, inputs = [], outputs = [] } = {}) {
      const node = { id: nodes.size + 1, type, comfyClass: type, title: type, graph,
        inputs: inputs.map((name) => ({ name, link: null })), outputs: outputs.map((name) => ({ name, links: [] })),
        widgets: Object.entries(widgets).map(([name, value]) => ({ name, value, calls: [],
          callback(v) { this.calls.push(v); } })) };
      nodes.set(node.id, node);
      return node;
    },
    connect(origin, slot, target, inputName) {
      const id = nextLink++;
      const targetSlot = target.inputs.findIndex((i) => i.name === inputName);
      const link = { id, origin_id: origin.id, origin_slot: slot, target_id: target.id, target_slot: targetSlot };
      if (objectLinks) links[id] = link;
      else links.set(id, link);
      origin.outputs[slot].links.push(id);
      target.inputs[targetSlot].link = id;
    },
  };
  return graph;
}

const pickWidgets = () => ({ rule: LOWEST_VALIDATION, epoch: 1, weight: 1 });
function gridWithPicks(options) {
  const g = makeGraph(options);
  const grid = g.add("StyleLoRAEpochWeightGrid", { outputs: ["grid", "table"] });
  const pick = g.add("StyleLoRAPickEpoch", { widgets: pickWidgets(), inputs: ["table", "epochs", "lora_name", "model", "clip"] });
  const reroute = g.add("Reroute", { inputs: [""], outputs: [""] });
  const pick2 = g.add("StyleLoRAPickEpoch", { widgets: pickWidgets(), inputs: ["table", "epoch"] });
  const preview = g.add("PreviewImage", { inputs: ["images"] });
  const show = g.add("ShowText", { inputs: ["text"] });
  g.connect(grid, 1, pick, "table");
  g.connect(grid, 1, reroute, "");
  g.connect(reroute, 0, pick2, "table");
  g.connect(grid, 0, preview, "images");
  g.connect(grid, 1, show, "text");
  return { g, grid, pick, pick2, reroute, preview, show };
}

test("readLayout takes the node output's style_lora_grid[0], refuses malformed ones", () => {
  const good = layout();
  assert.equal(readLayout({ style_lora_grid: [good] }), good);
  assert.equal(readLayout(null), null);
  assert.equal(readLayout({ images: [] }), null);
  assert.equal(readLayout({ style_lora_grid: [{ ...good, image: null }] }), null);
  assert.equal(readLayout({ style_lora_grid: [{ ...good, width: 0 }] }), null);
  assert.equal(readLayout({ style_lora_grid: [{ ...good, cells: [good.cells[0]] }] }), null);
  assert.equal(readLayout({ style_lora_grid: [{ ...good, cells: [[[0, 0, 1]], good.cells[1]] }] }), null);
});

test("a click maps through the displayed scale to a cell; labels and gaps pick nothing", () => {
  const l = layout();
  // Shown at half size, 30 px from the page's left edge, 12 px from its top.
  const rect = { left: 30, top: 12, width: 365, height: 230 };
  const at = (cx, cy) => { const p = toGridPoint(l, cx, cy, rect); return cellAt(l, p.x, p.y); };
  const cell = at(30 + 260 / 2, 12 + 300 / 2); // grid pixel (260, 300): row 1 (epoch 3), column 0 (weight 0.8)
  assert.deepEqual([cell.row, cell.col, cell.epoch, cell.weight], [1, 0, 3, 0.8]);
  assert.deepEqual([at(30 + 520 / 2, 12 + 100 / 2).epoch, at(30 + 520 / 2, 12 + 100 / 2).weight], [5, 1]);
  assert.equal(at(30 + 50 / 2, 12 + 100 / 2), null); // the row labels
  assert.equal(at(30 + 305 / 2, 12 + 100 / 2), null); // the gap between two cells
  assert.equal(at(30 + 260 / 2, 12 + 20 / 2), null); // the weight header
  assert.equal(toGridPoint(l, 1, 1, { left: 0, top: 0, width: 0, height: 0 }), null); // not displayed
  assert.equal(cellAt(null, 1, 1), null);
});

test("cellFor finds an epoch × weight pair; boxPercent places the highlight in CSS percent", () => {
  const l = layout();
  const cell = cellFor(l, 3, 0.9000000001);
  assert.deepEqual([cell.row, cell.col], [1, 1]);
  assert.equal(cellFor(l, 4, 1), null);
  assert.equal(cellFor(l, 3, 1.2), null);
  const box = boxPercent(l, cellFor(l, 5, 0.8));
  assert.ok(Math.abs(box.left - (100 / 730) * 100) < 1e-9);
  assert.ok(Math.abs(box.top - (40 / 460) * 100) < 1e-9);
  assert.ok(Math.abs(box.width - (200 / 730) * 100) < 1e-9);
});

test("outputNodes follows an output's links through Reroutes, with links as a Map or an object", () => {
  for (const objectLinks of [false, true]) {
    const { grid, pick, pick2, preview, show } = gridWithPicks({ objectLinks });
    assert.deepEqual(outputNodes(grid, 1), [pick, pick2, show]); // link order, the Reroute's where it is
    assert.deepEqual(outputNodes(grid, "table"), [pick, pick2, show]);
    assert.deepEqual(outputNodes(grid, "grid"), [preview]);
    assert.deepEqual(outputNodes(grid, "nope"), []);
    assert.deepEqual(pickNodes(grid), [pick, pick2]);
  }
  assert.deepEqual(outputNodes(null, 0), []);
  // Unnamed outputs: slot 1 is the table.
  const { grid, pick, pick2 } = gridWithPicks();
  for (const output of grid.outputs) output.name = undefined;
  assert.deepEqual(pickNodes(grid), [pick, pick2]);
});

test("applyPick sets rule, epoch and weight (their callbacks run); a widget fed by a link is left alone", () => {
  const { grid, pick, pick2, g } = gridWithPicks();
  const cell = cellFor(layout(), 3, 0.9);
  assert.deepEqual(applyPick(pick, cell), { set: ["rule", "epoch", "weight"], linked: [] });
  assert.deepEqual(pickState(pick), { rule: CHOSEN_CELL, epoch: 3, weight: 0.9 });
  assert.deepEqual(pick.widgets.find((w) => w.name === "epoch").calls, [3]);
  // pick2's epoch widget was turned into an input connected to a primitive.
  const primitive = g.add("PrimitiveNode", { outputs: ["INT"] });
  g.connect(primitive, 0, pick2, "epoch");
  assert.deepEqual(applyPick(pick2, cell), { set: ["rule", "weight"], linked: ["epoch"] });
  assert.equal(pickState(pick2).epoch, 1);
  assert.ok(grid);
});

test("shownCell: the first pick's chosen cell, or the best epoch at its weight under 'lowest validation loss'", () => {
  const l = layout();
  const { grid, pick } = gridWithPicks();
  const picks = pickNodes(grid);
  let shown = shownCell(l, picks); // lowest validation loss, weight 1: epoch 5 (the best) at 1.0
  assert.deepEqual([shown.kind, shown.epoch, shown.weight], ["best", 5, 1]);
  assert.equal(shownCell({ ...l, best_epoch: null }, picks), null);
  const before = pickKey(l, picks);
  applyPick(pick, cellFor(l, 3, 0.8));
  shown = shownCell(l, picks);
  assert.deepEqual([shown.kind, shown.row, shown.col], ["chosen", 1, 0]);
  assert.notEqual(pickKey(l, picks), before);
  // Edited by hand to a pair the grid does not show: nothing highlighted.
  pick.widgets.find((w) => w.name === "epoch").value = 9;
  assert.equal(shownCell(l, picks), null);
  assert.equal(shownCell(null, picks), null);
  assert.equal(shownCell(l, []), null);
});

test("statusText says what to do next", () => {
  const l = layout();
  assert.match(statusText(null, [], null), /Queue the workflow/);
  assert.match(statusText(l, [], null), /Connect the table output to a Pick Epoch node.*lowest validation loss: epoch 5/);
  const { grid, pick } = gridWithPicks();
  const picks = pickNodes(grid);
  assert.match(statusText(l, picks, shownCell(l, picks)), /uses the lowest validation loss: epoch 5 at weight 1\.0/);
  applyPick(pick, cellFor(l, 3, 0.8));
  assert.match(statusText(l, picks, shownCell(l, picks)), /^Picked epoch 3 at weight 0\.8 \(2 Pick Epoch nodes\)/);
  pick.widgets.find((w) => w.name === "epoch").value = 9;
  assert.match(statusText(l, picks, null), /^Click a cell/);
});
