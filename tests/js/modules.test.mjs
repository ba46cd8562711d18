// ComfyUI imports every .js file under the pack's js/ folder as an extension module, so the
// js/lib modules must import nothing from ComfyUI and do nothing on import; the main file must
// reach ComfyUI only through ../../scripts/app.js and ../../scripts/api.js.
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";

const JS = new URL("../../js/", import.meta.url);
const LIB = new URL("lib/", JS);
const libFiles = readdirSync(LIB).filter((f) => f.endsWith(".js")).sort();

function importsOf(source) {
  const out = [];
  for (const m of source.matchAll(/import\s*(?:\{([^}]*)\}\s*from\s*)?(?:[\w*\s]+from\s*)?["']([^"']+)["']/g)) {
    const names = (m[1] ?? "").split(",").map((s) => s.trim().split(/\s+as\s+/)[0]).filter(Boolean);
    out.push({ names, from: m[2] });
  }
  return out;
}

test("js/lib has the expected pure modules", () => {
  for (const name of ["captions.js", "chart.js", "colours.js", "graph.js", "history.js", "lint.js"]) {
    assert.ok(libFiles.includes(name), name);
  }
});

test("js/lib modules import only each other, and nothing touches the DOM on import", async () => {
  assert.equal(globalThis.document, undefined);
  for (const file of libFiles) {
    const source = readFileSync(new URL(file, LIB), "utf8");
    for (const { from } of importsOf(source)) {
      assert.match(from, /^\.\/[a-z_]+\.js$/, `${file} imports ${from}`);
      assert.ok(existsSync(new URL(from, LIB)), `${file} imports missing ${from}`);
    }
    assert.doesNotMatch(source, /scripts\/(app|api)\.js/, file);
    const module = await import(new URL(file, LIB));
    assert.ok(Object.keys(module).length > 0, `${file} exports nothing`);
  }
});

test("the extension imports ComfyUI's app and api and existing lib exports only", async () => {
  const source = readFileSync(new URL("style_lora_trainer.js", JS), "utf8");
  const imports = importsOf(source);
  const external = imports.filter((i) => !i.from.startsWith("./lib/")).map((i) => i.from).sort();
  assert.deepEqual(external, ["../../scripts/api.js", "../../scripts/app.js"]);
  for (const { names, from } of imports.filter((i) => i.from.startsWith("./lib/"))) {
    const module = await import(new URL(from, JS));
    for (const name of names) assert.ok(name in module, `${from} has no export ${name}`);
  }
});
