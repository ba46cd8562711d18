// The extension file itself (js/style_lora_trainer.js), loaded with stand-ins for ComfyUI's
// scripts/app.js and scripts/api.js (a module resolve hook) and a minimal fake DOM, driven the way
// the frontend drives it: setup(), nodeCreated(), server events, fetch answers. The real frontend
// is the browser tier's job; this checks the glue between the pure modules, the routes and the widgets.
import { after, before, mock, test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { register } from "node:module";

import CONTRACT from "../../js/lib/contract.json" with { type: "json" };

// ---------------------------------------------------------------------------------------------
// stand-ins for ../../scripts/app.js and ../../scripts/api.js

const LOADER = `
export async function resolve(specifier, context, next) {
  if (/\\/scripts\\/app\\.js$/.test(specifier)) {
    return { url: "data:text/javascript,export const app = globalThis.__slt.app;", shortCircuit: true };
  }
  if (/\\/scripts\\/api\\.js$/.test(specifier)) {
    return { url: "data:text/javascript,export const api = globalThis.__slt.api;", shortCircuit: true };
  }
  return next(specifier, context);
}`;

// ---------------------------------------------------------------------------------------------
// a minimal DOM: enough for the extension's element building, never rendering anything

class FakeNode {
  constructor() {
    this.childNodes = [];
    this.parentNode = null;
    this.listeners = {};
  }
  append(...children) {
    for (const child of children) {
      const node = typeof child === "string" ? new FakeText(child) : child;
      if (node instanceof FakeFragment) {
        for (const c of [...node.childNodes]) this.append(c);
        continue;
      }
      node.parentNode?.removeChild(node);
      node.parentNode = this;
      this.childNodes.push(node);
    }
  }
  removeChild(child) {
    this.childNodes = this.childNodes.filter((c) => c !== child);
    child.parentNode = null;
  }
  replaceChildren(...children) {
    for (const c of this.childNodes) c.parentNode = null;
    this.childNodes = [];
    this.append(...children);
  }
  replaceWith(other) {
    const parent = this.parentNode;
    if (!parent) return;
    const index = parent.childNodes.indexOf(this);
    parent.childNodes[index] = other;
    other.parentNode = parent;
    this.parentNode = null;
  }
  addEventListener(type, fn) {
    (this.listeners[type] ??= []).push(fn);
  }
  dispatch(type, event = {}) {
    for (const fn of this.listeners[type] ?? []) fn({ type, target: this, preventDefault() {}, stopPropagation() {}, ...event });
  }
  get textContent() {
    return this.childNodes.map((c) => c.textContent).join("");
  }
  set textContent(value) {
    this.replaceChildren(...(value === "" || value === null || value === undefined ? [] : [String(value)]));
  }
  querySelectorAll(predicate) {
    const out = [];
    const walk = (n) => {
      for (const c of n.childNodes) {
        if (c instanceof FakeElement && predicate(c)) out.push(c);
        walk(c);
      }
    };
    walk(this);
    return out;
  }
}
class FakeText extends FakeNode {
  constructor(text) {
    super();
    this.text = text;
  }
  get textContent() {
    return this.text;
  }
}
class FakeFragment extends FakeNode {}
class FakeClassList {
  constructor(el) {
    this.el = el;
  }
  get set() {
    return new Set(this.el.className.split(/\s+/).filter(Boolean));
  }
  add(...names) {
    const s = this.set;
    names.forEach((n) => s.add(n));
    this.el.className = [...s].join(" ");
  }
  remove(...names) {
    const s = this.set;
    names.forEach((n) => s.delete(n));
    this.el.className = [...s].join(" ");
  }
  toggle(name, force) {
    const on = force === undefined ? !this.set.has(name) : Boolean(force);
    if (on) this.add(name);
    else this.remove(name);
    return on;
  }
  contains(name) {
    return this.set.has(name);
  }
}
class FakeElement extends FakeNode {
  constructor(tag) {
    super();
    this.tagName = tag.toUpperCase();
    this.className = "";
    this.attributes = {};
    this.style = { cssText: "", display: "" };
    this.dataset = {};
    this.classList = new FakeClassList(this);
    this.value = "";
    this.readOnly = false;
    this.disabled = false;
    this.spellcheck = true;
    this.rows = 2;
    this.title = "";
    this.scrollTop = 0;
    this.scrollHeight = 0;
    this.clientHeight = 0;
    this.clientWidth = 0;
    this.width = 300;
    this.height = 150;
  }
  setAttribute(name, value) {
    this.attributes[name] = String(value);
  }
  getAttribute(name) {
    return this.attributes[name] ?? null;
  }
  getContext() {
    return null;
  }
}
const fakeDocument = {
  head: new FakeElement("head"),
  activeElement: null,
  hidden: false,
  createElement: (tag) => new FakeElement(tag),
  createTextNode: (text) => new FakeText(text),
  createDocumentFragment: () => new FakeFragment(),
  getElementById(id) {
    return this.head.querySelectorAll((e) => e.attributes.id === id)[0] ?? null;
  },
};

// ---------------------------------------------------------------------------------------------
// stand-ins for the app, the api and LiteGraph nodes

const requests = [];
const routes = new Map(); // "GET /style_lora/dataset" -> (url, body) => [status, json]
const eventListeners = {};
let extension = null;
let pollFn = null;
const createdNodes = [];

const api = {
  async fetchApi(path, init = {}) {
    const method = init.method ?? "GET";
    const url = new URL(path, "http://comfy.local");
    const body = init.body ? JSON.parse(init.body) : null;
    requests.push({ method, path: url.pathname, query: Object.fromEntries(url.searchParams), body });
    const handler = routes.get(`${method} ${url.pathname}`);
    const [status, json] = handler ? handler(url, body) : [404, null];
    return { ok: status >= 200 && status < 300, status, json: async () => {
      if (json === null) throw new SyntaxError("no json");
      return json;
    } };
  },
  apiURL: (path) => `/api${path}`,
  addEventListener(name, fn) {
    (eventListeners[name] ??= []).push(fn);
  },
};
const app = {
  canvas: { default_connection_color_byType: {}, processMouseWheel() {} },
  graph: { setDirtyCanvas() {} },
  registerExtension(ext) {
    extension = ext;
  },
};

function makeNode(graph, type, widgets, inputs, outputs = []) {
  const node = {
    id: graph.nextId++,
    type,
    comfyClass: type,
    title: type,
    graph,
    size: [300, 200],
    inputs: inputs.map((name) => ({ name, link: null })),
    outputs: outputs.map((name) => ({ name, links: [] })),
    widgets: Object.entries(widgets).map(([name, value]) => ({ name, value, options: {}, callback: null })),
    addDOMWidget(name, type_, element, options) {
      const widget = { name, type: type_, element, options: { ...options },
        get value() { return this.options.getValue?.() ?? ""; },
        set value(v) { this.options.setValue?.(v); this.callback?.(this.value); } };
      this.widgets.push(widget);
      return widget;
    },
    setSize(size) {
      this.size = size;
    },
    computeSize() {
      return [300, 100];
    },
    setDirtyCanvas() {},
    getInputNode(slot) {
      const link = graph.links.get(this.inputs[slot]?.link);
      return link ? graph.nodes.get(link.origin) : null;
    },
  };
  graph.nodes.set(node.id, node);
  createdNodes.push(node);
  return node;
}

function makeGraph() {
  return { nextId: 1, nodes: new Map(), links: new Map(), nextLink: 1, getNodeById(id) {
    return this.nodes.get(id) ?? null;
  } };
}

/** Link ``origin``'s output (slot 0, or ``slot``) to ``target``'s input called ``inputName``. */
function connect(graph, origin, target, inputName, slot = 0) {
  const id = graph.nextLink++;
  graph.links.set(id, { origin: origin.id, origin_id: origin.id, origin_slot: slot, target_id: target.id });
  target.inputs.find((i) => i.name === inputName).link = id;
  origin.outputs?.[slot]?.links.push(id);
}

const widget = (node, name) => node.widgets.find((w) => w.name === name);
const settle = () => new Promise((resolve) => setTimeout(resolve, 0));
const flush = () => new Promise((resolve) => setImmediate(resolve)); // pending fetches, with setTimeout mocked
const posts = (path) => requests.filter((r) => r.method === "POST" && r.path === path).length;
const gets = (folder) => requests.filter((r) => r.path === "/style_lora/dataset" && r.query.folder === folder).length;

before(async () => {
  globalThis.__slt = { app, api };
  globalThis.document = fakeDocument;
  globalThis.Node = FakeNode;
  globalThis.LGraphCanvas = { link_type_colors: { number: "#AAA" } };
  register(`data:text/javascript,${encodeURIComponent(LOADER)}`);
  await import("../../js/style_lora_trainer.js");
  const realSetInterval = globalThis.setInterval;
  globalThis.setInterval = (fn) => {
    pollFn = fn;
    return 0;
  };
  try {
    await extension.setup();
  } finally {
    globalThis.setInterval = realSetInterval;
  }
});

after(() => {
  // Removing the nodes cancels the panels' pending debounced work (the fake DOM stays installed
  // for anything already in flight).
  for (const node of createdNodes) node.onRemoved?.();
});

// ---------------------------------------------------------------------------------------------

const LISTING = {
  folder: "apples", path: "/comfy/input/apples", caption_extension: ".txt", token_limit: 75, min_words: 5,
  items: [
    { file: "a.png", caption: "a red apple", caption_file: "a.txt", has_caption_file: true, width: 512, height: 512,
      tokens: 3, issues: [{ level: "warning", code: "caption_short", message: "short" }] },
    { file: "b.png", caption: "", caption_file: "b.txt", has_caption_file: false, width: 640, height: 480,
      tokens: null, issues: [{ level: "warning", code: "caption_missing", message: "No caption file (b.txt)." }] },
    { file: "c.png", caption: "a green pear on a wooden table, soft light", caption_file: "c.txt",
      has_caption_file: true, width: 512, height: 768, tokens: 10, issues: [] },
  ],
};

// The panels share dataset listings for a few seconds: each test uses its own folder name.
function captionPipeline(folder = "apples") {
  const graph = makeGraph();
  const load = makeNode(graph, "StyleLoRALoadDataset", { folder, caption_extension: ".txt" }, ["clip"]);
  const editor = makeNode(graph, "StyleLoRACaptionEditor", { prefix: "", suffix: "", find: "", replace: "",
    write_back: false, edits: "{}" }, ["dataset", "captions"]);
  connect(graph, load, editor, "dataset");
  return { graph, load, editor };
}

test("setup registers the six training events and installs the link colours", () => {
  assert.equal(Object.keys(CONTRACT.events).length, 6);
  for (const name of Object.values(CONTRACT.events)) {
    assert.equal(eventListeners[name]?.length, 1, name);
  }
  assert.equal(LGraphCanvas.link_type_colors.STYLE_LORA_DATASET, "#7bbf8b");
  Object.assign(LGraphCanvas.link_type_colors, { STYLE_LORA_DATASET: "" }); // a palette load
  assert.equal(LGraphCanvas.link_type_colors.STYLE_LORA_DATASET, "#7bbf8b");
  assert.equal(app.canvas.default_connection_color_byType.STYLE_LORA_RUN, "#e0a458");
  assert.ok(fakeDocument.getElementById("style-lora-trainer-css"));
  assert.equal(typeof pollFn, "function");
});

const STYLESHEET_URL = new URL("../../js/style_lora_trainer.css", import.meta.url).href;
const stylesheetLinks = () => fakeDocument.head.querySelectorAll((e) => e.tagName === "LINK");

test("setup links js/style_lora_trainer.css once; the link colours' CSS variables stay a <style>", () => {
  const links = stylesheetLinks();
  assert.equal(links.length, 1);
  assert.deepEqual(links[0].attributes, { id: "style-lora-trainer-css", rel: "stylesheet", href: STYLESHEET_URL });
  const styles = fakeDocument.head.querySelectorAll((e) => e.tagName === "STYLE");
  assert.equal(styles.length, 1);
  assert.match(styles[0].textContent, /--color-datatype-STYLE_LORA_DATASET: #7bbf8b;/);
  assert.doesNotMatch(styles[0].textContent, /\.slt-/); // the panels' rules are in the stylesheet
});

test("every slt-* class the JS sets has a rule in js/style_lora_trainer.css", () => {
  const css = readFileSync(new URL(STYLESHEET_URL), "utf8");
  const files = ["style_lora_trainer.js", "panels/caption_gallery.js", "panels/shuffle_preview.js",
    "panels/training_chart.js", "panels/result_text.js", "panels/grid_picker.js"];
  const used = new Set(files.flatMap((f) => readFileSync(new URL(`../../js/${f}`, import.meta.url), "utf8")
    .match(/slt-[a-z][a-z-]*/g) ?? []));
  used.delete("slt-gallery"); // a handle for the gallery's root, for scripts: no rule of its own
  assert.ok(used.size > 30, used.size);
  for (const name of used) assert.match(css, new RegExp(`\\.${name}\\b`), name);
  // The levels set as slt-${level} (lint badges, messages).
  for (const level of ["error", "warning", "info", "ok", "edited", "note"]) assert.match(css, new RegExp(`\\.slt-${level}\\b`), level);
});

test("panels get the widget names and sizes of contract.json, the result text its min height", async () => {
  const graph = makeGraph();
  const nodes = {
    StyleLoRACaptionEditor: makeNode(graph, "StyleLoRACaptionEditor", { prefix: "", suffix: "", find: "", replace: "",
      write_back: false, edits: "{}" }, ["dataset", "captions"]),
    StyleLoRAShuffleCaption: makeNode(graph, "StyleLoRAShuffleCaption", { enabled: true, separator: ",", keep_tokens: 1,
      seed: 7, preview_count: 1 }, ["dataset"]),
    StyleLoRATrain: makeNode(graph, "StyleLoRATrain", { epochs: 2 }, ["dataset"]),
    StyleLoRAEpochWeightGrid: makeNode(graph, "StyleLoRAEpochWeightGrid", { weights: "0.8, 1.0" }, ["model"], ["grid", "table"]),
  };
  routes.set("GET /style_lora/training", (url) => [200, { node: url.searchParams.get("node"), run: null, state: "idle",
    points: [], epochs: [] }]);
  for (const [type, spec] of Object.entries(CONTRACT.panels)) {
    const node = nodes[type];
    node.size = [100, 50];
    await extension.nodeCreated(node);
    const panel = node.widgets.find((w) => w.type === "style_lora_panel");
    assert.equal(panel.name, spec.widget, type);
    assert.equal(panel.options.getMinHeight(), spec.panel_height, type);
    assert.deepEqual(node.size, [spec.min_width, Math.max(50, spec.min_height)], type);
    // Never shrinks a node that is larger already.
    const big = makeNode(graph, type, {}, ["dataset"]);
    big.size = [spec.min_width + 100, spec.min_height + 100];
    await extension.nodeCreated(big);
    assert.deepEqual(big.size, [spec.min_width + 100, spec.min_height + 100], type);
  }
  await nodes.StyleLoRATrain.styleLoraChart.refresh();
  const save = makeNode(graph, "StyleLoRASaveEpochs", {}, []);
  await extension.beforeRegisterNodeDef({ prototype: save }, { name: "StyleLoRASaveEpochs" });
  save.onExecuted({ text: ["saved"] });
  assert.equal(widget(save, "result").options.getMinHeight(), CONTRACT.result_text.min_height);
  await settle(); // the panels' first checks
});

test("caption gallery: listing, bulk edits, hand edits in the edits widget, save", async () => {
  routes.set("GET /style_lora/dataset", () => [200, structuredClone(LISTING)]);
  routes.set("POST /style_lora/lint", (url, body) => [200, { token_limit: 75, min_words: 5,
    results: body.captions.map((c) => ({ tokens: c.split(" ").length, issues: [] })) }]);
  const { editor } = captionPipeline();
  await extension.nodeCreated(editor);
  const gallery = editor.styleLoraGallery;
  assert.ok(gallery, "node.styleLoraGallery");
  // The raw edits widget is hidden but still a normal (serialised) widget.
  assert.equal(widget(editor, "edits").hidden, true);
  assert.notEqual(widget(editor, "edits").serialize, false);
  const panel = editor.widgets.find((w) => w.name === "caption_gallery");
  assert.equal(panel.options.serialize, false);
  assert.equal(panel.serialize, false);
  assert.ok(panel.options.getMinHeight() >= 300);

  pollFn();
  await gallery.ready;
  const get = requests.filter((r) => r.path === "/style_lora/dataset").at(-1);
  assert.deepEqual(get.query, { folder: "apples", caption_extension: ".txt" });
  assert.deepEqual(gallery.items.map((i) => i.file), ["a.png", "b.png", "c.png"]);
  assert.deepEqual(gallery.captions, { "a.png": "a red apple", "b.png": "", "c.png": "a green pear on a wooden table, soft light" });
  assert.equal(gallery.error, null);

  // Bulk prefix from the node's own widget: previews follow on the next poll.
  widget(editor, "prefix").value = "applestyle";
  pollFn();
  assert.equal(gallery.captions["a.png"], "applestyle, a red apple");
  assert.equal(gallery.captions["b.png"], "applestyle");

  // A hand edit is stored as an override in the edits JSON (the widget the workflow saves).
  gallery.setCaption("a.png", "A glossy red apple with droplets of water, nestled among green leaves");
  const stored = JSON.parse(widget(editor, "edits").value);
  assert.deepEqual(stored.overrides, { "a.png": "A glossy red apple with droplets of water, nestled among green leaves" });
  assert.equal(gallery.captions["a.png"], "applestyle, A glossy red apple with droplets of water, nestled among green leaves");
  const row = gallery.items.find((i) => i.file === "a.png");
  assert.equal(row.override, "A glossy red apple with droplets of water, nestled among green leaves");
  // Setting it back to the file's caption removes the override.
  gallery.setCaption("a.png", "a red apple");
  assert.deepEqual(JSON.parse(widget(editor, "edits").value).overrides, {});
  gallery.setCaption("a.png", "A glossy red apple with droplets of water, nestled among green leaves");

  // Tags and highlighting.
  assert.deepEqual(gallery.tags().slice(0, 1), [{ tag: "applestyle", count: 3 }]);

  // Save writes the hand edits as typed (the bulk prefix stays a node setting); the server's
  // answer is shown; the listing is read again.
  gallery.setCaption("b.png", "a green apple\n on a plate");
  let posted = null;
  const saved = structuredClone(LISTING);
  routes.set("POST /style_lora/captions", (url, body) => {
    posted = body;
    saved.items[0].caption = body.captions["a.png"];
    saved.items[1].caption = body.captions["b.png"];
    saved.items[1].has_caption_file = true;
    return [200, { written: ["a.txt", "b.txt"], unchanged: [] }];
  });
  routes.set("GET /style_lora/dataset", () => [200, structuredClone(saved)]);
  const answer = await gallery.save();
  assert.equal(answer.ok, true);
  assert.deepEqual(posted, { folder: "apples", caption_extension: ".txt", captions: {
    "a.png": "A glossy red apple with droplets of water, nestled among green leaves",
    "b.png": "a green apple, on a plate",
  } });
  assert.match(editor.styleLoraPanel.resultEl.textContent, /wrote 2 file/);
  // The hand edits are in the files now and stay in the edits widget (the workflow carries them).
  assert.deepEqual(JSON.parse(widget(editor, "edits").value).overrides, {
    "a.png": "A glossy red apple with droplets of water, nestled among green leaves",
    "b.png": "a green apple\n on a plate" }); // as typed; normalised when used, like Python's
  assert.equal(gallery.captions["a.png"], "applestyle, A glossy red apple with droplets of water, nestled among green leaves");
  assert.equal(gallery.captions["b.png"], "applestyle, a green apple, on a plate");
  assert.deepEqual(await gallery.save().then((a) => a.data), { written: [], unchanged: [] }); // nothing left
});

test("caption gallery: exact lint results replace the estimates", async () => {
  routes.set("GET /style_lora/dataset", () => [200, structuredClone(LISTING)]);
  let linted = null;
  routes.set("POST /style_lora/lint", (url, body) => {
    linted = body.captions;
    return [200, { token_limit: 75, min_words: 5, results: body.captions.map(() => ({ tokens: 99,
      issues: [{ level: "info", code: "caption_long", message: "99 tokens" }] })) }];
  });
  const { editor } = captionPipeline("apples_lint");
  await extension.nodeCreated(editor);
  pollFn();
  await editor.styleLoraGallery.ready;
  widget(editor, "suffix").value = "by Someone";
  pollFn();
  const panel = editor.styleLoraPanel;
  await panel.runLint();
  assert.deepEqual(linted, ["a red apple, by Someone", "by Someone", "a green pear on a wooden table, soft light, by Someone"]);
  const item = editor.styleLoraGallery.items[0];
  assert.equal(item.tokens, 99);
  assert.equal(item.lintExact, true);
  assert.deepEqual(item.issues.map((i) => i.code), ["caption_long"]);
});

test("caption gallery: an image's own problem from the listing is a badge on that image only", async () => {
  const listing = structuredClone(LISTING);
  listing.items[2].problems = [{ level: "error", code: "image_too_large",
    message: "c.png is too large: 30000x30000 pixels. Resize it." }];
  routes.set("GET /style_lora/dataset", () => [200, listing]);
  const { editor } = captionPipeline("apples_problems");
  await extension.nodeCreated(editor);
  pollFn();
  await editor.styleLoraGallery.ready;
  const [a, b, c] = editor.styleLoraGallery.items;
  assert.deepEqual(c.issues.map((i) => i.code), ["image_too_large"]);
  assert.ok(!a.issues.some((i) => i.code.startsWith("image_")) && !b.issues.some((i) => i.code.startsWith("image_")));
  assert.match(editor.styleLoraPanel.statusEl?.textContent ?? editor.styleLoraGallery.statusEl.textContent,
    /3 with issues/);
});

test("caption gallery: the server's error for a missing folder is shown, nothing throws", async () => {
  routes.set("GET /style_lora/dataset", () => [404, { error: "Dataset folder /comfy/input/nope does not exist. Create it." }]);
  const { editor, load } = captionPipeline();
  widget(load, "folder").value = "nope";
  await extension.nodeCreated(editor);
  pollFn();
  await editor.styleLoraGallery.ready;
  assert.equal(editor.styleLoraGallery.error, "Dataset folder /comfy/input/nope does not exist. Create it.");
  assert.match(editor.styleLoraPanel.messageEl.textContent, /does not exist/);
  assert.deepEqual(editor.styleLoraGallery.items, []);
  const answer = await editor.styleLoraGallery.save();
  assert.equal(answer.ok, false);
});

test("caption gallery: an unconnected editor explains what to connect", async () => {
  const graph = makeGraph();
  const editor = makeNode(graph, "StyleLoRACaptionEditor", { prefix: "", suffix: "", find: "", replace: "",
    write_back: false, edits: "{}" }, ["dataset", "captions"]);
  await extension.nodeCreated(editor);
  pollFn();
  await editor.styleLoraGallery.ready;
  assert.match(editor.styleLoraGallery.error, /Connect the dataset input/);
});

test("shuffle preview posts the upstream captions and the node's settings", async () => {
  routes.set("GET /style_lora/dataset", () => [200, structuredClone(LISTING)]);
  let body = null;
  routes.set("POST /style_lora/shuffle_preview", (url, b) => {
    body = b;
    return [200, { text: "Caption shuffling: on", examples: [{ original: b.captions[2], shuffles: ["x, y", "x, z"] }] }];
  });
  const { graph, editor } = captionPipeline("apples_shuffle");
  widget(editor, "prefix").value = "applestyle";
  const shuffle = makeNode(graph, "StyleLoRAShuffleCaption", { enabled: true, separator: ",", keep_tokens: 1, seed: 7,
    preview_count: 2 }, ["dataset"]);
  connect(graph, editor, shuffle, "dataset");
  await extension.nodeCreated(shuffle);
  await shuffle.styleLoraShuffle.refresh();
  assert.deepEqual(body, { captions: ["applestyle, a red apple", "applestyle",
    "applestyle, a green pear on a wooden table, soft light"], enabled: true, separator: ",", keep_tokens: 1, seed: 7, count: 2 });
  assert.equal(shuffle.styleLoraShuffle.examples.length, 1);
  assert.equal(shuffle.styleLoraShuffle.error, null);
  routes.set("POST /style_lora/shuffle_preview", () => [400, { error: "Cannot use these shuffle settings: bad" }]);
  await shuffle.styleLoraShuffle.refresh();
  assert.match(shuffle.styleLoraShuffle.error, /Cannot use these shuffle settings/);
});

test("training panel: server history after a reload, then live events for this node only", async () => {
  const graph = makeGraph();
  const train = makeNode(graph, "StyleLoRATrain", { epochs: 2 }, ["dataset"]);
  routes.set("GET /style_lora/training", (url) => [200, { node: url.searchParams.get("node"), run: "r1", state: "running",
    message: "", total_steps: 8, num_epochs: 2, steps_per_epoch: 4, start_step: 0, eta_seconds: 30,
    points: [1, 2, 3].map((s) => ({ step: s, epoch: 1, loss: 0.3, lr: 1, dlr: 1e-4 })), epochs: [] }]);
  await extension.nodeCreated(train);
  const chart = train.styleLoraChart;
  assert.ok(chart, "node.styleLoraChart");
  await chart.refresh();
  assert.equal(requests.filter((r) => r.path === "/style_lora/training").at(-1).query.node, String(train.id));
  assert.deepEqual(chart.points.map((p) => p.step), [1, 2, 3]);
  assert.equal(chart.state, "running");
  const send = (name, detail) => eventListeners[`style_lora.${name}`].forEach((fn) => fn({ detail }));
  send("train_step", { node: String(train.id), run: "r1", epoch: 1, num_epochs: 2, step: 3, total_steps: 8, loss: 0.3, lr: 1, dlr: 1e-4, eta_seconds: 25 });
  send("train_step", { node: String(train.id), run: "r1", epoch: 1, num_epochs: 2, step: 4, total_steps: 8, loss: 0.2, lr: 1, dlr: 2e-4, eta_seconds: 20 });
  send("train_step", { node: String(train.id + 100), run: "zz", epoch: 1, num_epochs: 2, step: 5, total_steps: 8, loss: 0.2, lr: 1, dlr: 2e-4, eta_seconds: 20 });
  send("train_epoch", { node: String(train.id), run: "r1", epoch: 1, num_epochs: 2, step: 4, file: "x-000001.safetensors", mean_loss: 0.25 });
  assert.deepEqual(chart.points.map((p) => p.step), [1, 2, 3, 4]);
  assert.deepEqual(chart.epochs.map((e) => e.epoch), [1]);
  send("train_end", { node: String(train.id), run: "r1", state: "finished", message: "2 epoch file(s)" });
  assert.equal(chart.state, "finished");
  // A new run on the same node starts a fresh chart.
  send("train_start", { node: String(train.id), run: "r2", total_steps: 8, num_epochs: 2, steps_per_epoch: 4, start_step: 0 });
  assert.deepEqual(chart.points, []);
  assert.equal(chart.run, "r2");
});

test("onExecuted shows the node's text result in a read-only, unsaved widget", async () => {
  const graph = makeGraph();
  const save = makeNode(graph, "StyleLoRASaveEpochs", {}, []);
  const nodeType = { prototype: save };
  await extension.beforeRegisterNodeDef(nodeType, { name: "StyleLoRASaveEpochs" });
  let refreshed = 0;
  app.refreshComboInNodes = async () => { refreshed += 1; };
  save.onExecuted({ text: ["saved x-000001.safetensors", "saved x-000002.safetensors"] });
  assert.equal(refreshed, 1); // new epoch files reach LoraLoader's list without pressing R
  save.onExecuted({});
  assert.equal(refreshed, 1);
  delete app.refreshComboInNodes;
  const result = widget(save, "result");
  assert.equal(result.value, "saved x-000001.safetensors\nsaved x-000002.safetensors");
  assert.equal(result.serialize, false);
  assert.equal(result.options.serialize, false);
  // Not one of ours: untouched.
  const other = { prototype: {} };
  await extension.beforeRegisterNodeDef(other, { name: "KSampler" });
  assert.equal(other.prototype.onExecuted, undefined);
});

// ---------------------------------------------------------------------------------------------
// the poll, loads that overlap, and work that must stop with the node

/** LISTING with no token counts: every non-empty caption still needs POST /style_lora/lint. */
function unlinted() {
  const listing = structuredClone(LISTING);
  for (const item of listing.items) item.tokens = null;
  return listing;
}

test("poll: checks the panels in a graph, forgets (and disposes) those whose node left it", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    routes.set("GET /style_lora/dataset", (url) => {
      const listing = unlinted();
      if (url.searchParams.get("folder") === "apples_poll3") listing.items.pop();
      return [200, listing];
    });
    routes.set("POST /style_lora/lint", (url, body) => [200, { results: body.captions.map(() => ({ tokens: 9, issues: [] })) }]);
    const { graph, editor, load } = captionPipeline("apples_poll");
    await extension.nodeCreated(editor);
    fakeDocument.hidden = true; // a background tab: nothing is checked
    pollFn();
    fakeDocument.hidden = false;
    assert.equal(gets("apples_poll"), 0);
    mock.timers.tick(0); // the panel's first check
    await editor.styleLoraGallery.ready;
    assert.equal(gets("apples_poll"), 1);
    // A changed folder is noticed by the next poll.
    widget(load, "folder").value = "apples_poll2";
    pollFn();
    await editor.styleLoraGallery.ready;
    assert.equal(gets("apples_poll2"), 1);
    assert.equal(editor.styleLoraGallery.items.length, 3);
    // A node not in a graph yet is kept, and checked once it is in one.
    const late = makeNode(graph, "StyleLoRACaptionEditor", { prefix: "", suffix: "", find: "", replace: "",
      write_back: false, edits: "{}" }, ["dataset", "captions"]);
    connect(graph, load, late, "dataset");
    late.graph = null;
    await extension.nodeCreated(late);
    pollFn();
    late.graph = graph;
    pollFn();
    await late.styleLoraGallery.ready;
    assert.equal(late.styleLoraGallery.items.length, 3);
    // The node leaves its graph without onRemoved (a workflow closed or reloaded): the next poll
    // disposes of its panel (pending lint cancelled) and forgets it (no more checks).
    await flush();
    mock.timers.tick(1000); // the lint of the listing
    await flush();
    const lints = posts("/style_lora/lint");
    editor.styleLoraGallery.setCaption("a.png", "a caption typed just before the workflow closed");
    editor.graph = null;
    pollFn();
    mock.timers.tick(5000);
    await flush();
    assert.equal(posts("/style_lora/lint"), lints);
    editor.graph = graph;
    widget(load, "folder").value = "apples_poll3";
    pollFn();
    await flush();
    await late.styleLoraGallery.ready;
    assert.equal(late.styleLoraGallery.items.length, 2); // the other gallery on this folder follows it
    assert.equal(editor.styleLoraGallery.items.length, 3); // the forgotten one is not checked any more
    assert.match(editor.styleLoraGallery.status, /^3 image/);
  } finally {
    mock.timers.reset();
  }
});

