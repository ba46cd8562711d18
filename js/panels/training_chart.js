// Train LoRA panel: the pre-flight plan (before Queue: steps, the guide's checks, disk, memory, with a
// Measure button for the warm-up), a live loss / validation loss / d·lr chart with epoch markers and,
// below it, the strip of images sampled after each epoch; the chart and strip survive a page reload
// (the server's history is read again), and so does a measured plan (the server keeps it). new TrainingPanel(node, {app, server}): the pack's routes (../lib/api.js) come
// from the entry, which also hands it the training events (onEvent); this module imports nothing
// from ComfyUI and does nothing on import.
import CONTRACT from "../lib/contract.json" with { type: "json" };
import { draw, headerText } from "../lib/chart.js";
import { addPanelWidget, el, growToMinHeight, markDirty, routeWheel } from "../lib/dom.js";
import { measureLabel, planKey, planLines, planRequest } from "../lib/plan.js";
import { TRAIN } from "../lib/graph.js";
import { applyEvent, applySnapshot, beginFetch, createHistory } from "../lib/history.js";
import { sampleRows, samplesKey, stripHeight } from "../lib/samples.js";

const PANEL = CONTRACT.panels[TRAIN];
const PLAN_DEBOUNCE_MS = 400;

export class TrainingPanel {
  constructor(node, { app, server }) {
    this.node = node;
    this.app = app;
    this.server = server;
    this.stripKey = samplesKey([]);
    this.stripRows = 0;
    this.history = createHistory(node.id);
    this.drawn = -1;
    this.frame = null;
    this.fetchSeq = 0;
    this.idKey = String(node.id);
    this.headerEl = el("div", { class: "slt-header" });
    this.canvas = el("canvas");
    this.wrap = el("div", { class: "slt-chart-wrap" }, this.canvas);
    this.strip = el("div", { class: "slt-samples", style: "display: none;" });
    if (app) routeWheel(this.strip, app);
    this.planText = el("div", { class: "slt-plan-text" });
    this.measureButton = el("button", { class: "slt-plan-measure", text: measureLabel(null, false),
      title: "Run a short warm-up on the checkpoint (a few training steps, nothing kept) to measure peak memory and s/step" });
    this.measureButton.addEventListener("click", () => this.measurePlan());
    this.planEl = el("div", { class: "slt-plan" },
      el("div", { class: "slt-bar slt-plan-bar" }, el("span", { class: "slt-plan-title", text: "Plan (before Queue)" }),
        this.measureButton),
      this.planText);
    if (app) routeWheel(this.planText, app);
    this.planKey = null;
    this.planSeq = 0;
    this.planTimer = null;
    this.measuring = false;
    this.planAnswer = null;
    this.root = el("div", { class: "slt-panel" }, this.planEl, this.headerEl, this.wrap, this.strip);
    // The panel grows by the strip's height once epochs were sampled (a few rows, more scroll).
    // panel_height holds the plan (its height is in the stylesheet) and the chart.
    addPanelWidget(node, PANEL.widget, this.root, () => PANEL.panel_height + stripHeight(this.stripRows));
    if (typeof ResizeObserver === "function") {
      this.resizer = new ResizeObserver(() => this.redraw(true));
      this.resizer.observe(this.wrap);
    }
    const panel = this;
    node.styleLoraChart = {
      get history() { return panel.history; },
      get points() { return panel.history.points; },
      get epochs() { return panel.history.epochs; },
      get validation() { return panel.history.validation; },
      get samples() { return panel.history.samples; },
      get strip() { return panel.strip; },
      get state() { return panel.history.state; },
      get run() { return panel.history.run; },
      get header() { return panel.headerEl.textContent; },
      get plan() { return panel.planAnswer; },
      get planText() { return panel.planText.textContent; },
      get planReady() { return panel.planReady; },
      measure: () => panel.measurePlan(),
      get ready() { return panel.ready; },
      refresh: () => panel.refresh(),
      redraw: () => panel.redraw(true),
    };
    this.ready = Promise.resolve();
    this.planReady = Promise.resolve();
    this.redraw(true);
  }

  /** Ask for the plan again when the chain's settings changed (debounced: typing a number is one request). */
  checkPlan() {
    const request = planRequest(this.node);
    const key = planKey(request);
    if (key === this.planKey) return;
    this.planKey = key;
    clearTimeout(this.planTimer);
    if (request.error) {
      this.planSeq += 1;
      this.showPlan(null, request.error);
      return;
    }
    this.planTimer = setTimeout(() => this.fetchPlan(request), PLAN_DEBOUNCE_MS);
  }

  fetchPlan(request, { measure = false } = {}) {
    const seq = ++this.planSeq;
    this.planReady = (async () => {
      const answer = await this.server.plan(request, { measure });
      if (seq !== this.planSeq) return;
      if (answer.ok) this.showPlan(answer.data, null);
      else this.showPlan(measure ? this.planAnswer : null, answer.error);
    })();
    return this.planReady;
  }

