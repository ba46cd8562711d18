// Caption Editor panel: a gallery of the dataset with editable captions, bulk-edit previews, tag
// frequencies, lint badges and "Save to caption files" (per-image edits live in the `edits`
// widget, so they are saved with the workflow). new CaptionGallery(node, {app, server, panels}):
// ComfyUI's app, the pack's routes (../lib/api.js) and the live panels come from the entry, so this
// module imports nothing from ComfyUI and does nothing on import.
import CONTRACT from "../lib/contract.json" with { type: "json" };
import {
  applyEditChain,
  captionHasTag,
  captionsToSave,
  editCaption,
  normalizeCaption,
  serializeEdits,
  setOverride,
  tagFrequency,
  tryParseEdits,
  unknownOverrides,
} from "../lib/captions.js";
import { addPanelWidget, debounce, el, growToMinHeight, hookWidgetCallbacks, markDirty, recordChange, routeWheel } from "../lib/dom.js";
import {
  CAPTION_EDITOR,
  chainKey,
  datasetSource,
  editorEdits,
  findWidget,
  inputLinked,
  sourceKey,
  widgetValue,
} from "../lib/graph.js";
import { badges, LintCache, worstLevel } from "../lib/lint.js";

const PANEL = CONTRACT.panels[CAPTION_EDITOR];
const LINT_DEBOUNCE_MS = 500;
const LINT_RETRY_MS = 10000; // after a failed POST /style_lora/lint
const GUIDE_EXAMPLES = [
  ["A red apple", "A glossy red apple with droplets of water, nestled among green leaves"],
  ["A woman reading", "A woman wearing glasses reflecting light, in a sunlit library, reading a vintage leather-bound book"],
  ["A mountain.", "A tall mountain, peak shrouded in mist, winding river at its base reflecting the first light of dawn"],
];

/** Whether an image's issues need the user (an "info" alone does not). */
function hasIssues(item) {
  const level = worstLevel(item.issues ?? []);
  return level !== "ok" && level !== "info";
}

export class CaptionGallery {
  constructor(node, { app, server, panels }) {
    this.node = node;
    this.app = app;
    this.server = server;
    this.panels = panels;
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
    addPanelWidget(node, PANEL.widget, this.root, PANEL.panel_height);
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
    routeWheel(this.scroller, this.app);
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
    markDirty(this.node, this.app);
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
    const answer = await this.server.datasetListing(source.folder, source.caption_extension, { fresh });
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
          token_limit: listing.token_limit, token_cap: listing.token_cap ?? null, min_words: listing.min_words });
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
        src: this.server.thumbnailUrl(folder, item.file, this.thumbVersion) });
      img.addEventListener("error", () => {
        img.replaceWith(el("div", { class: "slt-thumb slt-broken", text: "no preview", title: `${item.file}: thumbnail failed` }));
      }, { once: true });
      const textarea = el("textarea", { class: "slt-caption", spellcheck: false, rows: 2,
        placeholder: "No caption yet — describe the subject, its context and each distinct element." });
      textarea.addEventListener("input", () => this.setCaption(item.file, textarea.value, { fromTextarea: true }));
      // One undo step per finished edit (the frontend ignores keys typed into a textarea).
      textarea.addEventListener("change", () => recordChange(this.app, () => {}));
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
    // The image's own problems (too large, unreadable, a link outside the folder) come with the listing.
    const issues = [...(item.problems ?? []), ...result.issues];
    item.issues = issues;
    item.tokens = result.tokens;
    item.lintExact = result.exact;
    const list = badges(issues, result.tokens, { tokenLimit: this.lint.tokenLimit });
    if (item.override !== null) list.unshift({ level: "edited", label: "edited", title: "Hand-edited in this workflow (edits JSON)" });
    row.badgeBox.replaceChildren(...list.map((b) => el("span", { class: `slt-badge slt-${b.level}`, text: b.label,
      title: b.title + (result.exact ? "" : "\n(estimate until the server's exact count arrives)") })));
    row.row.dataset.level = worstLevel(issues);
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
    this.writeEdits(next, { record: !fromTextarea });
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

  writeEdits(edits, { record = true } = {}) {
    const widget = findWidget(this.node, "edits");
    if (!widget) return;
    const write = () => { widget.value = serializeEdits(edits); };
    if (record) recordChange(this.app, write);
    else write();
    markDirty(this.node, this.app);
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
    const answer = await this.server.saveCaptions({ folder: source.folder,
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
    this.server.clearListings();
    await this.reload({ fresh: true });
    // The shuffle previews read the files again; so do the other galleries of this folder.
    for (const panel of this.panels) panel.captionsSaved?.(source, this);
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
    const answer = await this.server.lint(captions);
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

  /** Called on every panel after a gallery (`savedBy`) wrote the caption files of `source`. */
  captionsSaved(source, savedBy) {
    if (savedBy !== this && sourceKey(this.source) === sourceKey(source)) this.reload({ fresh: true });
  }

  dispose() {
    this.disposed = true;
    this.scheduleLint.cancel();
    this.scheduleCheck.cancel();
    clearTimeout(this.lintRetry);
    this.loadSeq += 1;
  }
}