test("caption gallery: a load that ends early after a slow one does not stay on 'Loading…'", async () => {
  routes.set("GET /style_lora/dataset", () => [200, structuredClone(LISTING)]);
  const fetchApi = api.fetchApi;
  let release = null;
  api.fetchApi = async (path, init) => {
    if (path.includes("folder=apples_slow")) await new Promise((resolve) => { release = resolve; });
    return fetchApi(path, init);
  };
  try {
    const { editor, load } = captionPipeline("apples_slow");
    await extension.nodeCreated(editor);
    const gallery = editor.styleLoraGallery;
    pollFn();
    const slow = gallery.ready;
    assert.match(gallery.status, /^Loading apples_slow/);
    widget(load, "folder").value = ""; // cleared while the listing is on its way
    pollFn();
    await gallery.ready;
    assert.match(gallery.error, /no folder yet/);
    assert.equal(gallery.status, "");
    assert.equal(editor.styleLoraPanel.loading, false);
    release(); // the superseded answer arrives: it changes nothing
    await slow;
    assert.equal(gallery.status, "");
    assert.match(gallery.error, /no folder yet/);
    // The same after a disconnected dataset input.
    widget(load, "folder").value = "apples_slow2";
    pollFn();
    const slow2 = gallery.ready;
    assert.match(gallery.status, /^Loading apples_slow2/);
    editor.inputs.find((i) => i.name === "dataset").link = null;
    pollFn();
    await gallery.ready;
    assert.match(gallery.error, /Connect the dataset input/);
    assert.equal(gallery.status, "");
    release();
    await slow2;
    assert.equal(gallery.status, "");
    assert.equal(editor.styleLoraPanel.loading, false);
  } finally {
    api.fetchApi = fetchApi;
  }
});

