// js/lib/contract.json is the one source of the facts shared by the Python nodes, the JS panels and
// the workflow generator: the training event names and each panel's widget name and sizes. Its
// shape is fixed here, and no JS file under js/ may spell one of those values itself.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";

import CONTRACT from "../../js/lib/contract.json" with { type: "json" };

const JS = new URL("../../js/", import.meta.url);
const jsFiles = readdirSync(JS, { recursive: true }).map((f) => f.split("\\").join("/")).filter((f) => f.endsWith(".js")).sort();

// Numbers that are a contract size by coincidence, each with what it is.
const ALLOWED_NUMBERS = [
  { file: "panels/caption_gallery.js", value: 150, why: "how many tag chips are shown" },
];

test("contract.json has exactly the agreed shape", () => {
  assert.deepEqual(Object.keys(CONTRACT), ["events", "panels", "result_text"]);
  assert.deepEqual(Object.keys(CONTRACT.events), ["train_start", "train_step", "train_epoch", "train_end",
    "train_validation", "train_sample"]);
  for (const [key, name] of Object.entries(CONTRACT.events)) assert.equal(name, `style_lora.${key}`);
  assert.deepEqual(Object.keys(CONTRACT.panels), ["StyleLoRACaptionEditor", "StyleLoRAShuffleCaption", "StyleLoRATrain",
    "StyleLoRAEpochWeightGrid"]);
  for (const [type, panel] of Object.entries(CONTRACT.panels)) {
    assert.deepEqual(Object.keys(panel), ["widget", "min_width", "min_height", "panel_height"], type);
    assert.match(panel.widget, /^[a-z_]+$/, type);
    for (const key of ["min_width", "min_height", "panel_height"]) assert.ok(Number.isInteger(panel[key]) && panel[key] >= 0, `${type}.${key}`);
  }
  assert.deepEqual(Object.keys(CONTRACT.result_text), ["min_height"]);
  assert.ok(Number.isInteger(CONTRACT.result_text.min_height));
});

test("contract.json is plain JSON as Python's json.dumps(indent=2) writes it", () => {
  const text = readFileSync(new URL("lib/contract.json", JS), "utf8");
  assert.equal(text, `${JSON.stringify(CONTRACT, null, 2)}\n`);
});

/**
 * A JS source split into its string literals, its regex literals and its code with comments and strings blanked out
 * (a small scanner, enough for this pack's sources: template literals with ${…}, regex literals).
 */
function scan(source) {
  const strings = [];
  const regexes = [];
  let code = "";
  let i = 0;
  const braces = []; // for each open ${ of a template literal: the brace depth it started at
  let depth = 0;
  let last = ""; // the last significant code character, to tell a regex from a division
  const readString = (quote) => {
    let text = "";
    i += 1;
    while (i < source.length && source[i] !== quote) {
      if (source[i] === "\\") {
        text += source[i + 1];
        i += 2;
      } else text += source[i++];
    }
    i += 1;
    return text;
  };
  const readTemplate = () => {
    // from just after ` (or after the } closing a ${…}) to the closing ` or the next ${
    let text = "";
    while (i < source.length) {
      if (source[i] === "\\") {
        text += source[i + 1];
        i += 2;
      } else if (source[i] === "`") {
        i += 1;
        strings.push(text);
        return;
      } else if (source[i] === "$" && source[i + 1] === "{") {
        i += 2;
        strings.push(text);
        braces.push(depth);
        depth += 1;
        code += " ";
        return;
      } else text += source[i++];
    }
  };
  while (i < source.length) {
    const c = source[i];
    const next = source[i + 1];
    if (c === "/" && next === "/") {
      while (i < source.length && source[i] !== "\n") i += 1;
    } else if (c === "/" && next === "*") {
      i = source.indexOf("*/", i + 2) + 2;
    } else if (c === '"' || c === "'") {
      strings.push(readString(c));
      code += " 0s ";
      last = "s";
    } else if (c === "`") {
      i += 1;
      readTemplate();
      code += " 0s ";
      last = "s";
    } else if (c === "/" && (last === "" || "(,=:[!&|?{};+-*%<>~^".includes(last) || /\breturn\s*$/.test(code))) {
      // a regex literal: skip it (with its character classes) and its flags
      const start = i;
      i += 1;
      let inClass = false;
      while (i < source.length && (inClass || source[i] !== "/")) {
        if (source[i] === "\\") i += 1;
        else if (source[i] === "[") inClass = true;
        else if (source[i] === "]") inClass = false;
        i += 1;
      }
      regexes.push(source.slice(start + 1, i));
      i += 1;
      while (/[a-z]/.test(source[i] ?? "")) i += 1;
      code += " /r/ ";
      last = "r";
    } else if (c === "}" && braces.length && braces.at(-1) === depth - 1) {
      braces.pop();
      depth -= 1;
      i += 1;
      readTemplate();
      code += " ";
      last = "s";
    } else {
      if (c === "{") depth += 1;
      if (c === "}") depth -= 1;
      code += c;
      if (!/\s/.test(c)) last = c;
      i += 1;
    }
  }
  return { strings, regexes, code };
}

