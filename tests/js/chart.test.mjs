import { test } from "node:test";
import assert from "node:assert/strict";

import {
  chartModel,
  COLOURS,
  decimate,
  draw,
  emaBeta,
  epochBoundaries,
  formatEta,
  formatRate,
  formatTick,
  headerText,
  linearDomain,
  linearTicks,
  logDomain,
  logTicks,
  niceStep,
  scaleLinear,
  scaleLog,
  smoothEma,
} from "../../js/lib/chart.js";
import { applyEvent, createHistory } from "../../js/lib/history.js";

const close = (a, b, eps = 1e-9) => Math.abs(a - b) <= eps;

test("smoothEma is grid.smooth_ema: debiased, skips non-finite values", () => {
  // Values from style_lora_engine.grid.smooth_ema([1, 2, nan, 3], beta=0.5).
  const out = smoothEma([1, 2, NaN, 3], 0.5);
  assert.ok(close(out[0], 1));
  assert.ok(close(out[1], 5 / 3));
  assert.ok(close(out[2], 5 / 3));
  assert.ok(close(out[3], 17 / 7));
  assert.ok(Number.isNaN(smoothEma([NaN, 1])[0]));
  assert.equal(emaBeta(499), 0.9);
  assert.equal(emaBeta(500), 0.98);
});

