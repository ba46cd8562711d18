import { test } from "node:test";
import assert from "node:assert/strict";

import { applyEvent, applySnapshot, beginFetch, capPoints, createHistory, latest, upsertPoint } from "../../js/lib/history.js";

const image = (name) => ({ filename: name, subfolder: "style_lora", type: "temp" });
const sample = (epoch, extra = {}) => ({ node: "7", run: "r1", epoch, seconds: 4.5, prompts: ["a cat", "a house"],
  cells: [{ weight: epoch === 0 ? null : 1, images: [image(`e${epoch}-a.png`), image(`e${epoch}-b.png`)] }], ...extra });

const step = (run, s, extra = {}) => ({ node: "7", run, epoch: Math.ceil(s / 4), num_epochs: 3, step: s,
  total_steps: 12, step_in_epoch: ((s - 1) % 4) + 1, steps_per_epoch: 4, loss: 1 / s, lr: 1, dlr: 1e-4 * s,
  eta_seconds: 12 - s, ...extra });

test("live events build the run; other nodes' events are ignored", () => {
  const h = createHistory(7);
  assert.equal(applyEvent(h, "style_lora.train_start", { node: "7", run: "r1", total_steps: 12, num_epochs: 3,
    steps_per_epoch: 4, start_step: 0 }), true);
  assert.equal(h.state, "running");
  for (let s = 1; s <= 5; s += 1) applyEvent(h, "style_lora.train_step", step("r1", s));
  applyEvent(h, "train_epoch", { node: "7", run: "r1", epoch: 1, num_epochs: 3, step: 4, file: "x-000001.safetensors", mean_loss: 0.5 });
  assert.equal(applyEvent(h, "train_step", step("r1", 6, { node: "8" })), false);
  assert.deepEqual(h.points.map((p) => p.step), [1, 2, 3, 4, 5]);
  assert.deepEqual(h.epochs, [{ epoch: 1, step: 4, file: "x-000001.safetensors", mean_loss: 0.5, validation_loss: null }]);
  assert.equal(h.eta_seconds, 7);
  assert.deepEqual(latest(h), { epoch: 2, step: 5, loss: 0.2, lr: 1, dlr: 5e-4 });
  applyEvent(h, "train_end", { node: "7", run: "r1", state: "finished", message: "3 files" });
  assert.equal(h.state, "finished");
  assert.equal(h.eta_seconds, 0);
});

test("a repeated step replaces the point instead of duplicating it", () => {
  const h = createHistory("7");
  applyEvent(h, "train_step", step("r1", 1));
  applyEvent(h, "train_step", step("r1", 2));
  applyEvent(h, "train_step", step("r1", 2, { loss: 9 }));
  assert.deepEqual(h.points.map((p) => [p.step, p.loss]), [[1, 1], [2, 9]]);
  const points = [];
  for (const s of [5, 1, 3, 3, 2]) upsertPoint(points, { step: s, loss: s });
  assert.deepEqual(points.map((p) => p.step), [1, 2, 3, 5]);
});

test("a new run resets the history; a page opened mid-run starts from the first step it sees", () => {
  const h = createHistory("7");
  applyEvent(h, "train_step", step("old", 3));
  assert.equal(h.run, "old");
  assert.equal(h.state, "running");
  assert.equal(h.total_steps, 12);
  applyEvent(h, "train_start", { node: "7", run: "new", total_steps: 40, num_epochs: 10, steps_per_epoch: 4, start_step: 8 });
  assert.deepEqual(h.points, []);
  assert.equal(h.start_step, 8);
  assert.equal(h.total_steps, 40);
  // The old run's late end does not touch the new run.
  assert.equal(applyEvent(h, "train_end", { node: "7", run: "old", state: "failed", message: "x" }), false);
  assert.equal(h.state, "running");
});

test("the server snapshot merges with live events, deduplicated by step", () => {
  const h = createHistory("7");
  const token = beginFetch(h);
  applyEvent(h, "train_step", step("r1", 4)); // arrives while GET /style_lora/training is under way
  applyEvent(h, "train_step", step("r1", 5));
  // Same run: united, whether the live events started it or not.
  applySnapshot(h, { node: "7", run: "r1", state: "running", total_steps: 12, num_epochs: 3, steps_per_epoch: 4,
    start_step: 0, eta_seconds: 8, points: [1, 2, 3, 4].map((s) => step("r1", s)),
    epochs: [{ epoch: 1, step: 4, file: "f1", mean_loss: 0.4 }] }, token);
  assert.deepEqual(h.points.map((p) => p.step), [1, 2, 3, 4, 5]);
  assert.equal(h.epochs.length, 1);
});

test("a stale snapshot of another run does not replace a run that started live", () => {
  const h = createHistory("7");
  const token = beginFetch(h);
  applyEvent(h, "train_start", { node: "7", run: "r2", total_steps: 12, num_epochs: 3, steps_per_epoch: 4, start_step: 0 });
  applyEvent(h, "train_step", step("r2", 1));
  assert.equal(applySnapshot(h, { node: "7", run: "r1", state: "finished", points: [step("r1", 1)], epochs: [] }, token), false);
  assert.equal(h.run, "r2");
  // A fresh fetch of another run does replace it (e.g. after a reload).
  assert.equal(applySnapshot(h, { node: "7", run: "r3", state: "failed", message: "boom", points: [], epochs: [] }), true);
  assert.equal(h.run, "r3");
  assert.equal(h.state, "failed");
  assert.equal(h.message, "boom");
});