test("caption gallery: saving reloads the other galleries of the same folder", async () => {
  const saved = structuredClone(LISTING);
  routes.set("GET /style_lora/dataset", (url) => [200, structuredClone(url.searchParams.get("folder") === "apples_two" ? saved : LISTING)]);
  routes.set("POST /style_lora/captions", (url, body) => {
    saved.items[0].caption = body.captions["a.png"];
    return [200, { written: ["a.txt"], unchanged: [] }];
  });
  const { graph, load, editor } = captionPipeline("apples_two");
  const twin = makeNode(graph, "StyleLoRACaptionEditor", { prefix: "", suffix: "", find: "", replace: "",
    write_back: false, edits: "{}" }, ["dataset", "captions"]);
  connect(graph, load, twin, "dataset");
  const other = captionPipeline("apples_elsewhere").editor;
  for (const node of [editor, twin, other]) await extension.nodeCreated(node);
  pollFn();
  await Promise.all([editor, twin, other].map((n) => n.styleLoraGallery.ready));
  assert.equal(twin.styleLoraGallery.captions["a.png"], "a red apple");
  const elsewhere = gets("apples_elsewhere");
  editor.styleLoraGallery.setCaption("a.png", "A glossy red apple with droplets of water, nestled among green leaves");
  assert.equal((await editor.styleLoraGallery.save()).ok, true);
  await twin.styleLoraGallery.ready;
  assert.equal(twin.styleLoraGallery.captions["a.png"], "A glossy red apple with droplets of water, nestled among green leaves");
  assert.equal(gets("apples_elsewhere"), elsewhere); // another folder: not read again
});