  async measurePlan() {
    const request = planRequest(this.node);
    if (request.error || this.measuring) return;
    this.measuring = true;
    this.measureButton.disabled = true;
    this.measureButton.textContent = measureLabel(this.planAnswer, true);
    try {
      await this.fetchPlan(request, { measure: true });
    } finally {
      this.measuring = false;
      this.measureButton.disabled = false;
      this.measureButton.textContent = measureLabel(this.planAnswer, false);
    }
  }

  showPlan(answer, error) {
    this.planAnswer = answer;
    const lines = answer ? planLines(answer) : [];
    const rows = lines.map((line) => el("div", { class: `slt-plan-line slt-plan-${line.level}`, text: line.text }));
    if (error) rows.push(el("div", { class: "slt-plan-line slt-plan-error", text: error }));
    this.planText.replaceChildren(...rows);
    this.measureButton.disabled = this.measuring || !answer?.checkpoint;
    this.measureButton.textContent = measureLabel(answer, this.measuring);
  }

  matches(detail) {
    // node.id is the server's UNIQUE_ID only in the root graph: a Train node inside a subgraph is not supported.
    return detail && String(detail.node) === String(this.node.id);
  }

  onEvent(type, detail) {
    this.syncNodeId();
    if (applyEvent(this.history, type, detail)) this.redraw();
  }

  syncNodeId() {
    // A loaded workflow gives the node its saved id after creation.
    const id = String(this.node.id);
    if (id !== this.history.node) {
      this.history = createHistory(id);
      this.drawn = -1;
    }
  }

  refresh() {
    this.syncNodeId();
    const seq = ++this.fetchSeq;
    const token = beginFetch(this.history);
    const history = this.history;
    this.ready = (async () => {
      const answer = await this.server.training(history.node);
      if (seq !== this.fetchSeq || history !== this.history) return;
      if (answer.ok) {
        this.error = null;
        applySnapshot(history, answer.data, token);
      } else {
        this.error = answer.error;
      }
      this.redraw(true);
    })();
    return this.ready;
  }

  check() {
    if (String(this.node.id) !== this.idKey) {
      this.idKey = String(this.node.id);
      this.refresh();
    }
    this.checkPlan();
  }

  redraw(force = false) {
    if (!force && this.drawn === this.history.version) return;
    if (this.frame !== null) return;
    const run = () => {
      this.frame = null;
      this.paint();
    };
    this.frame = typeof requestAnimationFrame === "function" ? requestAnimationFrame(run) : setTimeout(run, 16);
  }

  paint() {
    const history = this.history;
    this.drawn = history.version;
    let text = headerText(history);
    if (history.state === "failed" || history.state === "stopped") {
      text += history.message ? ` — ${history.message}` : "";
    } else if (this.error && history.state === "idle") {
      text = this.error;
    }
    this.headerEl.textContent = text;
    // What the validation loss is measured on, for the curious (hover).
    this.headerEl.title = history.validation_source ? `${text}\nvalidation loss on ${history.validation_source}` : text;
    this.headerEl.classList.toggle("slt-failed", history.state === "failed" || (this.error && history.state === "idle"));
    this.paintStrip();
    const width = this.wrap.clientWidth;
    const height = this.wrap.clientHeight;
    if (!width || !height) return;
    const ratio = globalThis.devicePixelRatio || 1;
    if (this.canvas.width !== Math.round(width * ratio) || this.canvas.height !== Math.round(height * ratio)) {
      this.canvas.width = Math.round(width * ratio);
      this.canvas.height = Math.round(height * ratio);
    }
    const ctx = this.canvas.getContext("2d");
    if (!ctx) return;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    draw(ctx, history, width, height);
  }

  /** Rebuild the sample strip when the sampled epochs changed; grow the node for new rows. */
  paintStrip() {
    const samples = this.history.samples;
    const key = samplesKey(samples);
    if (key === this.stripKey) return;
    this.stripKey = key;
    const rows = sampleRows(samples);
    const title = el("div", { class: "slt-samples-title",
      text: `Samples after each epoch (newest first) · ${rows.length} epoch${rows.length === 1 ? "" : "s"}` });
    this.strip.replaceChildren(title, ...rows.map((row) => el("div", { class: "slt-sample-row" },
      el("div", { class: "slt-sample-label", text: row.label, title: row.title }),
      el("div", { class: "slt-sample-cells" }, row.cells.map((cell) => el("div", { class: "slt-sample-cell" },
        el("div", { class: "slt-sample-images" }, cell.images.map((image) => {
          const url = this.server.viewUrl(image.ref);
          return el("a", { href: url, target: "_blank", rel: "noopener", title: image.alt },
            el("img", { class: "slt-sample-thumb", loading: "lazy", alt: image.alt, src: url }));
        })),
        el("div", { class: "slt-sample-weight", text: cell.label })))))));
    this.strip.style.cssText = rows.length ? "" : "display: none;";
    if (rows.length !== this.stripRows) {
      this.stripRows = rows.length;
      growToMinHeight(this.node);
      if (this.app) markDirty(this.node, this.app);
    }
  }

  dispose() {
    this.resizer?.disconnect();
    this.fetchSeq += 1;
    this.planSeq += 1;
    clearTimeout(this.planTimer);
  }
}