test("a finished run is not set back to running by an older snapshot; idle snapshots change nothing", () => {
  const h = createHistory("7");
  applyEvent(h, "train_step", step("r1", 1));
  applyEvent(h, "train_end", { node: "7", run: "r1", state: "stopped", message: "Stopped" });
  applySnapshot(h, { node: "7", run: "r1", state: "running", points: [step("r1", 1), step("r1", 2)], epochs: [] });
  assert.equal(h.state, "stopped");
  assert.equal(h.points.length, 2);
  const before = h.version;
  assert.equal(applySnapshot(h, { node: "7", run: null, state: "idle", points: [], epochs: [] }), false);
  assert.equal(h.version, before);
});

test("capPoints keeps the recent half and thins the older half", () => {
  const points = Array.from({ length: 10 }, (_, i) => ({ step: i + 1 }));
  assert.deepEqual(capPoints(points, 20), points);
  assert.deepEqual(capPoints(points, 8).map((p) => p.step), [1, 3, 5, 6, 7, 8, 9, 10]);
});

test("validation losses: live events (epoch 0 before training), train_epoch's number, the snapshot", () => {
  const h = createHistory("7");
  applyEvent(h, "train_start", { node: "7", run: "r1", total_steps: 12, num_epochs: 3, steps_per_epoch: 4, start_step: 0 });
  assert.equal(applyEvent(h, "style_lora.train_validation", { node: "7", run: "r1", epoch: 0, step: 0,
    validation_loss: 0.25, source: "training images (8 images)" }), true);
  for (let s = 1; s <= 4; s += 1) applyEvent(h, "train_step", step("r1", s));
  applyEvent(h, "train_validation", { node: "7", run: "r1", epoch: 1, step: 4, validation_loss: 0.2, source: "training images (8 images)" });
  applyEvent(h, "train_epoch", { node: "7", run: "r1", epoch: 1, num_epochs: 3, step: 4, file: "f1", mean_loss: 0.3, validation_loss: 0.2 });
  // train_epoch alone (its train_validation missed) still gives the point; a repeat replaces it.
  applyEvent(h, "train_epoch", { node: "7", run: "r1", epoch: 2, num_epochs: 3, step: 8, file: "f2", mean_loss: 0.2, validation_loss: 0.18 });
  applyEvent(h, "train_validation", { node: "7", run: "r1", epoch: 2, step: 8, validation_loss: 0.17 });
  applyEvent(h, "train_validation", { node: "7", run: "r1", epoch: 3, step: 12, validation_loss: null }); // none measured
  assert.deepEqual(h.validation, [{ epoch: 0, step: 0, loss: 0.25 }, { epoch: 1, step: 4, loss: 0.2 }, { epoch: 2, step: 8, loss: 0.17 }]);
  assert.equal(h.validation_source, "training images (8 images)");
  assert.equal(h.epochs[0].validation_loss, 0.2);
  // Another node's validation is ignored.
  assert.equal(applyEvent(h, "train_validation", { node: "8", run: "r1", epoch: 3, step: 12, validation_loss: 0.1 }), false);
  // After a reload: the snapshot's validation list; epoch 0 of a resumed run without a step sits at its start.
  const r = createHistory("7");
  applySnapshot(r, { node: "7", run: "r2", state: "finished", start_step: 8, points: [], epochs: [{ epoch: 3, step: 12 }],
    validation: [{ epoch: 3, loss: 0.15 }, { epoch: 0, loss: 0.22 }, { epoch: 2, step: 8, loss: "x" }],
    validation_source: "held out (4 images)" });
  assert.equal(r.validation_source, "held out (4 images)");
  assert.deepEqual(r.validation, [{ epoch: 0, step: 8, loss: 0.22 }, { epoch: 3, step: 12, loss: 0.15 }]);
  // A new run drops them.
  applyEvent(r, "train_start", { node: "7", run: "r3", total_steps: 12, num_epochs: 3, steps_per_epoch: 4, start_step: 0 });
  assert.deepEqual(r.validation, []);
  assert.equal(r.validation_source, "");
});

test("samples: one entry per epoch from train_sample events and the snapshot, reset by a new run", () => {
  const h = createHistory("7");
  // The first event of a run seen mid-run starts it, like train_step does.
  assert.equal(applyEvent(h, "style_lora.train_sample", sample(0)), true);
  assert.equal(h.run, "r1");
  assert.equal(h.state, "running");
  applyEvent(h, "train_sample", sample(2, { cells: [{ weight: 0.8, images: [image("x.png"), { filename: "" }] },
    { weight: "1.0", images: [image("y.png")] }] }));
  applyEvent(h, "train_sample", sample(1));
  assert.deepEqual(h.samples.map((s) => s.epoch), [0, 1, 2]);
  assert.deepEqual(h.samples[0], { epoch: 0, seconds: 4.5, prompts: ["a cat", "a house"],
    cells: [{ weight: null, images: [image("e0-a.png"), image("e0-b.png")] }] });
  assert.deepEqual(h.samples[2].cells.map((c) => [c.weight, c.images.map((i) => i.filename)]), [[0.8, ["x.png"]], [1, ["y.png"]]]);
  applyEvent(h, "train_sample", sample(1, { seconds: 9 })); // the epoch sampled again: replaced
  assert.equal(h.samples.length, 3);
  assert.equal(h.samples[1].seconds, 9);
  // The snapshot's samples (payloads without node/run) unite with the live ones.
  applySnapshot(h, { node: "7", run: "r1", state: "running", points: [], epochs: [],
    samples: [{ epoch: 3, seconds: 1, prompts: [], cells: [{ weight: 1, images: [image("z.png")] }] }] });
  assert.deepEqual(h.samples.map((s) => s.epoch), [0, 1, 2, 3]);
  applyEvent(h, "train_start", { node: "7", run: "r2", total_steps: 12, num_epochs: 3, steps_per_epoch: 4, start_step: 0 });
  assert.deepEqual(h.samples, []);
});