test("caption gallery: a lint answer arriving after the node was removed asks nothing more", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    routes.set("GET /style_lora/dataset", () => [200, unlinted()]);
    // One caption is left unanswered (as if edited while the request was in flight): a live
    // gallery asks again, a removed one must not.
    let partial = true;
    routes.set("POST /style_lora/lint", (url, body) => {
      const answered = partial ? body.captions.slice(0, -1) : body.captions;
      partial = false;
      return [200, { results: answered.map(() => ({ tokens: 9, issues: [] })) }];
    });
    const { editor } = captionPipeline("apples_removed");
    await extension.nodeCreated(editor);
    pollFn();
    await editor.styleLoraGallery.ready;
    const before = posts("/style_lora/lint");
    const inFlight = editor.styleLoraPanel.runLint();
    assert.equal(posts("/style_lora/lint"), before + 1);
    editor.onRemoved();
    await inFlight;
    mock.timers.tick(60000);
    await flush();
    assert.equal(posts("/style_lora/lint"), before + 1);
  } finally {
    mock.timers.reset();
  }
});

test("caption gallery: a failed lint is tried again about 10 s later (and not after removal)", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  let fail = true;
  try {
    routes.set("GET /style_lora/dataset", () => [200, unlinted()]);
    routes.set("POST /style_lora/lint", (url, body) => (fail ? [500, { error: "tokenizer busy" }]
      : [200, { results: body.captions.map(() => ({ tokens: 9, issues: [] })) }]));
    const { editor } = captionPipeline("apples_retry");
    await extension.nodeCreated(editor);
    pollFn();
    await editor.styleLoraGallery.ready;
    const before = posts("/style_lora/lint");
    mock.timers.tick(1000); // the debounced lint: it fails
    await flush();
    assert.equal(posts("/style_lora/lint"), before + 1);
    assert.equal(editor.styleLoraGallery.items[0].lintExact, false);
    fail = false;
    mock.timers.tick(5000); // backing off
    await flush();
    assert.equal(posts("/style_lora/lint"), before + 1);
    mock.timers.tick(6000); // the retry
    await flush();
    assert.equal(posts("/style_lora/lint"), before + 2);
    assert.equal(editor.styleLoraGallery.items[0].lintExact, true);
    assert.equal(editor.styleLoraGallery.items[0].tokens, 9);
    // A failure, then the node is removed: no retry.
    fail = true;
    editor.styleLoraGallery.setCaption("a.png", "a caption the server could not lint");
    mock.timers.tick(1000);
    await flush();
    assert.equal(posts("/style_lora/lint"), before + 3);
    editor.onRemoved();
    mock.timers.tick(60000);
    await flush();
    assert.equal(posts("/style_lora/lint"), before + 3);
  } finally {
    fail = false; // a later lint of any gallery succeeds
    mock.timers.reset();
  }
});

