// Style LoRA Trainer: frontend extension (no build step; ComfyUI frontend 1.49+).
// - the pack's socket types get their own link colours;
// - Caption Editor: a gallery of the dataset with editable captions, bulk-edit previews, tag
//   frequencies, lint badges and "Save to caption files" (per-image edits live in the `edits`
//   widget, so they are saved with the workflow);
// - Shuffle Caption: example shuffles, live from the server, exactly what training will see;
// - Train LoRA: a live loss / d·lr chart with epoch markers that survives a page reload;
// - a node's text result (training summary, saved LoRA names) is shown in the node.
// The server side of every request and event is described in docs/CANVAS.md. The logic lives in
// ./lib/*.js (pure modules with node:test tests); this file is the DOM and ComfyUI glue.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

import {
  applyEditChain,
  captionHasTag,
  captionsToSave,
  editCaption,
  normalizeCaption,
  serializeEdits,
  setOverride,
  splitCaption,
  tagFrequency,
  tryParseEdits,
  unknownOverrides,
} from "./lib/captions.js";
import { badges, LintCache, worstLevel } from "./lib/lint.js";
import { applyEvent, applySnapshot, beginFetch, createHistory } from "./lib/history.js";
import { draw, headerText } from "./lib/chart.js";
import { colourCss, installDefaultColours, TYPE_COLOURS } from "./lib/colours.js";
import {
  CAPTION_EDITOR,
  chainKey,
  datasetSource,
  editorEdits,
  findWidget,
  inputLinked,
  nodeType,
  SHUFFLE_CAPTION,
  sourceKey,
  TRAIN,
  widgetValue,
} from "./lib/graph.js";

const SAVE_EPOCHS = "StyleLoRASaveEpochs";
const OUR_NODES = new Set([
  "StyleLoRALoadDataset", CAPTION_EDITOR, SHUFFLE_CAPTION, TRAIN, SAVE_EPOCHS, "StyleLoRAEpochWeightGrid",
]);
const TRAIN_EVENTS = ["style_lora.train_start", "style_lora.train_step", "style_lora.train_epoch", "style_lora.train_end"];
const POLL_MS = 700;
const LINT_DEBOUNCE_MS = 500;
const LINT_RETRY_MS = 10000; // after a failed POST /style_lora/lint
const SHUFFLE_DEBOUNCE_MS = 300;
const LISTING_TTL_MS = 4000;
const THUMB_SIZE = 160;
const GUIDE_EXAMPLES = [
  ["A red apple", "A glossy red apple with droplets of water, nestled among green leaves"],
  ["A woman reading", "A woman wearing glasses reflecting light, in a sunlit library, reading a vintage leather-bound book"],
  ["A mountain.", "A tall mountain, peak shrouded in mist, winding river at its base reflecting the first light of dawn"],
];

// ---------------------------------------------------------------------------------------------
// small DOM and network helpers

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (value === false && !(key in node)) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** fetch through ComfyUI's api; never throws: {ok, status, data, error}. */
async function fetchJson(path, init) {
  try {
    const response = await api.fetchApi(path, init);
    let data = null;
    try {
      data = await response.json();
    } catch {
      data = null;
    }
    if (!response.ok) {
      const error = data?.error ?? (response.status === 404
        ? `${path.split("?")[0]} answered 404: the Style LoRA Trainer server routes are missing (restart ComfyUI after installing or updating the pack).`
        : `${path.split("?")[0]} answered HTTP ${response.status}.`);
      return { ok: false, status: response.status, data, error };
    }
    return { ok: true, status: response.status, data, error: null };
  } catch (error) {
    return { ok: false, status: 0, data: null, error: `Could not reach the ComfyUI server: ${error?.message ?? error}` };
  }
}

