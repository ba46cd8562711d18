import { test } from "node:test";
import assert from "node:assert/strict";

import { colourCss, installDefaultColours, TYPE_COLOURS } from "../../js/lib/colours.js";

test("our colours survive a palette load that blanks unknown types (loadLinkColorPalette)", () => {
  const linkTypeColors = { "-1": "#A86", number: "#AAA" };
  installDefaultColours(linkTypeColors);
  assert.equal(linkTypeColors.STYLE_LORA_DATASET, TYPE_COLOURS.STYLE_LORA_DATASET);
  // What the frontend does on every palette load: every known type to "", then the palette's colours.
  const blank = Object.fromEntries(["STYLE_LORA_DATASET", "STYLE_LORA_RUN", "STYLE_LORA_EPOCHS", "MODEL"].map((t) => [t, ""]));
  Object.assign(linkTypeColors, blank, { MODEL: "#B39DDB" });
  assert.equal(linkTypeColors.STYLE_LORA_DATASET, "#7bbf8b");
  assert.equal(linkTypeColors.STYLE_LORA_RUN, "#e0a458");
  assert.equal(linkTypeColors.STYLE_LORA_EPOCHS, "#d07cc4");
  assert.equal(linkTypeColors.MODEL, "#B39DDB");
  // A palette that does colour our types wins.
  Object.assign(linkTypeColors, { STYLE_LORA_RUN: "#123456" });
  assert.equal(linkTypeColors.STYLE_LORA_RUN, "#123456");
  // Enumerable and copyable like plain entries.
  assert.equal({ ...linkTypeColors }.STYLE_LORA_EPOCHS, "#d07cc4");
  assert.ok(Object.keys(linkTypeColors).includes("STYLE_LORA_DATASET"));
});

test("installing twice keeps one accessor and an earlier palette colour", () => {
  const table = { STYLE_LORA_DATASET: "#010203" };
  installDefaultColours(table);
  installDefaultColours(table);
  assert.equal(table.STYLE_LORA_DATASET, "#010203");
  table.STYLE_LORA_DATASET = "";
  assert.equal(table.STYLE_LORA_DATASET, "#7bbf8b");
  assert.equal(installDefaultColours(undefined), false);
});

test("CSS variables for Nodes 2.0", () => {
  const css = colourCss();
  assert.match(css, /--color-datatype-STYLE_LORA_DATASET: #7bbf8b;/);
  assert.match(css, /--color-datatype-STYLE_LORA_EPOCHS: #d07cc4;/);
});
