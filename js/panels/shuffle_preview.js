// Shuffle Caption panel: example shuffles, live from the server, exactly what training will see.
// new ShufflePreview(node, {app, server}): ComfyUI's app and the pack's routes (../lib/api.js)
// come from the entry, so this module imports nothing from ComfyUI and does nothing on import.
import CONTRACT from "../lib/contract.json" with { type: "json" };
import { applyEditChain, splitCaption } from "../lib/captions.js";
import { addPanelWidget, debounce, el, hookWidgetCallbacks, routeWheel } from "../lib/dom.js";
import { chainKey, datasetSource, SHUFFLE_CAPTION, sourceKey, widgetValue } from "../lib/graph.js";

const PANEL = CONTRACT.panels[SHUFFLE_CAPTION];
const SHUFFLE_DEBOUNCE_MS = 300;

export class ShufflePreview {
  constructor(node, { app, server }) {
    this.node = node;
    this.app = app;
    this.server = server;
    this.key = null;
    this.seq = 0;
    this.data = null;
    this.error = null;
    this.ready = Promise.resolve();
    this.statusEl = el("span", { class: "slt-status" });
    this.messageEl = el("div", { class: "slt-msg" });
    this.list = el("div", { class: "slt-shuffle" });
    routeWheel(this.list, this.app);
    this.root = el("div", { class: "slt-panel" },
      el("div", { class: "slt-bar" }, el("button", { text: "⟳", title: "Read the captions again",
        onclick: () => this.refresh({ fresh: true }) }), this.statusEl),
      this.messageEl, this.list);
    addPanelWidget(node, PANEL.widget, this.root, PANEL.panel_height);
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
    const listing = await this.server.datasetListing(source.folder, source.caption_extension, { fresh });
    if (seq !== this.seq) return;
    if (!listing.ok) return fail(listing.error);
    const captions = (listing.data.items ?? []).map((item) => applyEditChain(item.caption ?? "", item.file, source.chain));
    const answer = await this.server.shufflePreview({ captions, ...settings });
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

  /** Called after a Caption Editor wrote caption files: show the new captions. */
  captionsSaved() {
    this.refresh();
  }

  dispose() {
    this.schedule.cancel();
    this.seq += 1;
  }
}