test("nice ticks", () => {
  assert.equal(niceStep(10, 5), 2);
  assert.equal(niceStep(1, 4), 0.25);
  assert.equal(niceStep(700, 5), 200);
  assert.deepEqual(linearTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.deepEqual(linearTicks(0.13, 0.31, 4), [0.15, 0.2, 0.25, 0.3]);
  assert.deepEqual(linearTicks(3, 3), [3]);
  assert.deepEqual(linearDomain([0.12, 0.31]), [0.1, 0.35]);
  assert.deepEqual(linearDomain([]), [0, 1]);
  const [lo, hi] = linearDomain([2, 2]);
  assert.ok(lo < 2 && hi > 2);
});

test("log scale for d·lr and LR", () => {
  // Whole decades, with room so values never sit on the frame.
  assert.deepEqual(logDomain([2e-4, 1e-5, 1, NaN, 0, -1]), [1e-6, 10]);
  assert.deepEqual(logDomain([3e-4]), [1e-4, 1e-3]);
  assert.deepEqual(logDomain([1e-3]), [1e-4, 1e-2]);
  assert.deepEqual(logDomain([]), [1e-6, 1]);
  assert.deepEqual(logTicks(1e-5, 1), [1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1]);
  assert.deepEqual(logTicks(1e-8, 1, 3), [1e-8, 1e-5, 1e-2]);
  const y = scaleLog([1e-4, 1], [100, 0]);
  assert.ok(close(y(1e-4), 100));
  assert.ok(close(y(1e-2), 50));
  assert.ok(Number.isNaN(y(0)));
  const x = scaleLinear([0, 10], [50, 150]);
  assert.equal(x(5), 100);
});

test("formatting", () => {
  assert.equal(formatEta(45), "0:45");
  assert.equal(formatEta(725), "12:05");
  assert.equal(formatEta(3723), "1:02:03");
  assert.equal(formatEta(null), "–");
  assert.equal(formatEta(-1), "–");
  assert.equal(formatRate(2.1e-4), "2.1e-4");
  assert.equal(formatRate(1), "1e0");
  assert.equal(formatRate(0.000123456), "1.23e-4");
  assert.equal(formatTick(0.30000000000000004), "0.3");
  assert.equal(formatTick(12000), "1.2e4");
});

function run(steps = 12, { end = null } = {}) {
  const h = createHistory("3");
  applyEvent(h, "train_start", { node: "3", run: "r", total_steps: 12, num_epochs: 3, steps_per_epoch: 4, start_step: 0 });
  for (let s = 1; s <= steps; s += 1) {
    applyEvent(h, "train_step", { node: "3", run: "r", epoch: Math.ceil(s / 4), num_epochs: 3, step: s, total_steps: 12,
      loss: 0.5 / s, lr: 1, dlr: 1e-4 * s, eta_seconds: (12 - s) * 10 });
    if (s % 4 === 0) applyEvent(h, "train_epoch", { node: "3", run: "r", epoch: s / 4, num_epochs: 3, step: s, file: `f${s / 4}`, mean_loss: 0.1 });
  }
  if (end) applyEvent(h, "train_end", { node: "3", run: "r", state: end, message: "done" });
  return h;
}

test("headerText: epoch, step, loss, d·lr, ETA, state", () => {
  assert.equal(headerText(run(6)), "epoch 2/3 · step 6/12 · loss 0.0833 · d·lr 6e-4 · ETA 1:00 · running");
  assert.equal(headerText(run(12, { end: "finished" })), "epoch 3/3 · step 12/12 · loss 0.0417 · d·lr 1.2e-3 · finished");
  assert.match(headerText(createHistory("1")), /Not trained yet/);
});

test("epoch boundaries come from saved epochs, completed from the points", () => {
  const h = run(9);
  assert.deepEqual(epochBoundaries(h), [{ epoch: 1, step: 4 }, { epoch: 2, step: 8 }]);
  h.epochs = []; // train_epoch events missed: the epoch number changes in the points
  assert.deepEqual(epochBoundaries(h), [{ epoch: 1, step: 4 }, { epoch: 2, step: 8 }]);
});

test("chartModel maps steps and values to pixels", () => {
  const h = run(12);
  const m = chartModel(h, 400, 200);
  assert.deepEqual(m.xDomain, [0, 12]);
  assert.equal(m.x(0), m.box.left);
  assert.equal(m.x(12), m.box.right);
  assert.deepEqual(m.markers.map((k) => k.epoch), [1, 2, 3]);
  assert.ok(close(m.markers[0].x, m.box.left + (m.box.right - m.box.left) / 3));
  // Loss goes down: the raw line ends lower on screen (larger y) than it starts.
  const loss = m.series.loss;
  assert.equal(loss.length, 12);
  assert.ok(loss[11][1] > loss[0][1]);
  // d·lr rises on the log axis; LR (constant 1.0) sits one decade below the top, not on the frame.
  assert.deepEqual(m.rateDomain, [1e-5, 10]);
  assert.ok(m.series.dlr[11][1] < m.series.dlr[0][1]);
  assert.ok(close(m.series.lr[0][1], m.box.top + (m.box.bottom - m.box.top) / 6));
  assert.ok(m.xTicks.every(Number.isInteger));
  for (const t of m.lossTicks) assert.ok(t >= m.lossDomain[0] - 1e-12 && t <= m.lossDomain[1] + 1e-12);
});

test("a resumed run starts its x axis at the resume step and shades what came before", () => {
  const h = createHistory("3");
  applyEvent(h, "train_start", { node: "3", run: "r", total_steps: 20, num_epochs: 5, steps_per_epoch: 4, start_step: 8 });
  applyEvent(h, "train_step", { node: "3", run: "r", epoch: 3, step: 9, loss: 0.2, lr: 1, dlr: 1e-4, eta_seconds: 5 });
  const m = chartModel(h, 300, 150);
  assert.deepEqual(m.xDomain, [8, 20]);
  assert.equal(m.resumedBefore, m.box.left);
});

test("decimate keeps each bucket's extremes", () => {
  const series = Array.from({ length: 1000 }, (_, i) => [i, i === 500 ? 99 : Math.sin(i)]);
  const thin = decimate(series, 50);
  assert.ok(thin.length <= 100);
  assert.ok(thin.some((p) => p[1] === 99));
  assert.equal(decimate(series.slice(0, 10), 50).length, 10);
});

/** A 2D context that records what is drawn. */
function recordingContext() {
  const calls = [];
  const state = { strokeStyle: "", fillStyle: "", lineWidth: 1, font: "", textAlign: "", textBaseline: "" };
  const ctx = new Proxy(state, {
    get(target, key) {
      if (key in target) return target[key];
      if (key === "calls") return calls;
      if (key === "measureText") return (text) => ({ width: String(text).length * 6 });
      return (...args) => calls.push({ op: key, args, strokeStyle: target.strokeStyle, fillStyle: target.fillStyle,
        lineWidth: target.lineWidth });
    },
    set(target, key, value) {
      target[key] = value;
      calls.push({ op: `set:${String(key)}`, args: [value] });
      return true;
    },
  });
  return ctx;
}

function strokesIn(calls, colour) {
  // Each stroke() with its preceding path: the number of lineTo calls since the last beginPath.
  const out = [];
  let segments = 0;
  for (const c of calls) {
    if (c.op === "beginPath") segments = 0;
    if (c.op === "lineTo") segments += 1;
    if (c.op === "stroke" && c.strokeStyle === colour) out.push({ segments, lineWidth: c.lineWidth });
  }
  return out;
}

test("draw: raw loss thin, EMA bold, d·lr and LR lines, epoch markers with their numbers", () => {
  const ctx = recordingContext();
  const model = draw(ctx, run(12), 400, 220);
  const calls = ctx.calls;
  const raw = strokesIn(calls, COLOURS.loss);
  const ema = strokesIn(calls, COLOURS.ema);
  assert.equal(raw.length, 1);
  assert.equal(raw[0].segments, 11);
  assert.equal(ema[0].segments, 11);
  assert.ok(ema[0].lineWidth > raw[0].lineWidth);
  assert.equal(strokesIn(calls, COLOURS.dlr)[0].segments, 11);
  assert.equal(strokesIn(calls, COLOURS.lr)[0].segments, 11);
  assert.equal(strokesIn(calls, COLOURS.epoch).length, 3);
  const texts = calls.filter((c) => c.op === "fillText").map((c) => c.args[0]);
  for (const label of ["1", "2", "3", "loss", "EMA", "d·lr", "LR", "1e-5", "1e-3", "1e1"]) assert.ok(texts.includes(label), label);
  assert.ok(texts.includes("0.1") || texts.includes("0.2"), texts.join(" ")); // loss axis
  // Balanced save/restore, and the whole area painted first.
  assert.equal(calls.filter((c) => c.op === "save").length, calls.filter((c) => c.op === "restore").length);
  assert.deepEqual(calls.find((c) => c.op === "fillRect").args, [0, 0, 400, 220]);
  assert.equal(model.markers.length, 3);
});

test("draw: an empty run says so and draws no curves", () => {
  const ctx = recordingContext();
  const h = createHistory("3");
  draw(ctx, h, 300, 150);
  const texts = ctx.calls.filter((c) => c.op === "fillText").map((c) => c.args[0]);
  assert.ok(texts.includes("no loss values yet"));
  assert.deepEqual(texts.filter((t) => /^[\d.e-]+$/.test(t)), []); // no axis numbers without data
  assert.equal(strokesIn(ctx.calls, COLOURS.ema).length, 0);
});

test("draw: a non-finite loss breaks the line instead of drawing to NaN", () => {
  const h = run(6);
  h.points[2].loss = NaN;
  const ctx = recordingContext();
  draw(ctx, h, 400, 200);
  for (const c of ctx.calls) {
    if (c.op === "lineTo" || c.op === "moveTo") assert.ok(c.args.every(Number.isFinite), JSON.stringify(c));
  }
  assert.equal(strokesIn(ctx.calls, COLOURS.loss)[0].segments, 3); // 1-2, then 4-5-6
});

test("draw: a run with one step so far shows that step as a dot", () => {
  const ctx = recordingContext();
  draw(ctx, run(1), 400, 200);
  const dots = ctx.calls.filter((c) => c.op === "fillRect" && c.fillStyle === COLOURS.loss && c.args[2] < 10);
  assert.equal(dots.length, 1); // one dot for the point (the legend swatch is 12 px wide)
  const many = recordingContext();
  draw(many, run(6), 400, 200);
  assert.equal(many.calls.filter((c) => c.op === "fillRect" && c.fillStyle === COLOURS.loss && c.args[2] < 10).length, 0);
});

/** run(12) with validation losses at epochs 0..3 (epoch 0 before training, at the start step). */
function validated(values = [0.3, 0.2, 0.15, 0.12]) {
  const h = run(12);
  values.forEach((loss, epoch) => applyEvent(h, "train_validation", { node: "3", run: "r", epoch, step: epoch * 4,
    validation_loss: loss, source: "training images (8 images)" }));
  return h;
}

test("chartModel: validation loss per epoch at the epoch's end step, on the loss axis", () => {
  const h = validated([0.9, 0.2, 0.15, 0.12]);
  const m = chartModel(h, 400, 200);
  assert.deepEqual(m.series.validation.map(([x]) => x), [0, 4, 8, 12].map((s) => m.x(s)));
  assert.equal(m.series.validation[0][0], m.box.left); // epoch 0 at the run's start step
  assert.ok(close(m.series.validation[1][1], m.yLoss(0.2)));
  assert.ok(m.lossDomain[1] >= 0.9); // the loss axis makes room for the validation values
  assert.deepEqual(chartModel(run(12), 400, 200).series.validation, []);
  assert.match(headerText(h), /· loss 0\.0417 · val 0\.1200 ·/);
  assert.doesNotMatch(headerText(run(12)), /val/);
});

test("draw: the validation series has its own colour, dots and a legend entry only when there is one", () => {
  const ctx = recordingContext();
  draw(ctx, validated(), 400, 220);
  assert.ok(!Object.values(COLOURS).some((c, i, all) => c === COLOURS.validation && all.indexOf(c) !== i)); // its own
  assert.equal(strokesIn(ctx.calls, COLOURS.validation)[0].segments, 3);
  const dots = ctx.calls.filter((c) => c.op === "fillRect" && c.fillStyle === COLOURS.validation && c.args[2] < 10);
  assert.equal(dots.length, 4);
  const texts = ctx.calls.filter((c) => c.op === "fillText").map((c) => c.args[0]);
  assert.ok(texts.includes("val loss"));
  const plain = recordingContext();
  draw(plain, run(12), 400, 220);
  assert.ok(!plain.calls.some((c) => c.op === "fillText" && c.args[0] === "val loss"));
  // Before the first step, epoch 0's validation loss is already drawn (as a dot).
  const early = createHistory("3");
  applyEvent(early, "train_start", { node: "3", run: "r", total_steps: 12, num_epochs: 3, steps_per_epoch: 4, start_step: 0 });
  applyEvent(early, "train_validation", { node: "3", run: "r", epoch: 0, step: 0, validation_loss: 0.3 });
  const first = recordingContext();
  draw(first, early, 400, 220);
  assert.ok(first.calls.some((c) => c.op === "fillText" && c.args[0] === "waiting for the first step…"));
  assert.ok(first.calls.some((c) => c.op === "fillRect" && c.fillStyle === COLOURS.validation && c.args[2] < 10));
  for (const c of first.calls) {
    if (c.op === "lineTo" || c.op === "moveTo") assert.ok(c.args.every(Number.isFinite), JSON.stringify(c));
  }
});