test("shuffle preview: an error drops the previous answer's caption count and note", async () => {
  routes.set("GET /style_lora/dataset", () => [200, structuredClone(LISTING)]);
  routes.set("POST /style_lora/shuffle_preview", (url, b) => [200, { text: "on",
    examples: [{ original: b.captions[0], shuffles: [b.captions[0]] }] }]);
  const { graph, load, editor } = captionPipeline("apples_shuffle_error");
  connect(graph, load, editor, "captions"); // an upstream editor's captions come from its input
  const shuffle = makeNode(graph, "StyleLoRAShuffleCaption", { enabled: true, separator: ",", keep_tokens: 1, seed: 7,
    preview_count: 1 }, ["dataset"]);
  connect(graph, editor, shuffle, "dataset");
  await extension.nodeCreated(shuffle);
  await shuffle.styleLoraShuffle.refresh();
  const list = shuffle.styleLoraPanel.list;
  assert.match(list.textContent, /… and 2 more caption\(s\)\./);
  assert.match(list.textContent, /come from its captions input/);
  widget(shuffle, "separator").value = "";
  await shuffle.styleLoraShuffle.refresh();
  assert.match(shuffle.styleLoraShuffle.error, /separator cannot be empty/);
  assert.equal(list.textContent, "");
  // Also when the server answers with an error.
  widget(shuffle, "separator").value = ",";
  await shuffle.styleLoraShuffle.refresh();
  assert.match(list.textContent, /more caption/);
  routes.set("POST /style_lora/shuffle_preview", () => [400, { error: "Cannot use these shuffle settings: bad" }]);
  await shuffle.styleLoraShuffle.refresh();
  assert.equal(list.textContent, "");
});

