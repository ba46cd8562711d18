// The live training panel's data: the server's history (GET /style_lora/training) merged with the
// training events (named in contract.json), deduplicated by step (points) or epoch (epochs,
// validation losses, samples), reset when a new run starts.
// Pure module: no DOM, no ComfyUI imports, no side effects on import.
import CONTRACT from "./contract.json" with { type: "json" };

// The server's event names (contract.json) -> their kind, the event's key there ("train_step").
const EVENT_KINDS = new Map(Object.entries(CONTRACT.events).map(([kind, name]) => [name, kind]));

export const TERMINAL_STATES = Object.freeze(["finished", "stopped", "failed"]);
export const MAX_POINTS = 20000;
// Events of a run in progress: one for another run (or before train_start) starts that run.
const LIVE_KINDS = new Set(["train_step", "train_epoch", "train_validation", "train_sample"]);

/** An empty history for one TrainLoRA node. */
export function createHistory(node = null) {
  return {
    node: node === null ? null : String(node),
    run: null,
    state: "idle",
    message: "",
    total_steps: 0,
    num_epochs: 0,
    steps_per_epoch: 0,
    start_step: 0,
    eta_seconds: null,
    points: [], // [{step, epoch, loss, lr, dlr}] sorted by step, one per step
    epochs: [], // [{epoch, step, file, mean_loss, validation_loss}] sorted by epoch, one per epoch
    validation: [], // [{epoch, step, loss}] sorted by epoch (0 = before training), one per epoch
    validation_source: "", // what the validation loss is measured on: "training images (8 images)"
    samples: [], // [{epoch, seconds, prompts, cells: [{weight, images: [{filename, subfolder, type}]}]}] by epoch
    seq: 0, // bumped on every reset by a live event (see beginFetch / applySnapshot)
    version: 0, // bumped on every change, so a panel knows when to redraw
  };
}

function resetForRun(history, run) {
  Object.assign(history, createHistory(history.node), { run: run ?? null, state: "running",
    seq: history.seq + 1, version: history.version });
}

function num(value, fallback = null) {
  const n = Number(value);
  return value === null || value === undefined || !Number.isFinite(n) ? fallback : n;
}

function cleanPoint(p) {
  return { step: num(p.step, 0), epoch: num(p.epoch, 0), loss: num(p.loss), lr: num(p.lr), dlr: num(p.dlr) };
}

/** Insert or replace by step, keeping the list sorted (appending is the common, fast case). */
export function upsertPoint(points, point) {
  const p = cleanPoint(point);
  const last = points[points.length - 1];
  if (!last || last.step < p.step) {
    points.push(p);
    return points;
  }
  let lo = 0;
  let hi = points.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (points[mid].step < p.step) lo = mid + 1;
    else hi = mid;
  }
  if (points[lo] && points[lo].step === p.step) points[lo] = p;
  else points.splice(lo, 0, p);
  return points;
}

/** Insert or replace ``entry`` by its epoch, keeping ``list`` sorted by epoch. */
function upsertByEpoch(list, entry) {
  const index = list.findIndex((x) => x.epoch === entry.epoch);
  if (index >= 0) list[index] = entry;
  else {
    list.push(entry);
    list.sort((a, b) => a.epoch - b.epoch);
  }
}

function upsertEpoch(epochs, epoch) {
  upsertByEpoch(epochs, { epoch: num(epoch.epoch, 0), step: num(epoch.step, 0), file: epoch.file ?? "",
    mean_loss: num(epoch.mean_loss), validation_loss: num(epoch.validation_loss) });
}

/**
 * One validation loss: {epoch, step, loss} from a train_validation event ("validation_loss") or a
 * snapshot entry ("loss"), with the set it was measured on ("source", optional). Epoch 0 (before training) without a step sits at the run's start step.
 * Entries without a finite loss are skipped.
 */
function upsertValidation(history, entry) {
  const loss = num(entry.loss ?? entry.validation_loss);
  if (loss === null) return false;
  const epoch = num(entry.epoch, 0);
  const fallback = epoch === 0 ? history.start_step : history.epochs.find((e) => e.epoch === epoch)?.step;
  upsertByEpoch(history.validation, { epoch, step: num(entry.step, fallback ?? 0), loss });
  if (entry.source) history.validation_source = String(entry.source);
  return true;
}

function cleanImage(image) {
  return { filename: String(image?.filename ?? ""), subfolder: String(image?.subfolder ?? ""),
    type: String(image?.type ?? "temp") };
}

/** One epoch's sample images (a train_sample payload, or a snapshot's entry); a repeat replaces it. */
function upsertSample(samples, sample) {
  const cells = (Array.isArray(sample.cells) ? sample.cells : []).map((cell) => ({
    weight: num(cell?.weight),
    images: (Array.isArray(cell?.images) ? cell.images : []).map(cleanImage).filter((i) => i.filename),
  }));
  upsertByEpoch(samples, { epoch: num(sample.epoch, 0), seconds: num(sample.seconds), cells,
    prompts: (Array.isArray(sample.prompts) ? sample.prompts : []).map(String) });
}

