// js/lib/dom.js: the helpers that need no real DOM, and the stylesheet/style links with a tiny fake
// document (the extension's own test drives the rest with a fuller one).
import { after, before, test } from "node:test";
import assert from "node:assert/strict";

import {
  addStyle,
  addStylesheet,
  addUnsavedWidget,
  debounce,
  ensureWidth,
  growToMinHeight,
  hookWidgetCallbacks,
  markDirty,
  recordChange,
} from "../../js/lib/dom.js";

class FakeElement {
  constructor(tag) {
    this.tagName = tag.toUpperCase();
    this.attributes = {};
    this.textContent = "";
  }
  setAttribute(name, value) {
    this.attributes[name] = String(value);
  }
}
const head = { children: [], append(child) { this.children.push(child); } };

before(() => {
  globalThis.document = {
    head,
    createElement: (tag) => new FakeElement(tag),
    getElementById: (id) => head.children.find((c) => c.attributes.id === id) ?? null,
  };
});
after(() => {
  delete globalThis.document;
});

test("addStylesheet and addStyle add their element once per id", () => {
  const href = new URL("./style_lora_trainer.css", "http://comfy.local/extensions/pack/style_lora_trainer.js");
  const link = addStylesheet("sheet", href);
  assert.deepEqual(link.attributes, { id: "sheet", rel: "stylesheet", href: "http://comfy.local/extensions/pack/style_lora_trainer.css" });
  assert.equal(addStylesheet("sheet", href), null);
  assert.equal(addStylesheet("sheet", "elsewhere.css"), null);
  const style = addStyle("colours", ":root {}");
  assert.equal(style.tagName, "STYLE");
  assert.equal(style.textContent, ":root {}");
  assert.equal(addStyle("colours", ":root { --x: 1; }"), null);
  assert.deepEqual(head.children.map((c) => c.tagName), ["LINK", "STYLE"]);
});

test("ensureWidth only grows; growToMinHeight grows to computeSize's height", () => {
  const node = { size: [300, 200], setSize(size) { this.size = size; }, computeSize: () => [10, 260] };
  ensureWidth(node, 460, 0);
  assert.deepEqual(node.size, [460, 200]);
  ensureWidth(node, 100, 640);
  assert.deepEqual(node.size, [460, 640]);
  ensureWidth({ size: null }, 460, 640); // a node without a size yet: nothing to do
  node.size = [460, 100];
  growToMinHeight(node);
  assert.deepEqual(node.size, [460, 260]);
  growToMinHeight(node);
  assert.deepEqual(node.size, [460, 260]);
});

test("addUnsavedWidget: neither an input nor saved; its min height as given", () => {
  const node = { addDOMWidget: (name, type, element, options) => ({ name, type, element, options }) };
  const widget = addUnsavedWidget(node, "result", "style_lora_result", {}, { minHeight: 70 });
  assert.equal(widget.serialize, false);
  assert.equal(widget.options.serialize, false);
  assert.equal(widget.options.hideOnZoom, true);
  assert.equal(widget.options.getMinHeight(), 70);
  assert.equal(widget.options.getValue(), "");
});

test("hookWidgetCallbacks runs the widget's own callback first; markDirty marks node and graph", () => {
  const order = [];
  const node = { widgets: [{ name: "prefix", callback: (v) => order.push(`own ${v}`) }, { name: "seed" }],
    setDirtyCanvas: () => order.push("node dirty") };
  hookWidgetCallbacks(node, ["prefix", "seed", "absent"], () => order.push("hook"));
  node.widgets[0].callback("x");
  node.widgets[1].callback();
  markDirty(node, { graph: { setDirtyCanvas: () => order.push("graph dirty") } });
  markDirty(node, {});
  assert.deepEqual(order, ["own x", "hook", "hook", "node dirty", "graph dirty", "node dirty"]);
});

test("debounce runs once after the calls stop, cancel drops it", (t) => {
  t.mock.timers.enable({ apis: ["setTimeout"] });
  const calls = [];
  const fn = debounce((v) => calls.push(v), 100);
  fn(1);
  t.mock.timers.tick(50);
  fn(2);
  t.mock.timers.tick(99);
  assert.deepEqual(calls, []);
  t.mock.timers.tick(1);
  assert.deepEqual(calls, [2]);
  fn(3);
  fn.cancel();
  t.mock.timers.tick(1000);
  assert.deepEqual(calls, [2]);
});

test("recordChange wraps a change in the canvas's before/after pair (the graph's on older frontends)", () => {
  const order = [];
  const canvas = { emitBeforeChange: () => order.push("before"), emitAfterChange: () => order.push("after") };
  assert.equal(recordChange({ canvas }, () => { order.push("change"); return 7; }), 7);
  assert.throws(() => recordChange({ canvas }, () => { order.push("fails"); throw new Error("x"); }), /x/);
  const graph = { beforeChange: () => order.push("graph before"), afterChange: () => order.push("graph after") };
  recordChange({ canvas: {}, graph }, () => order.push("old"));
  recordChange({}, () => order.push("no app parts"));
  assert.deepEqual(order, ["before", "change", "after", "before", "fails", "after", "graph before", "old",
    "graph after", "no app parts"]);
});