// ---------------------------------------------------------------------------------------------
// issue 9: validation losses and samples in the Train LoRA panel, the grid picker

const viewImage = (name) => ({ filename: name, subfolder: "style_lora", type: "temp" });
const sendEvent = (name, detail) => eventListeners[CONTRACT.events[name]].forEach((fn) => fn({ detail }));
const sampleRowsIn = (node) => node.styleLoraChart.strip.querySelectorAll((e) => e.className === "slt-sample-row");

test("training panel: validation losses and the sample strip, from the snapshot and then live", async () => {
  const graph = makeGraph();
  const train = makeNode(graph, "StyleLoRATrain", { epochs: 3 }, ["dataset"]);
  routes.set("GET /style_lora/training", (url) => [200, { node: url.searchParams.get("node"), run: "v1", state: "running",
    message: "", total_steps: 12, num_epochs: 3, steps_per_epoch: 4, start_step: 0, eta_seconds: 30,
    points: [1, 2, 3, 4].map((s) => ({ step: s, epoch: 1, loss: 0.3, lr: 1, dlr: 1e-4 })),
    epochs: [{ epoch: 1, step: 4, file: "x-000001.safetensors", mean_loss: 0.3, validation_loss: 0.2 }],
    validation: [{ epoch: 0, step: 0, loss: 0.25 }, { epoch: 1, step: 4, loss: 0.2 }], validation_source: "held out (4 images)",
    samples: [{ epoch: 0, seconds: 2, prompts: ["a cat"], cells: [{ weight: null, images: [viewImage("base.png")] }] }] }]);
  await extension.nodeCreated(train);
  const chart = train.styleLoraChart;
  const panelWidget = widget(train, CONTRACT.panels.StyleLoRATrain.widget);
  assert.equal(panelWidget.options.getMinHeight(), CONTRACT.panels.StyleLoRATrain.panel_height); // no samples yet
  await chart.refresh();
  train.styleLoraPanel.paint();
  assert.deepEqual(chart.validation.map((v) => [v.epoch, v.step, v.loss]), [[0, 0, 0.25], [1, 4, 0.2]]);
  assert.match(chart.header, /val 0\.2000/);
  assert.match(train.styleLoraPanel.headerEl.title, /validation loss on held out \(4 images\)$/);
  let rows = sampleRowsIn(train);
  assert.equal(rows.length, 1);
  assert.match(rows[0].textContent, /^base/);
  const baseImg = rows[0].querySelectorAll((e) => e.tagName === "IMG")[0];
  assert.equal(baseImg.attributes.src, "/api/view?filename=base.png&subfolder=style_lora&type=temp");
  const oneRow = panelWidget.options.getMinHeight();
  assert.ok(oneRow > CONTRACT.panels.StyleLoRATrain.panel_height); // the panel grows for the strip
  // Live: epoch 2's validation loss and samples (two weights, two prompts × one image each).
  sendEvent("train_validation", { node: String(train.id), run: "v1", epoch: 2, step: 8, validation_loss: 0.18,
    source: "training images (8 images)" });
  sendEvent("train_sample", { node: String(train.id), run: "v1", epoch: 2, seconds: 5.5, prompts: ["a cat", "a house"],
    cells: [{ weight: 0.8, images: [viewImage("e2-a.png"), viewImage("e2-b.png")] },
      { weight: 1, images: [viewImage("e2-c.png"), viewImage("e2-d.png")] }] });
  sendEvent("train_sample", { node: String(train.id + 100), run: "zz", epoch: 3, seconds: 1, prompts: [],
    cells: [{ weight: 1, images: [viewImage("other.png")] }] }); // another node's: ignored
  assert.deepEqual(chart.validation.map((v) => v.epoch), [0, 1, 2]);
  train.styleLoraPanel.paint();
  rows = sampleRowsIn(train);
  assert.deepEqual(rows.map((r) => r.querySelectorAll((e) => e.className === "slt-sample-label")[0].textContent),
    ["epoch 2", "base"]); // newest first
  const weights = rows[0].querySelectorAll((e) => e.className === "slt-sample-weight").map((e) => e.textContent);
  assert.deepEqual(weights, ["w 0.8", "w 1.0"]);
  const imgs = rows[0].querySelectorAll((e) => e.tagName === "IMG");
  assert.deepEqual(imgs.map((i) => i.attributes.src.match(/filename=([^&]+)/)[1]), ["e2-a.png", "e2-b.png", "e2-c.png", "e2-d.png"]);
  assert.equal(imgs[1].attributes.alt, "epoch 2, w 0.8: a house");
  assert.ok(panelWidget.options.getMinHeight() > oneRow);
  // A new run clears both.
  sendEvent("train_start", { node: String(train.id), run: "v2", total_steps: 12, num_epochs: 3, steps_per_epoch: 4, start_step: 0 });
  train.styleLoraPanel.paint();
  assert.deepEqual(chart.validation, []);
  assert.deepEqual(chart.samples, []);
  assert.equal(sampleRowsIn(train).length, 0);
  assert.equal(chart.strip.style.cssText, "display: none;");
});

