// The live training chart: loss per step (raw, thin) and its EMA (bold) on the left axis, the
// validation loss per epoch (dots joined by a line, epoch 0 = before training) on the same axis,
// d·lr and LR on a log-scaled right axis, dashed epoch markers with epoch numbers. Everything is computed by
// pure functions (tested with node:test); draw() only uses the canvas 2D-context API, so a
// recording fake context can check it.
// Pure module: no DOM, no ComfyUI imports, no side effects on import.
import { latest } from "./history.js";

export const COLOURS = Object.freeze({
  background: "#1b1b1b",
  frame: "#555",
  grid: "rgba(255,255,255,0.07)",
  text: "#bbb",
  muted: "#888",
  loss: "rgba(110,150,210,0.55)",
  ema: "#8fbcff",
  dlr: "#e0a458",
  lr: "#c58be0",
  validation: "#6fd08c",
  epoch: "rgba(255,255,255,0.28)",
  resumed: "rgba(255,255,255,0.04)",
});
export const FONT = "11px sans-serif";

/**
 * Debiased exponential moving average, the same as style_lora_engine/grid.py smooth_ema
 * (TensorBoard's smoothing): non-finite values are skipped, NaN until the first finite one.
 */
export function smoothEma(values, beta = 0.9) {
  const out = [];
  let avg = 0;
  let weight = 0;
  for (const v of values) {
    if (Number.isFinite(v)) {
      avg = beta * avg + (1 - beta) * v;
      weight = beta * weight + (1 - beta);
    }
    out.push(weight > 0 ? avg / weight : NaN);
  }
  return out;
}

/** The smoothing plot_loss uses for n points (0.9, or 0.98 for long runs). */
export function emaBeta(n) {
  return n < 500 ? 0.9 : 0.98;
}

const clean = (v) => Number(v.toPrecision(12)); // 0.35000000000000003 -> 0.35
const pow10 = (k) => Number(`1e${k}`); // exact, unlike 10 ** -5

/** A "nice" tick step (1, 2, 2.5, 5 × 10^k) for about ``count`` ticks over ``span``. */
export function niceStep(span, count = 5) {
  const raw = span / Math.max(1, count);
  if (!(raw > 0) || !Number.isFinite(raw)) return 1;
  const mag = pow10(Math.floor(Math.log10(raw)));
  for (const m of [1, 2, 2.5, 5, 10]) if (raw <= m * mag * (1 + 1e-12)) return clean(m * mag);
  return clean(10 * mag);
}

/** Nice ticks inside [lo, hi]. */
export function linearTicks(lo, hi, count = 5) {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) return [lo];
  const step = niceStep(hi - lo, count);
  const ticks = [];
  const start = Math.ceil(lo / step - 1e-9);
  for (let k = start; k * step <= hi + step * 1e-9; k += 1) {
    ticks.push(clean(k * step));
    if (ticks.length > 1000) break;
  }
  return ticks;
}

/** A padded, nice linear domain covering ``values`` (finite ones only). */
export function linearDomain(values, { pad = 0.05, count = 5 } = {}) {
  const finite = values.filter(Number.isFinite);
  if (!finite.length) return [0, 1];
  let lo = Math.min(...finite);
  let hi = Math.max(...finite);
  if (hi === lo) {
    const d = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    lo -= d;
    hi += d;
  } else {
    const d = (hi - lo) * pad;
    lo -= d;
    hi += d;
  }
  const step = niceStep(hi - lo, count);
  return [clean(Math.floor(lo / step) * step), clean(Math.ceil(hi / step) * step)];
}

/**
 * A log domain [10^a, 10^b] (whole decades) covering the positive finite ``values`` with room
 * above and below, so a constant LR of 1.0 is not drawn on the frame.
 */
export function logDomain(values) {
  const positive = values.filter((v) => Number.isFinite(v) && v > 0);
  if (!positive.length) return [1e-6, 1];
  const lo = Math.ceil(Math.log10(Math.min(...positive)) - 1e-9) - 1;
  const hi = Math.floor(Math.log10(Math.max(...positive)) + 1e-9) + 1;
  return [pow10(lo), pow10(hi)];
}