function postJson(path, body) {
  return fetchJson(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

const listingCache = new Map(); // "folder\next" -> {time, promise}

/** GET /style_lora/dataset, shared by the panels for a few seconds. */
function datasetListing(folder, captionExtension, { fresh = false } = {}) {
  const key = `${folder}\n${captionExtension}`;
  const cached = listingCache.get(key);
  if (!fresh && cached && Date.now() - cached.time < LISTING_TTL_MS) return cached.promise;
  const query = new URLSearchParams({ folder, caption_extension: captionExtension });
  const promise = fetchJson(`/style_lora/dataset?${query}`);
  const now = Date.now();
  for (const [other, entry] of listingCache) if (now - entry.time >= LISTING_TTL_MS) listingCache.delete(other);
  listingCache.set(key, { time: now, promise });
  return promise;
}

function thumbnailUrl(folder, file, version) {
  const query = new URLSearchParams({ folder, file, size: String(THUMB_SIZE), v: String(version) });
  return api.apiURL(`/style_lora/thumbnail?${query}`);
}

function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

function markDirty(node) {
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

/** Scroll the panel itself; Ctrl+wheel and wheels it cannot use still zoom/pan the canvas. */
function routeWheel(scroller) {
  scroller.addEventListener("wheel", (event) => {
    const canScroll = scroller.scrollHeight > scroller.clientHeight + 1;
    const down = event.deltaY > 0;
    const atEdge = down ? scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 1 : scroller.scrollTop <= 0;
    if (!event.ctrlKey && canScroll && !atEdge && Math.abs(event.deltaY) >= Math.abs(event.deltaX)) {
      event.stopPropagation();
      return;
    }
    if (typeof app.canvas?.processMouseWheel === "function") {
      event.preventDefault();
      event.stopPropagation();
      app.canvas.processMouseWheel(event);
    }
  }, { passive: false });
}

/** A DOM widget that is neither an input of the node nor saved in the workflow. */
function addUnsavedWidget(node, name, type, element, { minHeight, getValue = () => "", setValue = () => {} }) {
  const widget = node.addDOMWidget(name, type, element, {
    serialize: false, // not an input of the node
    hideOnZoom: true,
    getValue,
    setValue,
    getMinHeight: () => minHeight,
  });
  widget.serialize = false; // not saved in the workflow either
  return widget;
}

function addPanelWidget(node, name, element, minHeight) {
  return addUnsavedWidget(node, name, "style_lora_panel", element, { minHeight }); // everything shown is derived
}

function ensureWidth(node, width, height) {
  if (!(node.size?.length >= 2)) return;
  const [w, h] = node.size;
  if (w < width || h < height) node.setSize?.([Math.max(w, width), Math.max(h, height)]);
}

/** Grow the node to its computed height (after a widget was shown or added). */
function growToMinHeight(node) {
  const [w, h] = node.size ?? [0, 0];
  const min = node.computeSize?.();
  if (min && h < min[1]) node.setSize?.([w, min[1]]);
}

/** Whether an image's issues need the user (an "info" alone does not). */
function hasIssues(item) {
  const level = worstLevel(item.issues ?? []);
  return level !== "ok" && level !== "info";
}

// ---------------------------------------------------------------------------------------------
// styles

const STYLE_ID = "style-lora-trainer-css";
const CSS = `
.slt-panel { box-sizing: border-box; display: flex; flex-direction: column; gap: 4px; height: 100%; width: 100%;
  font: 12px/1.35 sans-serif; color: var(--input-text, #ddd); overflow: hidden; }
.slt-panel * { box-sizing: border-box; }
.slt-bar { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; }
.slt-bar button, .slt-bar select { background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 2px 8px; font-size: 12px; cursor: pointer; }
.slt-bar button:hover:not(:disabled) { filter: brightness(1.25); }
.slt-bar button:disabled { opacity: 0.5; cursor: default; }
.slt-bar button.slt-primary { border-color: #4a7; }
.slt-bar button.slt-active { border-color: #8fbcff; background: rgba(143, 188, 255, 0.18); }
.slt-status { color: var(--descrip-text, #999); flex: 1 1 120px; min-width: 0; white-space: nowrap; overflow: hidden;
  text-overflow: ellipsis; }
.slt-msg { border-radius: 4px; padding: 4px 6px; white-space: pre-wrap; word-break: break-word; }
.slt-msg:empty { display: none; }
.slt-msg.slt-error { background: rgba(200, 60, 60, 0.18); border: 1px solid rgba(220, 80, 80, 0.6); color: var(--error-text, #f88); }
.slt-msg.slt-note { background: rgba(200, 160, 60, 0.12); border: 1px solid rgba(200, 160, 60, 0.45); }
.slt-msg.slt-ok { background: rgba(80, 170, 110, 0.14); border: 1px solid rgba(80, 170, 110, 0.5); }
.slt-msg button { margin-left: 6px; }
.slt-help, .slt-tags { border: 1px solid var(--border-color, #444); border-radius: 4px; padding: 2px 6px;
  background: var(--comfy-menu-bg, #1a1a1a); }
.slt-help summary, .slt-tags summary { cursor: pointer; color: var(--descrip-text, #aaa); }
.slt-help ul { margin: 4px 0; padding-left: 18px; }
.slt-help .slt-before { color: #d88; } .slt-help .slt-after { color: #8c8; }
.slt-tag-list { display: flex; flex-wrap: wrap; gap: 3px; padding: 4px 0; max-height: 84px; overflow: auto; }
.slt-tag { border: 1px solid var(--border-color, #444); border-radius: 10px; padding: 0 7px; cursor: pointer;
  background: var(--comfy-input-bg, #222); white-space: nowrap; max-width: 260px; overflow: hidden; text-overflow: ellipsis; }
.slt-tag b { color: var(--descrip-text, #999); font-weight: normal; margin-left: 3px; }
.slt-tag.slt-active { border-color: #8fbcff; background: rgba(143, 188, 255, 0.2); }
.slt-scroll { flex: 1 1 auto; overflow: auto; min-height: 60px; border-top: 1px solid var(--border-color, #444); }
.slt-row { display: grid; grid-template-columns: 84px 1fr; gap: 6px; padding: 5px 2px;
  border-bottom: 1px solid var(--border-color, #333); }
.slt-row.slt-dim { opacity: 0.35; }
.slt-row.slt-hit { background: rgba(143, 188, 255, 0.08); }
.slt-thumb { width: 84px; height: 84px; object-fit: contain; background: #111; border-radius: 3px; }
.slt-thumb.slt-broken { display: flex; align-items: center; justify-content: center; color: #888; font-size: 10px;
  text-align: center; }
.slt-meta { display: flex; flex-wrap: wrap; gap: 4px; align-items: center; margin-bottom: 2px; }
.slt-file { font-weight: bold; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; max-width: 220px; }
.slt-dims { color: var(--descrip-text, #888); }
.slt-badge { border-radius: 8px; padding: 0 6px; font-size: 11px; border: 1px solid transparent; }
.slt-badge.slt-error { background: rgba(220, 70, 70, 0.25); border-color: rgba(220, 70, 70, 0.7); }
.slt-badge.slt-warning { background: rgba(220, 170, 60, 0.2); border-color: rgba(220, 170, 60, 0.7); }
.slt-badge.slt-info { background: rgba(120, 160, 230, 0.18); border-color: rgba(120, 160, 230, 0.6); }
.slt-badge.slt-ok { color: var(--descrip-text, #999); border-color: var(--border-color, #444); }
.slt-badge.slt-edited { background: rgba(143, 188, 255, 0.2); border-color: #8fbcff; }
.slt-caption { width: 100%; min-height: 48px; resize: vertical; background: var(--comfy-input-bg, #222);
  color: var(--input-text, #ddd); border: 1px solid var(--border-color, #444); border-radius: 3px; padding: 3px 4px;
  font: 12px/1.35 sans-serif; }
.slt-caption.slt-overridden { border-color: #8fbcff; }
.slt-caption:read-only { opacity: 0.7; }
.slt-final { color: var(--descrip-text, #aaa); margin-top: 2px; word-break: break-word; }
.slt-final::before { content: "→ trained as: "; color: #8c8; }
.slt-linkish { background: none; border: none; color: #8fbcff; cursor: pointer; padding: 0; font-size: 11px; }
.slt-chart-wrap { position: relative; flex: 1 1 auto; min-height: 120px; }
.slt-chart-wrap canvas { position: absolute; inset: 0; width: 100%; height: 100%; border-radius: 4px; }
.slt-header { font-variant-numeric: tabular-nums; white-space: nowrap; overflow: hidden; text-overflow: ellipsis; }
.slt-header.slt-failed { color: var(--error-text, #f88); }
.slt-shuffle { overflow: auto; }
.slt-example { border-bottom: 1px solid var(--border-color, #333); padding: 3px 0; }
.slt-example .slt-orig { color: var(--descrip-text, #aaa); }
.slt-example .slt-step { padding-left: 10px; word-break: break-word; }
.slt-example .slt-step i { color: var(--descrip-text, #888); font-style: normal; margin-right: 4px; }
.slt-example .slt-kept { color: #8fbcff; }
.slt-result { width: 100%; height: 100%; resize: none; background: var(--comfy-input-bg, #222); color: var(--input-text, #ddd);
  border: 1px solid var(--border-color, #444); border-radius: 3px; font: 11px/1.35 monospace; padding: 3px 4px; }
`;

function injectStyles() {
  if (document.getElementById(STYLE_ID)) return;
  document.head.append(el("style", { id: STYLE_ID, text: CSS + colourCss(TYPE_COLOURS) }));
}

function applyLinkColours() {
  installDefaultColours(globalThis.LGraphCanvas?.link_type_colors);
  installDefaultColours(app.canvas?.constructor?.link_type_colors);
  installDefaultColours(app.canvas?.default_connection_color_byType);
}

// ---------------------------------------------------------------------------------------------
// panels: one registry, one poll that notices upstream changes (folder, links, widgets, edits)

const panels = new Set();

function registerPanel(panel) {
  panels.add(panel);
  const node = panel.node;
  const onRemoved = node.onRemoved;
  node.onRemoved = function () {
    panel.dispose?.();
    panels.delete(panel);
    return onRemoved?.apply(this, arguments);
  };
}

function pollPanels() {
  if (typeof document !== "undefined" && document.hidden) return;
  for (const panel of panels) {
    if (!panel.node.graph) {
      // Gone with its graph (a workflow closed or reloaded, undo) without onRemoved: forget it.
      // (A node not added to a graph yet has never been seen in one.)
      if (panel.seenInGraph) {
        panel.dispose?.();
        panels.delete(panel);
      }
      continue;
    }
    panel.seenInGraph = true;
    try {
      panel.check();
    } catch (error) {
      console.warn("[Style LoRA] panel update failed:", error);
    }
  }
}

function hookWidgetCallbacks(node, names, fn) {
  for (const name of names) {
    const widget = findWidget(node, name);
    if (!widget) continue;
    const callback = widget.callback;
    widget.callback = function () {
      const result = callback?.apply(this, arguments);
      fn();
      return result;
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Caption Editor gallery

class CaptionGallery {
  constructor(node) {
    this.node = node;
    this.items = []; // listing items + {upstream, base, final, override}
    this.listing = null;
    this.source = null;
    this.loadedKey = null;
    this.viewKey = null;
    this.thumbVersion = 0;
    this.loadSeq = 0;
    this.loading = false;
    this.error = null;
    this.highlight = null;
    this.filter = "all";
    this.lint = new LintCache();
    this.lintRetry = null; // the retry timer after a failed lint
    this.lintInFlight = false;
    this.disposed = false;
    this.ready = Promise.resolve();
    this.rows = new Map(); // file -> {row, textarea, final, badges}
    this.scheduleLint = debounce(() => this.runLint(), LINT_DEBOUNCE_MS);
    this.scheduleCheck = debounce(() => this.check(), 120);
    this.build();
    addPanelWidget(node, "caption_gallery", this.root, 340);
    this.hideEditsWidget(true);
    hookWidgetCallbacks(node, ["prefix", "suffix", "find", "replace", "edits"], this.scheduleCheck);
    // The public face, for users' scripts and the browser tests.
    const gallery = this;
    node.styleLoraGallery = {
      get element() { return gallery.root; },
      get items() { return gallery.items; },
      get captions() { return gallery.captions(); },
      get edits() { return gallery.storedEdits().edits; },
      get error() { return gallery.error; },
      get status() { return gallery.statusEl.textContent; },
      get ready() { return gallery.ready; },
      reload: () => gallery.reload({ fresh: true }),
      save: () => gallery.save(),
      setCaption: (file, text) => gallery.setCaption(file, text),
      highlightTag: (tag) => gallery.setHighlight(tag),
      tags: () => gallery.tags(),
    };
  }

  build() {
    this.statusEl = el("span", { class: "slt-status" });
    this.reloadBtn = el("button", { text: "⟳ Reload", title: "Read the folder and its caption files again",
      onclick: () => {
        this.thumbVersion += 1;
        this.reload({ fresh: true });
      } });
    this.saveBtn = el("button", { class: "slt-primary", text: "Save to caption files", disabled: true,
      title: "Write the hand-edited captions to their caption files (atomically). The bulk prefix/suffix/" +
        "find/replace stay node settings, applied when the workflow runs (write_back writes them too).",
      onclick: () => this.save() });
    this.filterSel = el("select", { title: "Which images to list", onchange: () => {
      this.filter = this.filterSel.value;
      this.applyVisibility();
    } }, el("option", { value: "all", text: "all images" }), el("option", { value: "issues", text: "with issues" }),
    el("option", { value: "edited", text: "hand-edited" }));
    this.jsonBtn = el("button", { text: "{ } edits", title: "Show or hide the raw edits JSON widget (saved with the workflow)",
      onclick: () => this.hideEditsWidget(!this.editsHidden) });
    this.messageEl = el("div", { class: "slt-msg" });
    this.noticeEl = el("div", { class: "slt-msg slt-note" });
    this.resultEl = el("div", { class: "slt-msg" });
    const advice = el("ul", {},
      el("li", {}, el("b", { text: "Subject: " }), "what it is and what it looks like — colour, material, texture."),
      el("li", {}, el("b", { text: "Context and backdrop: " }), "where it is and what surrounds it."),
      el("li", {}, el("b", { text: "Element distinction: " }),
        "name each element as its own comma-separated part (\"Mickey Mouse\", \"red shorts\"), so they can be varied apart."),
      el("li", {}, el("b", { text: "Keep the first part stable " }),
        "(e.g. a trigger word): Shuffle Caption keeps it in place while the other parts move."),
      ...GUIDE_EXAMPLES.map(([before, after]) => el("li", {}, el("span", { class: "slt-before", text: `"${before}"` }), " → ",
        el("span", { class: "slt-after", text: `"${after}"` }))));
    this.help = el("details", { class: "slt-help" }, el("summary", { text: "Caption advice (from the guide)" }), advice);
    this.tagList = el("div", { class: "slt-tag-list" });
    this.tagSummary = el("summary", { text: "Tags" });
    this.tagBox = el("details", { class: "slt-tags" }, this.tagSummary, this.tagList);
    this.scroller = el("div", { class: "slt-scroll" });
    routeWheel(this.scroller);
    this.root = el("div", { class: "slt-panel slt-gallery" },
      el("div", { class: "slt-bar" }, this.reloadBtn, this.saveBtn, this.filterSel, this.jsonBtn, this.statusEl),
      this.messageEl, this.noticeEl, this.resultEl, this.help, this.tagBox, this.scroller);
  }

  hideEditsWidget(hidden) {
    const widget = findWidget(this.node, "edits");
    this.editsHidden = hidden;
    if (!widget) return;
    widget.hidden = hidden; // LiteGraph canvas
    if (widget.options) widget.options.hidden = hidden; // Nodes 2.0
    this.jsonBtn?.classList.toggle("slt-active", !hidden);
    if (!hidden) growToMinHeight(this.node);
    markDirty(this.node);
  }

  storedEdits() {
    return tryParseEdits(widgetValue(this.node, "edits", "{}"));
  }

  ownEdits() {
    return editorEdits(this.node);
  }

  separator() {
    return this.source?.separator ?? ",";
  }

  /** {file: caption as trained} for every listed image. */
  captions() {
    const out = {};
    for (const item of this.items) out[item.file] = item.final;
    return out;
  }

  tags() {
    return tagFrequency(this.items.map((item) => item.final), this.separator());
  }

  /** A string that changes whenever the captions shown for an unchanged listing would change. */
  viewKeyOf(source, own) {
    return JSON.stringify([chainKey(source), own.edits, own.error, inputLinked(this.node, "captions")]);
  }

  /** Called by the poll and by widget callbacks: reload when the source changed, else recompute. */
  check() {
    const source = datasetSource(this.node);
    const key = sourceKey(source);
    this.source = source;
    if (key !== this.loadedKey) {
      this.loadedKey = key;
      this.reload();
      return;
    }
    if (this.viewKeyOf(source, this.ownEdits()) !== this.viewKey) this.recompute();
  }

  reload({ fresh = false } = {}) {
    const seq = ++this.loadSeq;
    this.ready = this.load(seq, fresh);
    return this.ready;
  }

  async load(seq, fresh) {
    const source = datasetSource(this.node);
    this.source = source;
    this.loadedKey = sourceKey(source);
    // Every load sets `loading` before its first return; a superseded one leaves it to the newest.
    this.loading = false;
    if (!source.load) {
      this.setListing(null, source.error);
      return;
    }
    if (!source.folder.trim()) {
      this.setListing(null, "The Load Dataset node has no folder yet: enter the name of a folder in ComfyUI's input folder.");
      return;
    }
    this.loading = true;
    this.statusEl.textContent = `Loading ${source.folder}…`;
    const answer = await datasetListing(source.folder, source.caption_extension, { fresh });
    if (seq !== this.loadSeq) return; // a newer load is under way and owns `loading`
    this.loading = false;
    if (!answer.ok) {
      this.setListing(null, answer.error);
      return;
    }
    try {
      this.setListing(answer.data, null);
    } catch (error) {
      console.warn("[Style LoRA] unexpected dataset listing:", error);
      this.setListing(null, `The server's dataset listing could not be shown (${error?.message ?? error}); try Reload.`);
    }
  }

  setListing(listing, error) {
    this.listing = listing;
    this.error = error;
    this.messageEl.textContent = error ?? "";
    this.messageEl.className = error ? "slt-msg slt-error" : "slt-msg";
    this.items = (listing?.items ?? []).map((item) => ({ ...item }));
    for (const item of this.items) {
      if (item.has_caption_file && normalizeCaption(item.caption ?? "") && Number.isInteger(item.tokens)) {
        this.lint.store([item.caption], { results: [{ tokens: item.tokens, issues: item.issues ?? [] }],
          token_limit: listing.token_limit, min_words: listing.min_words });
      }
    }
    this.buildRows();
    this.recompute();
  }

  buildRows() {
    this.rows.clear();
    const folder = this.source?.folder ?? "";
    const fragment = document.createDocumentFragment();
    for (const item of this.items) {
      const img = el("img", { class: "slt-thumb", loading: "lazy", alt: item.file,
        src: thumbnailUrl(folder, item.file, this.thumbVersion) });
      img.addEventListener("error", () => {
        img.replaceWith(el("div", { class: "slt-thumb slt-broken", text: "no preview", title: `${item.file}: thumbnail failed` }));
      }, { once: true });
      const textarea = el("textarea", { class: "slt-caption", spellcheck: false, rows: 2,
        placeholder: "No caption yet — describe the subject, its context and each distinct element." });
      textarea.addEventListener("input", () => this.setCaption(item.file, textarea.value, { fromTextarea: true }));
      const badgeBox = el("span", { class: "slt-meta" });
      const revert = el("button", { class: "slt-linkish", text: "revert", title: "Drop this image's hand edit",
        onclick: () => this.setCaption(item.file, null) });
      const finalEl = el("div", { class: "slt-final" });
      const dims = item.width && item.height ? `${item.width}×${item.height}` : "";
      const row = el("div", { class: "slt-row", "data-file": item.file },
        img,
        el("div", {},
          el("div", { class: "slt-meta" }, el("span", { class: "slt-file", text: item.file, title: item.file }),
            el("span", { class: "slt-dims", text: dims }), badgeBox, revert),
          textarea, finalEl));
      this.rows.set(item.file, { row, textarea, finalEl, badgeBox, revert });
      fragment.append(row);
    }
    if (!this.items.length && this.listing) {
      fragment.append(el("div", { class: "slt-msg slt-note",
        text: `No images in ${this.listing.path ?? this.source?.folder}. Add 30–100 png/jpg/webp images with same-name ${this.listing.caption_extension ?? ".txt"} captions.` }));
    }
    const scrollTop = this.scroller.scrollTop;
    this.scroller.replaceChildren(fragment);
    this.scroller.scrollTop = scrollTop;
  }

  /** Recompute every caption (upstream edits, hand edit, this node's bulk edits) and refresh the view. */
  recompute() {
    const source = this.source ?? datasetSource(this.node);
    const own = this.ownEdits();
    this.viewKey = this.viewKeyOf(source, own);
    const chain = source.chain ?? [];
    const separator = source.separator ?? ",";
    for (const item of this.items) {
      item.upstream = applyEditChain(item.caption ?? "", item.file, chain);
      const override = own.edits.overrides[item.file];
      item.override = override === undefined ? null : override;
      item.base = item.override ?? item.upstream;
      item.final = editCaption(item.upstream, own.edits, item.file, separator);
    }
    const notes = [];
    if (own.error) notes.push(`The edits JSON cannot be read, so hand edits are paused: ${own.error}`);
    for (const link of chain) {
      if (link.error) notes.push(`An upstream Caption Editor's edits JSON cannot be read: ${link.error}`);
    }
    if (source.captionsInput) {
      notes.push(`Captions of "${source.captionsInput}" come from its connected captions input; the gallery shows the caption files instead.`);
    }
    if (inputLinked(this.node, "captions")) {
      notes.push("This node's captions come from its connected captions input, which replaces the caption files' text when the workflow runs; the gallery shows the caption files.");
    }
    const stray = this.listing ? unknownOverrides(own.edits, this.items.map((i) => i.file)) : [];
    this.noticeEl.replaceChildren();
    if (stray.length) {
      this.noticeEl.append(`${stray.length} hand edit(s) are for images not in this folder: ${stray.join(", ")}`,
        el("button", { text: "remove them", onclick: () => this.removeStray(stray) }));
    }
    if (notes.length) this.noticeEl.append((stray.length ? "\n" : "") + notes.join("\n"));
    this.noticeEl.style.display = this.noticeEl.childNodes.length ? "" : "none";
    this.updateRows(own.error !== null);
    this.updateTags();
    this.updateStatus();
    this.scheduleLint();
  }

  updateRows(readOnly) {
    for (const item of this.items) {
      const row = this.rows.get(item.file);
      if (!row) continue;
      if (document.activeElement !== row.textarea && row.textarea.value !== item.base) row.textarea.value = item.base;
      row.textarea.readOnly = readOnly;
      row.textarea.classList.toggle("slt-overridden", item.override !== null);
      row.revert.style.display = item.override !== null ? "" : "none";
      const differs = item.final !== normalizeCaption(item.base);
      row.finalEl.textContent = differs ? item.final : "";
      row.finalEl.style.display = differs ? "" : "none";
      this.updateBadges(item);
    }
    this.applyVisibility();
  }

  updateBadges(item) {
    const row = this.rows.get(item.file);
    if (!row) return;
    const missing = !item.has_caption_file && !normalizeCaption(item.final);
    const result = this.lint.issuesFor(item.final, { missing, captionFile: item.caption_file ?? "" });
    item.issues = result.issues;
    item.tokens = result.tokens;
    item.lintExact = result.exact;
    const list = badges(result.issues, result.tokens, { tokenLimit: this.lint.tokenLimit });
    if (item.override !== null) list.unshift({ level: "edited", label: "edited", title: "Hand-edited in this workflow (edits JSON)" });
    row.badgeBox.replaceChildren(...list.map((b) => el("span", { class: `slt-badge slt-${b.level}`, text: b.label,
      title: b.title + (result.exact ? "" : "\n(estimate until the server's exact count arrives)") })));
    row.row.dataset.level = worstLevel(result.issues);
  }

  applyVisibility() {
    for (const item of this.items) {
      const row = this.rows.get(item.file);
      if (!row) continue;
      const shown = this.filter === "all" || (this.filter === "issues" && hasIssues(item)) ||
        (this.filter === "edited" && item.override !== null);
      row.row.style.display = shown ? "" : "none";
      const hit = this.highlight !== null && captionHasTag(item.final, this.highlight, this.separator());
      row.row.classList.toggle("slt-hit", hit);
      row.row.classList.toggle("slt-dim", this.highlight !== null && !hit);
    }
  }

  updateTags() {
    const tags = this.tags();
    if (this.highlight !== null && !tags.some((t) => t.tag === this.highlight)) this.highlight = null;
    this.tagSummary.textContent = `Tags: ${tags.length} distinct parts` +
      (this.highlight !== null ? ` — highlighting "${this.highlight}"` : " (click one to highlight its images)");
    const shown = tags.slice(0, 150);
    this.tagList.replaceChildren(...shown.map(({ tag, count }) => el("span", {
      class: `slt-tag${tag === this.highlight ? " slt-active" : ""}`, title: `${tag}: in ${count} caption(s)`,
      onclick: () => this.setHighlight(this.highlight === tag ? null : tag),
    }, tag, el("b", { text: String(count) }))));
    if (tags.length > shown.length) this.tagList.append(el("span", { class: "slt-status", text: `… ${tags.length - shown.length} more` }));
  }

  setHighlight(tag) {
    this.highlight = tag ?? null;
    this.updateTags();
    this.applyVisibility();
  }

  updateStatus() {
    if (this.loading) return;
    if (!this.listing) {
      this.statusEl.textContent = "";
      this.saveBtn.disabled = true;
      return;
    }
    const edited = this.items.filter((i) => i.override !== null).length;
    const issues = this.items.filter(hasIssues).length;
    const pending = Object.keys(this.pendingSave()).length;
    this.statusEl.textContent = `${this.items.length} image(s) · ${edited} hand-edited · ${issues} with issues`;
    this.statusEl.title = this.listing.path ?? "";
    this.saveBtn.disabled = pending === 0;
    this.saveBtn.textContent = pending ? `Save ${pending} edited caption(s) to files` : "Save to caption files";
  }

  /**
   * What "Save" writes: each hand-edited caption (the override, as typed) whose file does not
   * hold it yet. The node's bulk prefix/suffix/find/replace are not baked in: they stay node
   * settings, applied when the workflow runs (write_back writes them, as the node always has).
   */
  pendingSave() {
    const texts = {};
    for (const item of this.items) if (item.override !== null && item.override !== undefined) texts[item.file] = item.override;
    return captionsToSave(this.items, texts);
  }

  /** Set one image's hand edit (null removes it) in the edits widget, and refresh. */
  setCaption(file, text, { fromTextarea = false } = {}) {
    const { edits, error } = this.storedEdits();
    if (error) {
      this.showResult(`Hand edits are paused until the edits JSON is fixed: ${error}`, "error");
      return false;
    }
    const item = this.items.find((i) => i.file === file);
    const upstream = item ? item.upstream : "";
    const next = setOverride(edits, file, text, upstream);
    this.writeEdits(next);
    if (!fromTextarea) {
      const row = this.rows.get(file);
      if (row && item) row.textarea.value = text ?? upstream;
    }
    this.recompute();
    return true;
  }

  removeStray(names) {
    const { edits, error } = this.storedEdits();
    if (error) return;
    const overrides = { ...edits.overrides };
    for (const name of names) delete overrides[name];
    this.writeEdits({ ...edits, overrides });
    this.recompute();
  }

  writeEdits(edits) {
    const widget = findWidget(this.node, "edits");
    if (!widget) return;
    widget.value = serializeEdits(edits);
    markDirty(this.node);
  }

  showResult(text, kind) {
    this.resultEl.textContent = text;
    this.resultEl.className = `slt-msg slt-${kind}`;
  }

  /** POST the changed captions; shows the server's answer or its error. Returns that answer. */
  async save() {
    await this.ready;
    const source = this.source;
    if (!this.listing || !source?.load) {
      const text = this.error ?? "Nothing to save: no dataset is loaded.";
      this.showResult(text, "error");
      return { ok: false, error: text };
    }
    const captions = this.pendingSave();
    const files = Object.keys(captions);
    if (!files.length) {
      this.showResult("Nothing to save: the caption files already hold these captions.", "ok");
      return { ok: true, data: { written: [], unchanged: [] } };
    }
    this.saveBtn.disabled = true;
    this.showResult(`Writing ${files.length} caption file(s)…`, "note");
    const answer = await postJson("/style_lora/captions", { folder: source.folder,
      caption_extension: source.caption_extension, captions });
    if (!answer.ok) {
      this.showResult(`Not saved: ${answer.error}`, "error");
      this.updateStatus();
      return answer;
    }
    const written = answer.data?.written ?? [];
    const unchanged = answer.data?.unchanged ?? [];
    // Hand edits stay in the edits widget after saving: the workflow keeps carrying them (a shared
    // workflow used with the original dataset still trains on them); they now equal the files.
    this.showResult(`Saved: wrote ${written.length} file(s)${written.length ? ` (${written.join(", ")})` : ""}` +
      `${unchanged.length ? `; ${unchanged.length} unchanged` : ""}.`, "ok");
    listingCache.clear();
    await this.reload({ fresh: true });
    for (const panel of panels) {
      if (panel instanceof ShufflePreview) panel.refresh();
      else if (panel instanceof CaptionGallery && panel !== this && sourceKey(panel.source) === sourceKey(source)) {
        panel.reload({ fresh: true });
      }
    }
    return answer;
  }

  async runLint() {
    if (this.disposed) return;
    if (this.lintInFlight) {
      this.scheduleLint();
      return;
    }
    if (this.lintRetry !== null) return; // backing off after a failure: the retry is scheduled
    const captions = this.lint.missing(this.items.map((i) => i.final)).slice(0, 500);
    if (!captions.length) return;
    this.lintInFlight = true;
    const answer = await postJson("/style_lora/lint", { captions });
    this.lintInFlight = false;
    if (this.disposed) return;
    if (!answer.ok) {
      this.lintRetry = setTimeout(() => {
        this.lintRetry = null;
        this.runLint();
      }, LINT_RETRY_MS);
      return;
    }
    this.lint.store(captions, answer.data);
    for (const item of this.items) this.updateBadges(item);
    this.applyVisibility();
    this.updateStatus();
    if (this.lint.missing(this.items.map((i) => i.final)).length) this.scheduleLint();
  }

  dispose() {
    this.disposed = true;
    this.scheduleLint.cancel();
    this.scheduleCheck.cancel();
    clearTimeout(this.lintRetry);
    this.loadSeq += 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Shuffle Caption preview

class ShufflePreview {
  constructor(node) {
    this.node = node;
    this.key = null;
    this.seq = 0;
    this.data = null;
    this.error = null;
    this.ready = Promise.resolve();
    this.statusEl = el("span", { class: "slt-status" });
    this.messageEl = el("div", { class: "slt-msg" });
    this.list = el("div", { class: "slt-shuffle" });
    routeWheel(this.list);
    this.root = el("div", { class: "slt-panel" },
      el("div", { class: "slt-bar" }, el("button", { text: "⟳", title: "Read the captions again",
        onclick: () => this.refresh({ fresh: true }) }), this.statusEl),
      this.messageEl, this.list);
    addPanelWidget(node, "shuffle_preview", this.root, 150);
    this.schedule = debounce(() => this.refresh(), SHUFFLE_DEBOUNCE_MS);
    hookWidgetCallbacks(node, ["enabled", "separator", "keep_tokens", "seed", "preview_count"], () => this.check());
    const panel = this;
    node.styleLoraShuffle = {
      get text() { return panel.data?.text ?? ""; },
      get examples() { return panel.data?.examples ?? []; },
      get error() { return panel.error; },
      get ready() { return panel.ready; },
      refresh: () => panel.refresh({ fresh: true }),
    };
  }

  settings() {
    return {
      enabled: Boolean(widgetValue(this.node, "enabled", true)),
      separator: String(widgetValue(this.node, "separator", ",")),
      keep_tokens: Number(widgetValue(this.node, "keep_tokens", 1)),
      seed: Number(widgetValue(this.node, "seed", 0)),
      count: Number(widgetValue(this.node, "preview_count", 3)),
    };
  }

  check() {
    const source = datasetSource(this.node);
    const key = JSON.stringify([sourceKey(source), chainKey(source), this.settings()]);
    if (key !== this.key) {
      this.key = key;
      this.schedule();
    }
  }

  refresh({ fresh = false } = {}) {
    const seq = ++this.seq;
    this.ready = this.load(seq, fresh);
    return this.ready;
  }

  async load(seq, fresh) {
    const source = datasetSource(this.node);
    const settings = this.settings();
    const fail = (text) => {
      this.error = text;
      this.data = null;
      this.captionCount = 0;
      this.captionsNote = null;
      this.render();
    };
    if (!source.load) return fail(source.error);
    if (!source.folder.trim()) return fail("The Load Dataset node has no folder yet.");
    if (!settings.separator) return fail("The separator cannot be empty; the guide's captions use \",\".");
    this.statusEl.textContent = "…";
    const listing = await datasetListing(source.folder, source.caption_extension, { fresh });
    if (seq !== this.seq) return;
    if (!listing.ok) return fail(listing.error);
    const captions = (listing.data.items ?? []).map((item) => applyEditChain(item.caption ?? "", item.file, source.chain));
    const answer = await postJson("/style_lora/shuffle_preview", { captions, ...settings });
    if (seq !== this.seq) return;
    if (!answer.ok) return fail(answer.error);
    this.error = null;
    this.data = answer.data;
    this.captionCount = captions.length;
    this.captionsNote = source.captionsInput;
    this.render();
  }

  renderCaption(text, keep, separator) {
    const { parts, joiner } = splitCaption(text, separator);
    if (!keep || parts.length <= keep || parts.join(joiner) !== text) return [text || "(empty caption)"];
    return [el("span", { class: "slt-kept", text: parts.slice(0, keep).join(joiner) }), joiner + parts.slice(keep).join(joiner)];
  }

  render() {
    this.messageEl.textContent = this.error ?? "";
    this.messageEl.className = this.error ? "slt-msg slt-error" : "slt-msg";
    const settings = this.settings();
    const examples = this.data?.examples ?? [];
    if (this.error) this.statusEl.textContent = "";
    else if (!settings.enabled) this.statusEl.textContent = "Shuffling is off: captions are trained as written.";
    else {
      this.statusEl.textContent = `Steps 0–${settings.count - 1} as training will see them; ` +
        `first ${settings.keep_tokens} part(s) fixed (blue).`;
    }
    this.list.replaceChildren(...examples.map((example, index) => el("div", { class: "slt-example" },
      el("div", { class: "slt-orig" }, `[${index + 1}] `, example.original || "(empty caption)"),
      ...(settings.enabled ? example.shuffles ?? [] : []).map((text, step) => el("div", { class: "slt-step" },
        el("i", { text: `step ${step}` }), ...this.renderCaption(text, settings.keep_tokens, settings.separator))))));
    if (this.captionCount > examples.length) {
      this.list.append(el("div", { class: "slt-status", text: `… and ${this.captionCount - examples.length} more caption(s).` }));
    }
    if (this.captionsNote) {
      this.list.append(el("div", { class: "slt-msg slt-note",
        text: `Captions of "${this.captionsNote}" come from its captions input; these examples use the caption files.` }));
    }
  }

  dispose() {
    this.schedule.cancel();
    this.seq += 1;
  }
}

// ---------------------------------------------------------------------------------------------
// Train LoRA live panel

class TrainingPanel {
  constructor(node) {
    this.node = node;
    this.history = createHistory(node.id);
    this.drawn = -1;
    this.frame = null;
    this.fetchSeq = 0;
    this.idKey = String(node.id);
    this.headerEl = el("div", { class: "slt-header" });
    this.canvas = el("canvas");
    this.wrap = el("div", { class: "slt-chart-wrap" }, this.canvas);
    this.root = el("div", { class: "slt-panel" }, this.headerEl, this.wrap);
    addPanelWidget(node, "training_chart", this.root, 230);
    if (typeof ResizeObserver === "function") {
      this.resizer = new ResizeObserver(() => this.redraw(true));
      this.resizer.observe(this.wrap);
    }
    const panel = this;
    node.styleLoraChart = {
      get history() { return panel.history; },
      get points() { return panel.history.points; },
      get epochs() { return panel.history.epochs; },
      get state() { return panel.history.state; },
      get run() { return panel.history.run; },
      get header() { return panel.headerEl.textContent; },
      get ready() { return panel.ready; },
      refresh: () => panel.refresh(),
      redraw: () => panel.redraw(true),
    };
    this.ready = Promise.resolve();
    this.redraw(true);
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
      const query = new URLSearchParams({ node: history.node });
      const answer = await fetchJson(`/style_lora/training?${query}`);
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
    this.headerEl.title = text;
    this.headerEl.classList.toggle("slt-failed", history.state === "failed" || (this.error && history.state === "idle"));
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

  dispose() {
    this.resizer?.disconnect();
    this.fetchSeq += 1;
  }
}

// ---------------------------------------------------------------------------------------------
// result text (training summary, saved LoRA names) shown in the node after it runs

function showResultText(node, text) {
  let widget = findWidget(node, "result");
  if (!widget) {
    const area = el("textarea", { class: "slt-result", readOnly: true, spellcheck: false });
    routeWheel(area);
    widget = addUnsavedWidget(node, "result", "style_lora_result", area, {
      minHeight: 70,
      getValue: () => area.value,
      setValue: (value) => {
        area.value = value ?? "";
      },
    });
  }
  widget.value = text;
  growToMinHeight(node);
  markDirty(node);
}

// ---------------------------------------------------------------------------------------------
// the extension

function attachPanel(node) {
  const type = nodeType(node);
  if (node.styleLoraPanel) return node.styleLoraPanel;
  let panel = null;
  if (type === CAPTION_EDITOR) {
    panel = new CaptionGallery(node);
    ensureWidth(node, 560, 640);
  } else if (type === SHUFFLE_CAPTION) {
    panel = new ShufflePreview(node);
    ensureWidth(node, 440, 460);
  } else if (type === TRAIN) {
    panel = new TrainingPanel(node);
    ensureWidth(node, 460, 0);
  }
  if (!panel) return null;
  node.styleLoraPanel = panel;
  registerPanel(panel);
  if (!(panel instanceof TrainingPanel)) setTimeout(() => node.graph && panel.check(), 0);
  return panel;
}

function trainingPanels() {
  return [...panels].filter((p) => p instanceof TrainingPanel);
}

app.registerExtension({
  name: "StyleLoRATrainer",
  async setup() {
    injectStyles();
    applyLinkColours();
    for (const name of TRAIN_EVENTS) {
      api.addEventListener(name, ({ detail }) => {
        for (const panel of trainingPanels()) if (panel.matches(detail)) panel.onEvent(name, detail);
      });
    }
    // Events sent while the socket was down are lost: read the server's history again.
    api.addEventListener("reconnected", () => {
      for (const panel of trainingPanels()) panel.refresh();
    });
    setInterval(pollPanels, POLL_MS);
  },
  async nodeCreated(node) {
    if (!OUR_NODES.has(nodeType(node))) return;
    applyLinkColours();
    const panel = attachPanel(node);
    if (panel instanceof TrainingPanel) {
      // A node loaded from a workflow gets its saved id after this call.
      setTimeout(() => panel.refresh(), 0);
    }
  },
  async afterConfigureGraph() {
    applyLinkColours();
    for (const panel of panels) {
      if (!panel.node.graph) continue;
      if (panel instanceof TrainingPanel) panel.refresh();
      else if (panel instanceof CaptionGallery) {
        panel.loadedKey = null; // the workflow's edits and folder: read everything again
        panel.check();
      } else panel.check();
    }
  },
  async beforeRegisterNodeDef(nodeType_, nodeData) {
    if (!OUR_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType_.prototype.onExecuted;
    nodeType_.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text?.length) showResultText(this, message.text.join("\n"));
      if (nodeData.name === TRAIN) this.styleLoraPanel?.refresh?.();
      // New epoch files: refresh the node definitions so LoraLoader's list shows them at once
      // (what pressing R does), instead of the user wondering where the files went.
      if (nodeData.name === SAVE_EPOCHS && message?.text?.length) app.refreshComboInNodes?.()?.catch?.(() => {});
    };
  },
});