test("the scanner finds strings, template parts and numbers, and skips comments and regexes", () => {
  const { strings, regexes, code } = scan("const a = \"x\\\"y\"; // 560 in a comment\n/* 640 */ f(`t${b + 340}u${`v`}w`, 'q', /\\d{460}/g) / 2;");
  assert.deepEqual(strings, ['x"y', "t", "u", "v", "w", "q"]);
  assert.deepEqual(regexes, ["\\d{460}"]);
  assert.deepEqual(code.match(/\b\d+\b/g), ["340", "2"]);
});

test("no JS file under js/ spells an event name, a panel widget name or a panel size of contract.json", () => {
  const eventNames = new Set(Object.values(CONTRACT.events));
  const widgetNames = new Set(Object.values(CONTRACT.panels).map((p) => p.widget));
  const sizes = new Set([...Object.values(CONTRACT.panels).flatMap((p) => [p.min_width, p.min_height, p.panel_height]),
    CONTRACT.result_text.min_height].filter((n) => n > 0));
  for (const file of jsFiles) {
    const source = readFileSync(new URL(file, JS), "utf8");
    // Not even in a comment or built from parts: the event names live in the contract only.
    assert.doesNotMatch(source, /style_lora\.train/, `${file} spells an event name`);
    const { strings, regexes, code } = scan(source);
    for (const regex of regexes) assert.doesNotMatch(regex, /style_lora\\?\./, `${file} matches event names: /${regex}/`);
    for (const text of strings) {
      assert.ok(!eventNames.has(text) && !text.startsWith("style_lora."), `${file} has the event name "${text}"`);
      assert.ok(!widgetNames.has(text), `${file} has the panel widget name "${text}"`);
    }
    for (const literal of code.match(/(?<![\w.$])\d[\d_]*(?:\.\d+)?(?![\w.])/g) ?? []) {
      const value = Number(literal.replaceAll("_", ""));
      if (!sizes.has(value)) continue;
      assert.ok(ALLOWED_NUMBERS.some((a) => a.file === file && a.value === value), `${file} has the panel size ${literal}`);
    }
    // The calls that take a size get it from the contract, never as a number.
    for (const call of code.match(/\b(ensureWidth|addPanelWidget)\([^)]*\)/g) ?? []) {
      assert.doesNotMatch(call, /[,(]\s*\d/, `${file}: ${call}`);
    }
    assert.doesNotMatch(code, /\bminHeight\s*:\s*\d/, `${file}: a literal minHeight`);
  }
});

test("the allowed coincidences are still there (else drop them from the list)", () => {
  for (const { file, value } of ALLOWED_NUMBERS) {
    const { code } = scan(readFileSync(new URL(file, JS), "utf8"));
    assert.ok(new RegExp(`(?<![\\w.$])${value}(?![\\w.])`).test(code), `${file}: ${value}`);
  }
});