/** Keep a very long run's shape within ``limit`` points: drop every other point of the older half. */
export function capPoints(points, limit = MAX_POINTS) {
  if (points.length <= limit) return points;
  const half = Math.floor(points.length / 2);
  return points.slice(0, half).filter((_, i) => i % 2 === 0).concat(points.slice(half));
}

function takeSizes(history, detail) {
  for (const key of ["total_steps", "num_epochs", "steps_per_epoch", "start_step"]) {
    const value = num(detail?.[key]);
    if (value !== null) history[key] = value;
  }
}

/**
 * Apply one server event (its name in contract.json, or its key there: "train_step") to the history
 * of the node it is about. Returns true when the history changed. Events for another node are ignored.
 */
export function applyEvent(history, type, detail) {
  if (!detail || (history.node !== null && String(detail.node) !== history.node)) return false;
  const kind = EVENT_KINDS.get(String(type)) ?? String(type);
  const run = detail.run ?? null;
  if (kind === "train_start") {
    resetForRun(history, run);
    takeSizes(history, detail);
  } else if (LIVE_KINDS.has(kind)) {
    // A page opened mid-run never saw train_start: the first event of another run starts it.
    if (run !== history.run || history.state === "idle") {
      if (run !== history.run) resetForRun(history, run);
      else history.state = "running";
    }
    takeSizes(history, detail);
    if (kind === "train_step") {
      upsertPoint(history.points, detail);
      history.points = capPoints(history.points);
      history.eta_seconds = num(detail.eta_seconds);
      if (!TERMINAL_STATES.includes(history.state)) history.state = "running";
    } else if (kind === "train_epoch") {
      upsertEpoch(history.epochs, detail);
      // The epoch's validation loss also comes with train_validation; either one draws the point.
      if (num(detail.validation_loss) !== null) upsertValidation(history, detail);
    } else if (kind === "train_validation") {
      upsertValidation(history, detail); // one without a number (failed) is skipped
    } else {
      upsertSample(history.samples, detail);
    }
  } else if (kind === "train_end") {
    if (run !== history.run && history.run !== null) return false; // the end of a run we replaced
    history.run = run;
    history.state = detail.state ?? "finished";
    history.message = detail.message ?? "";
    history.eta_seconds = history.state === "finished" ? 0 : null;
  } else {
    return false;
  }
  history.version += 1;
  return true;
}

/** Call before GET /style_lora/training; pass the token to applySnapshot with the answer. */
export function beginFetch(history) {
  return history.seq;
}

/**
 * Merge the server's snapshot of the node's last run. Same run: points, epochs, validation losses
 * and samples are united (deduplicated by step / epoch), a finished state is never taken back to
 * "running". Another run: the snapshot replaces the history, unless a live event started a run after the request was
 * made (``token`` from beginFetch), in which case the live data is newer and the snapshot is
 * ignored. Returns true when the history changed.
 */
export function applySnapshot(history, snapshot, token = history.seq) {
  if (!snapshot || typeof snapshot !== "object") return false;
  const run = snapshot.run ?? null;
  if (run === null && (snapshot.state ?? "idle") === "idle") return false; // the server knows nothing
  if (run !== history.run) {
    if (token !== history.seq) return false;
    Object.assign(history, createHistory(history.node), { run, seq: history.seq, version: history.version });
  }
  takeSizes(history, snapshot);
  for (const point of snapshot.points ?? []) upsertPoint(history.points, point);
  history.points = capPoints(history.points);
  for (const epoch of snapshot.epochs ?? []) upsertEpoch(history.epochs, epoch);
  for (const entry of snapshot.validation ?? []) upsertValidation(history, entry);
  if (snapshot.validation_source) history.validation_source = String(snapshot.validation_source);
  for (const sample of snapshot.samples ?? []) upsertSample(history.samples, sample);
  const state = snapshot.state ?? "idle";
  if (!(TERMINAL_STATES.includes(history.state) && state === "running")) {
    history.state = state;
    history.message = snapshot.message ?? history.message;
    if (snapshot.eta_seconds !== undefined) history.eta_seconds = num(snapshot.eta_seconds);
  }
  history.version += 1;
  return true;
}

/** The latest position: {epoch, step, loss, dlr, lr} of the last point (or zeros). */
export function latest(history) {
  const last = history.points[history.points.length - 1];
  return {
    epoch: last?.epoch ?? (history.epochs[history.epochs.length - 1]?.epoch ?? 0),
    step: last?.step ?? history.start_step ?? 0,
    loss: last?.loss ?? null,
    lr: last?.lr ?? null,
    dlr: last?.dlr ?? null,
  };
}