/** Ticks of a log domain: every decade, thinned to at most ``max`` labels. */
export function logTicks(lo, hi, max = 6) {
  if (!(lo > 0) || !(hi > lo)) return [];
  const a = Math.ceil(Math.log10(lo) - 1e-9);
  const b = Math.floor(Math.log10(hi) + 1e-9);
  const every = Math.max(1, Math.ceil((b - a + 1) / max));
  const ticks = [];
  for (let k = a; k <= b; k += 1) if ((k - a) % every === 0) ticks.push(pow10(k));
  return ticks;
}

/** A linear map of [d0, d1] onto [r0, r1]. */
export function scaleLinear([d0, d1], [r0, r1]) {
  const span = d1 - d0 || 1;
  return (v) => r0 + ((v - d0) / span) * (r1 - r0);
}

/** A log10 map of [d0, d1] (positive) onto [r0, r1]; non-positive values map to NaN. */
export function scaleLog([d0, d1], [r0, r1]) {
  const l0 = Math.log10(d0);
  const span = Math.log10(d1) - l0 || 1;
  return (v) => (v > 0 ? r0 + ((Math.log10(v) - l0) / span) * (r1 - r0) : NaN);
}

/** "0:45", "12:05", "1:02:03"; "–" when unknown. */
export function formatEta(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(Number(seconds)) || seconds < 0) return "–";
  const s = Math.round(Number(seconds));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const sec = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${sec}` : `${m}:${sec}`;
}

/** Compact scientific notation for rates: 2.1e-4, 1e0. */
export function formatRate(v) {
  if (!Number.isFinite(v)) return "–";
  if (v === 0) return "0";
  const [mantissa, exponent] = v.toExponential(2).split("e");
  const m = mantissa.replace(/\.?0+$/, "");
  return `${m}e${Number(exponent)}`;
}

/** Axis label for a linear tick: no float noise, at most 4 significant digits. */
export function formatTick(v) {
  if (!Number.isFinite(v)) return "";
  if (v === 0) return "0";
  const abs = Math.abs(v);
  if (abs >= 1e4 || abs < 1e-3) return formatRate(v);
  return String(Number(v.toPrecision(4)));
}

/** The panel's header line: "epoch 3/20 · step 120/800 · loss 0.1130 · d·lr 2.1e-4 · ETA 12:05 · running". */
export function headerText(history) {
  if (history.state === "idle" && !history.points.length) {
    return "Not trained yet in this session: queue the workflow to see the loss live.";
  }
  const { epoch, step, loss, dlr } = latest(history);
  const parts = [];
  parts.push(`epoch ${epoch}/${history.num_epochs || "?"}`);
  parts.push(`step ${step}/${history.total_steps || "?"}`);
  if (Number.isFinite(loss)) parts.push(`loss ${loss.toFixed(4)}`);
  const validation = history.validation?.at(-1);
  if (validation && Number.isFinite(validation.loss)) parts.push(`val ${validation.loss.toFixed(4)}`);
  if (Number.isFinite(dlr)) parts.push(`d·lr ${formatRate(dlr)}`);
  if (history.state === "running") parts.push(`ETA ${formatEta(history.eta_seconds)}`);
  parts.push(history.state);
  return parts.join(" · ");
}

/**
 * Epoch boundaries: [{epoch, step}] from the saved epochs, completed from the points where the
 * epoch number changes (so markers appear even if a train_epoch event was missed).
 */
export function epochBoundaries(history) {
  const byEpoch = new Map();
  for (const e of history.epochs) byEpoch.set(e.epoch, e.step);
  const points = history.points;
  for (let i = 1; i < points.length; i += 1) {
    const prev = points[i - 1];
    if (points[i].epoch > prev.epoch && !byEpoch.has(prev.epoch)) byEpoch.set(prev.epoch, prev.step);
  }
  return [...byEpoch.entries()].map(([epoch, step]) => ({ epoch, step })).sort((a, b) => a.step - b.step);
}

/** Thin a series of [x, y] to about ``buckets`` buckets, keeping each bucket's min and max. */
export function decimate(series, buckets) {
  if (series.length <= buckets * 2 || buckets < 1) return series;
  const out = [];
  const size = series.length / buckets;
  for (let b = 0; b < buckets; b += 1) {
    const chunk = series.slice(Math.floor(b * size), Math.floor((b + 1) * size));
    let lo = null;
    let hi = null;
    for (const p of chunk) {
      if (!Number.isFinite(p[1])) continue;
      if (!lo || p[1] < lo[1]) lo = p;
      if (!hi || p[1] > hi[1]) hi = p;
    }
    if (lo && hi) out.push(...(lo[0] <= hi[0] ? (lo === hi ? [lo] : [lo, hi]) : [hi, lo]));
  }
  return out;
}

/**
 * Everything draw() needs, in pixels: the plot box, domains, ticks, the five series as [x, y]
 * pixel points (NaN where a value is missing) and the epoch markers. The validation series has one
 * point per epoch at the epoch's last step (epoch 0 at the run's start step).
 */
export function chartModel(history, width, height) {
  const box = { left: 46, top: 10, right: width - 52, bottom: height - 22 };
  if (box.right - box.left < 20) box.right = box.left + 20;
  if (box.bottom - box.top < 20) box.bottom = box.top + 20;
  const points = history.points;
  const first = points[0]?.step ?? 1;
  const last = points[points.length - 1]?.step ?? 1;
  const start = history.start_step > 0 ? history.start_step : 0;
  const x0 = Math.min(start, first - 1);
  const x1 = Math.max(history.total_steps || 0, last, x0 + 1);
  const x = scaleLinear([x0, x1], [box.left, box.right]);
  const losses = points.map((p) => p.loss);
  const ema = smoothEma(losses, emaBeta(losses.length));
  const validation = (history.validation ?? []).filter((v) => Number.isFinite(v.loss) && Number.isFinite(v.step));
  const lossDomain = linearDomain([...losses, ...validation.map((v) => v.loss)]);
  const yLoss = scaleLinear(lossDomain, [box.bottom, box.top]);
  const rates = points.flatMap((p) => [p.dlr, p.lr]);
  const rateDomain = logDomain(rates);
  const yRate = scaleLog(rateDomain, [box.bottom, box.top]);
  const px = (values, y) => points.map((p, i) => [x(p.step), Number.isFinite(values[i]) ? y(values[i]) : NaN]);
  const buckets = Math.max(1, Math.floor(box.right - box.left));
  const markers = epochBoundaries(history).filter((e) => e.step >= x0 && e.step <= x1)
    .map((e) => ({ epoch: e.epoch, step: e.step, x: x(e.step) }));
  const empty = points.length === 0 && validation.length === 0;
  return {
    box,
    xDomain: [x0, x1],
    lossDomain,
    rateDomain,
    // Steps are whole numbers; an empty chart has no value axes yet.
    xTicks: empty && !history.total_steps ? []
      : linearTicks(x0, x1, Math.max(2, Math.floor((box.right - box.left) / 80))).filter(Number.isInteger),
    lossTicks: empty ? [] : linearTicks(lossDomain[0], lossDomain[1], Math.max(2, Math.floor((box.bottom - box.top) / 40))),
    rateTicks: empty ? [] : logTicks(rateDomain[0], rateDomain[1], Math.max(2, Math.floor((box.bottom - box.top) / 30))),
    x,
    yLoss,
    yRate,
    series: {
      loss: decimate(px(losses, yLoss), buckets),
      ema: px(ema, yLoss),
      dlr: decimate(px(points.map((p) => p.dlr), yRate), buckets),
      lr: decimate(px(points.map((p) => p.lr), yRate), buckets),
      validation: validation.filter((v) => v.step >= x0 && v.step <= x1).map((v) => [x(v.step), yLoss(v.loss)]),
    },
    markers,
    resumedBefore: start > 0 ? x(start) : null,
  };
}

function textWidth(ctx, text) {
  const measured = ctx.measureText?.(text)?.width;
  return Number.isFinite(measured) ? measured : text.length * 6;
}

function polyline(ctx, series, colour, width, dash = []) {
  ctx.beginPath();
  ctx.strokeStyle = colour;
  ctx.lineWidth = width;
  ctx.setLineDash?.(dash);
  let pen = false;
  const lonely = []; // points with no neighbour draw no line: mark them with a dot instead
  let run = [];
  const endRun = () => {
    if (run.length === 1) lonely.push(run[0]);
    run = [];
  };
  for (const [px, py] of series) {
    if (!Number.isFinite(py) || !Number.isFinite(px)) {
      pen = false;
      endRun();
      continue;
    }
    if (pen) ctx.lineTo(px, py);
    else ctx.moveTo(px, py);
    pen = true;
    run.push([px, py]);
  }
  endRun();
  ctx.stroke();
  ctx.setLineDash?.([]);
  if (lonely.length) {
    ctx.fillStyle = colour;
    const r = Math.max(1.5, width);
    for (const [px, py] of lonely) ctx.fillRect(px - r, py - r, 2 * r, 2 * r);
  }
}

/**
 * Draw the chart of ``history`` on a 2D context of ``width`` × ``height`` CSS pixels.
 * Returns the model it drew (handy for tests and hit-testing).
 */
export function draw(ctx, history, width, height) {
  const model = chartModel(history, width, height);
  const { box } = model;
  ctx.save();
  ctx.fillStyle = COLOURS.background;
  ctx.fillRect(0, 0, width, height);
  ctx.font = FONT;
  ctx.textBaseline = "middle";

  if (model.resumedBefore !== null) {
    ctx.fillStyle = COLOURS.resumed;
    ctx.fillRect(box.left, box.top, model.resumedBefore - box.left, box.bottom - box.top);
  }

  // grid and left (loss) axis labels
  ctx.lineWidth = 1;
  ctx.strokeStyle = COLOURS.grid;
  ctx.fillStyle = COLOURS.text;
  ctx.textAlign = "right";
  for (const t of model.lossTicks) {
    const y = Math.round(model.yLoss(t)) + 0.5;
    ctx.beginPath();
    ctx.moveTo(box.left, y);
    ctx.lineTo(box.right, y);
    ctx.stroke();
    ctx.fillText(formatTick(t), box.left - 4, y);
  }
  // right (d·lr, LR) axis labels, log scale
  ctx.textAlign = "left";
  ctx.fillStyle = COLOURS.dlr;
  for (const t of model.rateTicks) ctx.fillText(formatRate(t), box.right + 4, model.yRate(t));
  // x axis labels (steps)
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  ctx.fillStyle = COLOURS.muted;
  for (const t of model.xTicks) ctx.fillText(formatTick(t), model.x(t), box.bottom + 4);

  // epoch markers, labels only where they do not collide
  let lastLabelRight = -Infinity;
  for (const marker of model.markers) {
    const mx = Math.round(marker.x) + 0.5;
    polyline(ctx, [[mx, box.top], [mx, box.bottom]], COLOURS.epoch, 1, [3, 3]);
    const label = String(marker.epoch);
    const w = textWidth(ctx, label);
    if (mx - w / 2 > lastLabelRight + 3) {
      ctx.fillStyle = COLOURS.muted;
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      ctx.fillText(label, mx, box.top + 2);
      lastLabelRight = mx + w / 2;
    }
  }

  if (!history.points.length) {
    ctx.fillStyle = COLOURS.muted;
    ctx.textAlign = "center";
    ctx.textBaseline = "middle";
    const message = history.state === "running" ? "waiting for the first step…" : "no loss values yet";
    ctx.fillText(message, (box.left + box.right) / 2, (box.top + box.bottom) / 2);
  } else {
    polyline(ctx, model.series.lr, COLOURS.lr, 1, [4, 3]);
    polyline(ctx, model.series.dlr, COLOURS.dlr, 1.5);
    polyline(ctx, model.series.loss, COLOURS.loss, 1);
    polyline(ctx, model.series.ema, COLOURS.ema, 2.5);
  }
  // Drawn over the training loss (also before the first step: epoch 0's loss comes first).
  if (model.series.validation.length) {
    polyline(ctx, model.series.validation, COLOURS.validation, 1.5);
    ctx.fillStyle = COLOURS.validation;
    for (const [vx, vy] of model.series.validation) ctx.fillRect(vx - 2.5, vy - 2.5, 5, 5);
  }

  // frame
  ctx.strokeStyle = COLOURS.frame;
  ctx.lineWidth = 1;
  ctx.strokeRect(box.left + 0.5, box.top + 0.5, box.right - box.left, box.bottom - box.top);

  // legend
  const legend = [["loss", COLOURS.loss], ["EMA", COLOURS.ema], ["d·lr", COLOURS.dlr], ["LR", COLOURS.lr]];
  if (model.series.validation.length) legend.push(["val loss", COLOURS.validation]);
  ctx.textAlign = "left";
  ctx.textBaseline = "middle";
  let lx = box.left + 6;
  const ly = box.bottom - 9;
  for (const [label, colour] of legend) {
    ctx.fillStyle = colour;
    ctx.fillRect(lx, ly - 1, 12, 3);
    ctx.fillStyle = COLOURS.text;
    ctx.fillText(label, lx + 15, ly);
    lx += 22 + textWidth(ctx, label);
  }
  ctx.restore();
  return model;
}
