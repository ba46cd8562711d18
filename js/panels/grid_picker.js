// Epoch × Weight Grid panel: the rendered grid shown in the node (the node returns no "images", so
// the frontend does not draw it a second time); a click on a cell sets rule "chosen cell", epoch and
// weight on every Pick Epoch node fed by the grid's `table` output. new GridPicker(node, {app,
// server}): handed in by the entry; the logic is ../lib/picker.js, this module only does DOM.
import CONTRACT from "../lib/contract.json" with { type: "json" };
import { addPanelWidget, el, markDirty, recordChange } from "../lib/dom.js";
import { EPOCH_WEIGHT_GRID } from "../lib/graph.js";
import { applyPick, boxPercent, cellAt, pickKey, pickNodes, readLayout, shownCell, statusText,
  toGridPoint } from "../lib/picker.js";

const PANEL = CONTRACT.panels[EPOCH_WEIGHT_GRID];

export class GridPicker {
  constructor(node, { app, server }) {
    this.node = node;
    this.app = app;
    this.server = server;
    this.layout = null;
    this.shownKey = null;
    this.message = "";
    this.statusEl = el("div", { class: "slt-status slt-grid-status" });
    this.img = el("img", { class: "slt-grid-image", alt: "Epoch × weight grid", draggable: false,
      onclick: (event) => this.onClick(event) });
    this.mark = el("div", { class: "slt-grid-mark" });
    this.frame = el("div", { class: "slt-grid-frame" }, this.img, this.mark);
    this.wrap = el("div", { class: "slt-grid-wrap" }, this.frame);
    this.root = el("div", { class: "slt-panel slt-grid-picker" }, this.statusEl, this.wrap);
    addPanelWidget(node, PANEL.widget, this.root, PANEL.panel_height);
    const panel = this;
    node.styleLoraPicker = {
      get layout() { return panel.layout; },
      get status() { return panel.statusEl.textContent; },
      get shown() { return panel.shown ?? null; },
      get image() { return panel.img.getAttribute?.("src") ?? panel.img.src; },
      pickAt: (x, y) => panel.pickAt(x, y),
    };
    this.render();
  }

  /** The node ran: its output carries the layout (ui.style_lora_grid). */
  onExecuted(output) {
    const layout = readLayout(output);
    if (!layout) return;
    this.setLayout(layout);
  }

  setLayout(layout) {
    this.layout = layout;
    this.message = "";
    this.img.setAttribute("src", this.server.viewUrl(layout.image));
    this.shownKey = null;
    this.render();
  }

  /** Polled: notice Pick Epoch nodes connected, edited by hand, or a layout the frontend restored. */
  check() {
    if (!this.layout) {
      // Switching back to a workflow tab: the frontend keeps the node's last output.
      const kept = readLayout(this.app?.nodeOutputs?.[String(this.node.id)]);
      if (kept) this.setLayout(kept);
    }
    if (pickKey(this.layout, pickNodes(this.node)) !== this.shownKey) this.render();
  }

  onClick(event) {
    if (!this.layout) return;
    const point = toGridPoint(this.layout, event.clientX, event.clientY, this.img.getBoundingClientRect?.());
    if (point) this.pickAt(point.x, point.y);
  }

  /** Pick the cell at grid point (x, y). Returns the cell, or null for a label or a gap. */
  pickAt(x, y) {
    const cell = cellAt(this.layout, x, y);
    if (!cell) return null;
    const picks = pickNodes(this.node);
    const skipped = [];
    recordChange(this.app, () => {
      for (const pick of picks) {
        const { linked } = applyPick(pick, cell);
        if (linked.length) skipped.push(`${pick.title ?? "Pick Epoch"}: ${linked.join(", ")} come from a link`);
        markDirty(pick, this.app);
      }
    });
    this.message = skipped.length ? ` Not set: ${skipped.join("; ")}.` : "";
    markDirty(this.node, this.app);
    this.render();
    return cell;
  }

  render() {
    const picks = pickNodes(this.node);
    this.shownKey = pickKey(this.layout, picks);
    const shown = shownCell(this.layout, picks);
    this.shown = shown;
    this.root.classList.toggle("slt-empty", !this.layout);
    const text = statusText(this.layout, picks, shown) + this.message;
    this.statusEl.textContent = text;
    this.statusEl.title = text;
    if (shown) {
      const box = boxPercent(this.layout, shown);
      this.mark.style.cssText = `left: ${box.left}%; top: ${box.top}%; width: ${box.width}%; height: ${box.height}%;`;
      this.mark.className = `slt-grid-mark slt-${shown.kind}`;
    } else {
      this.mark.style.cssText = "display: none;";
      this.mark.className = "slt-grid-mark";
    }
  }
}