function gridLayout() {
  const weights = [0.8, 1];
  const epochs = [2, 1];
  return { image: { filename: "style_lora_grid_00001_.png", subfolder: "", type: "temp" }, epochs, weights,
    width: 520, height: 430, best_epoch: 2, table: { rows: [] },
    cells: epochs.map((_, r) => weights.map((__, c) => [100 + c * 210, 20 + r * 210, 300 + c * 210, 220 + r * 210])) };
}

function gridPipeline() {
  const graph = makeGraph();
  const grid = makeNode(graph, "StyleLoRAEpochWeightGrid", { weights: "0.8, 1.0" }, ["model"], ["grid", "table"]);
  const pick = makeNode(graph, "StyleLoRAPickEpoch", { rule: "lowest validation loss", epoch: 1, weight: 1 },
    ["table", "epochs", "lora_name", "model", "clip"]);
  const other = makeNode(graph, "StyleLoRAPickEpoch", { rule: "lowest validation loss", epoch: 1, weight: 1 }, ["table"]);
  connect(graph, grid, pick, "table", 1);
  return { graph, grid, pick, other };
}

test("grid picker: the executed grid is shown; a click sets the linked Pick Epoch nodes' widgets", async () => {
  const { grid, pick, other } = gridPipeline();
  const gridType = { prototype: grid };
  await extension.beforeRegisterNodeDef(gridType, { name: "StyleLoRAEpochWeightGrid" });
  await extension.nodeCreated(grid);
  await extension.nodeCreated(pick);
  const picker = grid.styleLoraPicker;
  assert.ok(picker, "node.styleLoraPicker");
  const panelWidget = widget(grid, CONTRACT.panels.StyleLoRAEpochWeightGrid.widget);
  assert.equal(panelWidget.options.getMinHeight(), CONTRACT.panels.StyleLoRAEpochWeightGrid.panel_height);
  assert.equal(panelWidget.serialize, false);
  assert.match(picker.status, /Queue the workflow/);
  grid.onExecuted({ style_lora_grid: [gridLayout()] });
  assert.equal(picker.image, "/api/view?filename=style_lora_grid_00001_.png&subfolder=&type=temp");
  // The pick node uses the lowest validation loss: the best epoch at its weight is marked.
  assert.deepEqual([picker.shown.kind, picker.shown.epoch, picker.shown.weight], ["best", 2, 1]);
  // A click on the image, shown at half size: grid pixel (420, 300) is epoch 1 at weight 1.0.
  let dirty = 0;
  const changes = [];
  const setDirty = app.graph.setDirtyCanvas;
  app.graph.setDirtyCanvas = () => { dirty += 1; };
  // The frontend's change tracker must see the pick (undo, the workflow kept across a reload).
  app.canvas.emitBeforeChange = () => changes.push(["before", widget(pick, "rule").value]);
  app.canvas.emitAfterChange = () => changes.push(["after", widget(pick, "rule").value]);
  try {
    const img = grid.styleLoraPanel.img;
    img.getBoundingClientRect = () => ({ left: 10, top: 40, width: 260, height: 215 });
    img.dispatch("click", { clientX: 10 + 420 / 2, clientY: 40 + 300 / 2 });
  } finally {
    app.graph.setDirtyCanvas = setDirty;
    delete app.canvas.emitBeforeChange;
    delete app.canvas.emitAfterChange;
  }
  assert.ok(dirty > 0);
  assert.deepEqual(changes, [["before", "lowest validation loss"], ["after", "chosen cell"]]);
  assert.deepEqual([widget(pick, "rule").value, widget(pick, "epoch").value, widget(pick, "weight").value],
    ["chosen cell", 1, 1]);
  assert.equal(widget(other, "rule").value, "lowest validation loss"); // not linked to this grid
  assert.deepEqual([picker.shown.kind, picker.shown.row, picker.shown.col], ["chosen", 1, 1]);
  assert.match(picker.status, /^Picked epoch 1 at weight 1\.0 \(1 Pick Epoch node\)/);
  const mark = grid.styleLoraPanel.mark;
  assert.match(mark.style.cssText, /^left: 59\.6153\d*%; top: 53\.4883\d*%;/);
  assert.equal(mark.className, "slt-grid-mark slt-chosen");
  // A click on a row label picks nothing.
  assert.equal(picker.pickAt(50, 100), null);
  assert.equal(widget(pick, "epoch").value, 1);
  // The pick node edited by hand: the next poll moves the highlight.
  widget(pick, "epoch").value = 2;
  widget(pick, "weight").value = 0.8;
  pollFn();
  assert.deepEqual([picker.shown.row, picker.shown.col], [0, 0]);
  // The grid's execution without a layout (an older node) changes nothing.
  grid.onExecuted({ text: ["done"] });
  assert.equal(picker.layout.epochs.length, 2);
});

