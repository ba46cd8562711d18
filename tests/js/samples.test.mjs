// js/lib/samples.js: the Train LoRA panel's sample strip, from the history's samples.
import { test } from "node:test";
import assert from "node:assert/strict";

import { epochLabel, imagePrompt, MAX_VISIBLE_ROWS, SAMPLE_ROW_HEIGHT, sampleRows, samplesKey, stripHeight,
  weightLabel } from "../../js/lib/samples.js";

const image = (name) => ({ filename: name, subfolder: "style_lora", type: "temp" });

test("labels: base / epoch N, w 0.8 / w 1.0", () => {
  assert.equal(epochLabel(0), "base");
  assert.equal(epochLabel(7), "epoch 7");
  assert.equal(weightLabel(0.8), "w 0.8");
  assert.equal(weightLabel(1), "w 1.0");
  assert.equal(weightLabel(0.30000000000000004), "w 0.3");
  assert.equal(weightLabel(null), "base");
});

test("imagePrompt: images are prompt-major; unknown when the counts do not divide", () => {
  const prompts = ["a cat", "a house"];
  assert.deepEqual([0, 1, 2, 3].map((i) => imagePrompt(prompts, i, 4)), ["a cat", "a cat", "a house", "a house"]);
  assert.equal(imagePrompt(prompts, 1, 3), "");
  assert.equal(imagePrompt(["one"], 2, 3), "one");
  assert.equal(imagePrompt([], 0, 1), "");
});

test("sampleRows: newest epoch first, the base model last, a cell per weight with its images", () => {
  const samples = [
    { epoch: 0, seconds: 3.25, prompts: ["a cat"], cells: [{ weight: null, images: [image("b.png")] }] },
    { epoch: 2, seconds: null, prompts: ["a cat", "a house"], cells: [
      { weight: 0.8, images: [image("c.png"), image("d.png")] }, { weight: 1, images: [image("e.png"), image("f.png")] }] },
  ];
  const rows = sampleRows(samples);
  assert.deepEqual(rows.map((r) => r.label), ["epoch 2", "base"]);
  assert.deepEqual(rows[0].cells.map((c) => c.label), ["w 0.8", "w 1.0"]);
  assert.deepEqual(rows[0].cells[1].images.map((i) => [i.ref.filename, i.prompt]), [["e.png", "a cat"], ["f.png", "a house"]]);
  assert.equal(rows[0].cells[0].images[0].alt, "epoch 2, w 0.8: a cat");
  assert.equal(rows[1].cells[0].label, "base");
  assert.equal(rows[1].title, "base · sampled in 3.3 s");
  assert.equal(rows[0].title, "epoch 2");
  assert.deepEqual(samples.map((s) => s.epoch), [0, 2]); // the history's list is not reordered
});

test("stripHeight: nothing without samples, then a row each up to the visible maximum", () => {
  assert.equal(stripHeight(0), 0);
  assert.ok(stripHeight(1) > SAMPLE_ROW_HEIGHT);
  assert.equal(stripHeight(2) - stripHeight(1), SAMPLE_ROW_HEIGHT);
  assert.equal(stripHeight(MAX_VISIBLE_ROWS + 5), stripHeight(MAX_VISIBLE_ROWS));
});

test("samplesKey changes with the samples only", () => {
  const a = [{ epoch: 1, seconds: 2, prompts: ["p"], cells: [{ weight: 1, images: [image("x.png")] }] }];
  assert.equal(samplesKey(a), samplesKey(structuredClone(a)));
  assert.notEqual(samplesKey(a), samplesKey([]));
  assert.notEqual(samplesKey(a), samplesKey([{ ...a[0], cells: [{ weight: 1, images: [image("y.png")] }] }]));
});
