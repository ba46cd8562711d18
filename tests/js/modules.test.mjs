// ComfyUI imports every .js file under the pack's js/ folder (WEB_DIRECTORY) as an extension
// module, so every module but the entry (js/style_lora_trainer.js) must import nothing from
// ComfyUI and do nothing on import: no extension registered, no DOM touched, no timer started.
// The entry reaches ComfyUI only through ../../scripts/app.js and ../../scripts/api.js, and hands
// app/api to the panels (js/panels/*.js) instead of them importing it from a deeper folder.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const JS = new URL("../../js/", import.meta.url);
const ENTRY = "style_lora_trainer.js";

/** Every file under js/ whose name ends with ``ext``, as paths relative to js/ ("lib/x.js"), sorted. */
function filesUnderJs(ext) {
  return readdirSync(JS, { recursive: true }).map((f) => f.split("\\").join("/")).filter((f) => f.endsWith(ext)).sort();
}
const jsFiles = filesUnderJs(".js");
const modules = jsFiles.filter((f) => f !== ENTRY);

function importsOf(source) {
  const out = [];
  const pattern = /import\s*(?:\{([^}]*)\}\s*from\s*)?(?:[\w*\s]+from\s*)?["']([^"']+)["']\s*(with\s*\{[^}]*\})?/g;
  for (const m of source.matchAll(pattern)) {
    const names = (m[1] ?? "").split(",").map((s) => s.trim().split(/\s+as\s+/)[0]).filter(Boolean);
    out.push({ names, from: m[2], attributes: (m[3] ?? "").replace(/\s+/g, " ") });
  }
  return out;
}

test("js/ has the entry, the lib modules, the panels, the stylesheet and the contract", () => {
  for (const name of ["captions.js", "chart.js", "colours.js", "graph.js", "history.js", "lint.js", "dom.js", "api.js",
    "registry.js", "samples.js", "picker.js"]) {
    assert.ok(jsFiles.includes(`lib/${name}`), name);
  }
  for (const name of ["caption_gallery.js", "shuffle_preview.js", "training_chart.js", "result_text.js", "grid_picker.js"]) {
    assert.ok(jsFiles.includes(`panels/${name}`), name);
  }
  assert.ok(jsFiles.includes(ENTRY));
  assert.ok(existsSync(new URL("style_lora_trainer.css", JS)));
  assert.ok(existsSync(new URL("lib/contract.json", JS)));
});

test("modules other than the entry import only files under js/, nothing from ComfyUI, and register nothing", () => {
  for (const file of modules) {
    const url = new URL(file, JS);
    const source = readFileSync(url, "utf8");
    for (const { from, attributes } of importsOf(source)) {
      assert.match(from, /^\.\.?\/[a-z_/.]+\.(js|json)$/, `${file} imports ${from}`);
      const target = new URL(from, url);
      assert.ok(target.href.startsWith(JS.href), `${file} imports ${from}, outside js/`);
      assert.ok(existsSync(target), `${file} imports missing ${from}`);
      if (from.endsWith(".json")) assert.equal(attributes, 'with { type: "json" }', `${file}: ${from}`);
    }
    assert.doesNotMatch(source, /scripts\/(app|api)\.js/, file);
    assert.doesNotMatch(source, /registerExtension/, file);
    assert.doesNotMatch(source, /\bimport\s*\(/, `${file}: no dynamic import`);
  }
});

test("importing any module other than the entry registers nothing and touches no DOM, timer or browser global", async () => {
  // Run with none of the browser's or ComfyUI's globals defined: any read of one, or any timer
  // started, from code in js/ while the modules are imported is recorded (and would also throw
  // in the case of a missing global, failing the import).
  const jsDir = fileURLToPath(JS);
  const touched = [];
  const fromOurCode = () => (new Error().stack ?? "").includes(jsDir);
  const absent = ["document", "window", "Node", "app", "api", "LiteGraph", "LGraphCanvas", "ResizeObserver",
    "requestAnimationFrame", "devicePixelRatio", "localStorage", "fetch"];
  const saved = new Map();
  for (const name of absent) {
    saved.set(name, Object.getOwnPropertyDescriptor(globalThis, name));
    Object.defineProperty(globalThis, name, { configurable: true, get() {
      if (fromOurCode()) touched.push(name);
      return undefined;
    } });
  }
  for (const name of ["setTimeout", "setInterval", "queueMicrotask", "addEventListener"]) {
    const original = globalThis[name];
    saved.set(name, Object.getOwnPropertyDescriptor(globalThis, name));
    globalThis[name] = function (...args) {
      if (fromOurCode()) touched.push(name);
      return original?.apply(this, args);
    };
  }
  try {
    for (const file of modules) {
      const module = await import(new URL(file, JS));
      assert.ok(Object.keys(module).length > 0, `${file} exports nothing`);
      assert.deepEqual(touched, [], `${file} used ${touched.join(", ")} on import`);
    }
  } finally {
    for (const [name, descriptor] of saved) {
      if (descriptor) Object.defineProperty(globalThis, name, descriptor);
      else delete globalThis[name];
    }
  }
  assert.equal(globalThis.document, undefined);
});

test("the entry imports ComfyUI's app and api, and existing exports of modules under js/ only", async () => {
  const source = readFileSync(new URL(ENTRY, JS), "utf8");
  const imports = importsOf(source);
  const external = imports.filter((i) => !i.from.startsWith("./")).map((i) => i.from).sort();
  assert.deepEqual(external, ["../../scripts/api.js", "../../scripts/app.js"]);
  for (const { names, from, attributes } of imports.filter((i) => i.from.startsWith("./"))) {
    assert.match(from, /^\.\/(lib|panels)\/[a-z_]+\.(js|json)$/, from);
    if (from.endsWith(".json")) {
      assert.equal(attributes, 'with { type: "json" }', from);
      continue;
    }
    const module = await import(new URL(from, JS));
    for (const name of names) assert.ok(name in module, `${from} has no export ${name}`);
  }
  assert.equal(source.match(/registerExtension\(/g)?.length, 1);
  assert.match(source, /new URL\("\.\/style_lora_trainer\.css", import\.meta\.url\)/);
});

test("the panel and lib modules' named imports exist", async () => {
  for (const file of modules) {
    const url = new URL(file, JS);
    for (const { names, from } of importsOf(readFileSync(url, "utf8"))) {
      if (!from.endsWith(".js")) continue;
      const module = await import(new URL(from, url));
      for (const name of names) assert.ok(name in module, `${file}: ${from} has no export ${name}`);
    }
  }
});