test("grid picker: re-entering a workflow highlights the pick node's cell from the kept output", async () => {
  const { grid, pick } = gridPipeline();
  widget(pick, "rule").value = "chosen cell";
  widget(pick, "epoch").value = 2;
  widget(pick, "weight").value = 1;
  app.nodeOutputs = { [String(grid.id)]: { style_lora_grid: [gridLayout()] } };
  try {
    await extension.nodeCreated(grid);
    await settle(); // the panel's first check
    const picker = grid.styleLoraPicker;
    assert.equal(picker.layout?.best_epoch, 2);
    assert.deepEqual([picker.shown.kind, picker.shown.epoch, picker.shown.weight], ["chosen", 2, 1]);
    // Unlinked: nothing to set, and the status says how to connect it.
    grid.outputs[1].links = [];
    pollFn();
    assert.equal(picker.shown, null);
    assert.match(picker.status, /Connect the table output to a Pick Epoch node/);
  } finally {
    delete app.nodeOutputs;
  }
});

// ---------------------------------------------------------------------------------------------
// issue 11: the pre-flight plan in the Train LoRA panel, before Queue

test("training panel: the plan is asked for once settings settle, shown, and measured on a click", async () => {
  mock.timers.enable({ apis: ["setTimeout"] });
  try {
    const planText = (measured) => `Pre-flight plan\n  40 images x 10 repeats = 400 per epoch; batch 4 -> 100 steps per ` +
      `epoch, 2000 steps in 20 epochs\n  [!!] repeats 10${measured ? "\n  memory on cuda: about 7.00 GiB at its peak" : ""}`;
    routes.set("POST /style_lora/plan", (url, body) => [200, { text: planText(body.measure), measured: body.measure,
      checkpoint: body.checkpoint, fits: body.measure ? true : null }]);
    routes.set("GET /style_lora/training", (url) => [200, { node: url.searchParams.get("node"), run: null, state: "idle",
      message: "", points: [], epochs: [], validation: [], samples: [] }]);
    const graph = makeGraph();
    const ckpt = makeNode(graph, "CheckpointLoaderSimple", { ckpt_name: "sd15.safetensors" }, [], ["MODEL", "CLIP", "VAE"]);
    const load = makeNode(graph, "StyleLoRALoadDataset", { folder: "plan_ds", repeats: 10 }, [], ["dataset"]);
    const train = makeNode(graph, "StyleLoRATrain", { rank: 32, epochs: 20 }, ["model", "dataset"], ["run"]);
    connect(graph, ckpt, train, "model");
    connect(graph, load, train, "dataset");
    await extension.nodeCreated(train);
    const before = posts("/style_lora/plan");
    pollFn();
    widget(load, "repeats").value = 12; // typing: one request after the debounce, not one per change
    pollFn();
    assert.equal(posts("/style_lora/plan"), before);
    console.log("DEBUG", train.styleLoraPanel.planKey, train.styleLoraPanel.seenInGraph, typeof train.styleLoraPanel.checkPlan, train.styleLoraPanel.constructor.name);
    mock.timers.tick(1000);
    await train.styleLoraChart.planReady;
    assert.equal(posts("/style_lora/plan"), before + 1);
    const sent = requests.filter((r) => r.path === "/style_lora/plan").at(-1).body;
    assert.deepEqual([sent.load_dataset, sent.train_lora, sent.checkpoint, sent.measure],
      [{ folder: "plan_ds", repeats: 12 }, { rank: 32, epochs: 20 }, "sd15.safetensors", false]);
    assert.match(train.styleLoraChart.planText, /100 steps per epoch/);
    const warn = train.styleLoraPanel.planText.querySelectorAll((e) => e.className.includes("slt-plan-warn"));
    assert.deepEqual(warn.map((e) => e.textContent), ["[!!] repeats 10"]);
    const button = train.styleLoraPanel.measureButton;
    assert.equal(button.textContent, "Measure memory & time");
    button.dispatch("click");
    await flush();
    await train.styleLoraChart.planReady;
    await flush();
    assert.equal(requests.filter((r) => r.path === "/style_lora/plan").at(-1).body.measure, true);
    assert.match(train.styleLoraChart.planText, /about 7\.00 GiB at its peak/);
    assert.equal(button.textContent, "Measure again");
    // A refused measurement (a prompt is running) keeps the plan and says why.
    routes.set("POST /style_lora/plan", () => [409, { error: "1 prompt(s) are queued or running" }]);
    button.dispatch("click");
    await flush();
    await train.styleLoraChart.planReady;
    await flush();
    assert.match(train.styleLoraChart.planText, /about 7\.00 GiB[\s\S]*1 prompt\(s\) are queued or running$/);
    // Disconnecting the dataset: the panel says what to connect, without asking the server.
    const asked = posts("/style_lora/plan");
    train.inputs.find((i) => i.name === "dataset").link = null;
    pollFn();
    mock.timers.tick(1000);
    await flush();
    assert.equal(posts("/style_lora/plan"), asked);
    assert.match(train.styleLoraChart.planText, /Connect the dataset input to a Load Dataset node/);
    train.onRemoved();
  } finally {
    mock.timers.reset();
  }
});

// Last: a second copy of the entry (as if the frontend loaded the extension again) must not link
// the stylesheet again. Its setup adds a second set of event listeners, so no test may follow.
test("the stylesheet link is added once, even by a second setup", async () => {
  const first = extension;
  await import(`../../js/style_lora_trainer.js?again=${Date.now()}`);
  assert.notEqual(extension, first);
  const realSetInterval = globalThis.setInterval;
  globalThis.setInterval = () => 0;
  try {
    await extension.setup();
    await first.setup();
  } finally {
    globalThis.setInterval = realSetInterval;
  }
  assert.equal(stylesheetLinks().length, 1);
  assert.equal(fakeDocument.head.querySelectorAll((e) => e.tagName === "STYLE").length, 1);
  assert.equal(stylesheetLinks()[0].attributes.href, STYLESHEET_URL);
});
