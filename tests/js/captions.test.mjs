// js/lib/captions.js against the Python engine: the table in tests/data/caption_edit_cases.json was
// computed by style_lora_engine (edit_caption, normalize_caption, split_caption), and a Python test
// asserts the same table, so the panel's previews are what the node trains on.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import {
  applyEditChain,
  captionHasTag,
  captionsToSave,
  compareCodePoints,
  editCaption,
  effectiveEdits,
  EditsError,
  normalizeCaption,
  parseEdits,
  pyIsSpace,
  pySplitWhitespace,
  pyStrip,
  serializeEdits,
  setOverride,
  splitCaption,
  tagFrequency,
  tryParseEdits,
  unknownOverrides,
} from "../../js/lib/captions.js";

const TABLE = JSON.parse(readFileSync(new URL("../data/caption_edit_cases.json", import.meta.url), "utf8"));

test("the shared table is substantial and covers every separator kind", () => {
  assert.ok(TABLE.edit_caption.length > 1000);
  const separators = new Set(TABLE.edit_caption.map((c) => c.separator));
  for (const sep of [",", " | ", "|", ";", " "]) assert.ok(separators.has(sep), sep);
  // The table is not trivial: many cases change the caption.
  const changed = TABLE.edit_caption.filter((c) => c.expected !== c.caption).length;
  assert.ok(changed > 500, `only ${changed} cases change the caption`);
});

test("editCaption agrees with Python's edit_caption on every table case", () => {
  const failures = [];
  for (const c of TABLE.edit_caption) {
    const edits = parseEdits(JSON.stringify(c.edits));
    const got = editCaption(c.caption, edits, c.file, c.separator);
    if (got !== c.expected) failures.push({ ...c, got });
  }
  assert.deepEqual(failures.slice(0, 5), [], `${failures.length} disagreements`);
});

test("normalizeCaption agrees with Python's normalize_caption", () => {
  for (const c of TABLE.normalize_caption) {
    assert.equal(normalizeCaption(c.text), c.expected, JSON.stringify(c.text));
  }
});

test("splitCaption agrees with Python's split_caption (parts and joiner)", () => {
  for (const c of TABLE.split_caption) {
    assert.deepEqual(splitCaption(c.caption, c.separator), { parts: c.parts, joiner: c.joiner },
      `${JSON.stringify(c.caption)} / ${JSON.stringify(c.separator)}`);
  }
});

test("Python whitespace, not JavaScript's", () => {
  // U+001C..U+001F and U+0085 are whitespace in Python; U+FEFF is not.
  assert.deepEqual(pySplitWhitespace("a\u001cb\u0085c\ufeffd"), ["a", "b", "c\ufeffd"]);
  assert.equal(pyStrip("\u001f x \u0085"), "x");
  assert.equal(pyStrip("\ufeffx"), "\ufeffx");
});

test("guide examples: trigger prefix and artist suffix are idempotent", () => {
  const edits = { prefix: "daumier style", suffix: "by Honoré Daumier", find: "", replace: "", overrides: {} };
  const once = editCaption("caricature of a man with a long beard, lithography", edits, "a.png");
  assert.equal(once, "daumier style, caricature of a man with a long beard, lithography, by Honoré Daumier");
  assert.equal(editCaption(once, edits, "a.png"), once);
  // Whole parts only: "art" is not the first part of "artwork of a cat".
  assert.equal(editCaption("artwork of a cat", { prefix: "art" }, "x"), "art, artwork of a cat");
  assert.equal(editCaption("bobcat", { suffix: "cat" }, "x"), "bobcat, cat");
});

test("an override replaces the caption (normalised) before the bulk edits", () => {
  const edits = { prefix: "trigger", find: "red", replace: "crimson", overrides: { "a.png": "a red apple\n on leaves" } };
  assert.equal(editCaption("anything", edits, "a.png"), "trigger, a crimson apple, on leaves");
  assert.equal(editCaption("a red pear", edits, "b.png"), "trigger, a crimson pear");
});

test("parseEdits accepts what CaptionEdits.from_json accepts", () => {
  assert.deepEqual(parseEdits(""), { prefix: "", suffix: "", find: "", replace: "", overrides: {} });
  assert.deepEqual(parseEdits("  \n"), parseEdits("{}"));
  assert.deepEqual(parseEdits('{"prefix": null, "overrides": null}'), parseEdits("{}"));
  assert.deepEqual(parseEdits('{"overrides": []}').overrides, {});
  assert.deepEqual(parseEdits('{"overrides": [["x.png", "cap"]]}').overrides, { "x.png": "cap" });
  const parsed = parseEdits('{"overrides": {"z.png": "zebra", "a.png": "apple, é"}, "suffix": "s"}');
  assert.deepEqual(Object.keys(parsed.overrides), ["a.png", "z.png"]); // sorted like Python
  assert.equal(parsed.suffix, "s");
});

test("parseEdits refuses what from_json refuses, naming the problem", () => {
  const cases = [
    ["{not json", "not valid JSON"],
    ["[1, 2]", "JSON object, got list"],
    ["null", "JSON object, got NoneType"],
    ['{"prefx": "a"}', "'prefx'"],
    ['{"prefix": 3}', "'prefix' must be text"],
    ['{"overrides": "a.png"}', "overrides"],
    ['{"overrides": {"a.png": 5}}', "a.png"],
    ['{"overrides": [["a.png"]]}', "overrides"],
  ];
  for (const [text, fragment] of cases) {
    assert.throws(() => parseEdits(text), (error) => error instanceof EditsError && error.message.includes(fragment), text);
  }
  const { edits, error } = tryParseEdits('{"prefx": 1}');
  assert.match(error, /prefx/);
  assert.deepEqual(edits.overrides, {});
});

test("serializeEdits round-trips and keeps non-ASCII readable", () => {
  const edits = { prefix: "by X", suffix: "", find: "", replace: "", overrides: { "b.png": "bé", "a.png": "a\nb" } };
  const text = serializeEdits(edits);
  assert.ok(text.includes("bé"));
  assert.ok(text.indexOf('"a.png"') < text.indexOf('"b.png"'));
  assert.deepEqual(parseEdits(text), { ...edits, overrides: { "a.png": "a\nb", "b.png": "bé" } });
  // A file literally named __proto__ is an ordinary override.
  const odd = parseEdits('{"overrides": {"__proto__": "x"}}');
  assert.equal(Object.getPrototypeOf(odd.overrides), Object.prototype);
  assert.deepEqual(Object.keys(odd.overrides), ["__proto__"]);
  assert.equal(JSON.parse(serializeEdits(odd)).overrides.__proto__, "x");
});

test("effectiveEdits: the node's widgets win over the JSON's first four keys", () => {
  const stored = parseEdits('{"prefix": "old", "find": "x", "overrides": {"a.png": "hand"}}');
  const eff = effectiveEdits(stored, { prefix: "new", suffix: "", find: "", replace: "" });
  assert.deepEqual(eff, { prefix: "new", suffix: "", find: "", replace: "", overrides: { "a.png": "hand" } });
  eff.overrides["b.png"] = "other";
  assert.deepEqual(Object.keys(stored.overrides), ["a.png"]); // a copy
});

test("setOverride stores hand edits and drops them when they equal the file's caption", () => {
  let edits = parseEdits("{}");
  edits = setOverride(edits, "b.png", "a glossy red apple", "a red apple");
  edits = setOverride(edits, "a.png", "x", "y");
  assert.deepEqual(Object.keys(edits.overrides), ["a.png", "b.png"]);
  edits = setOverride(edits, "b.png", "  a red   apple\n", "a red apple");
  assert.deepEqual(edits.overrides, { "a.png": "x" });
  assert.deepEqual(unknownOverrides(edits, ["b.png"]), ["a.png"]);
});

test("tagFrequency counts stripped parts, most frequent first then by name", () => {
  const freq = tagFrequency(["b, a, c", "a ,b", "a", "Z, é"]);
  assert.deepEqual(freq, [
    { tag: "a", count: 3 },
    { tag: "b", count: 2 },
    { tag: "Z", count: 1 },
    { tag: "c", count: 1 },
    { tag: "é", count: 1 },
  ]);
  assert.deepEqual(tagFrequency(["a | b", "b|c"], " | ").map((t) => t.tag), ["b", "a", "c"]);
  assert.ok(captionHasTag("red apple, leaves", "leaves"));
  assert.ok(!captionHasTag("red apple, green leaves", "leaves"));
});

test("compareCodePoints orders astral characters after BMP ones, like Python", () => {
  assert.equal(compareCodePoints("\u{1F600}", "\uffee"), 1); // UTF-16 order would say -1
  assert.equal(compareCodePoints("a", "ab"), -1);
  assert.equal(compareCodePoints("ab", "ab"), 0);
});

test("applyEditChain applies upstream editors first", () => {
  const chain = [
    { edits: { prefix: "first" }, separator: "," },
    { edits: { prefix: "second", find: "first", replace: "1st" }, separator: "," },
  ];
  assert.equal(applyEditChain("cat", "a.png", chain), "second, 1st, cat");
});

test("captionsToSave sends only changed captions and never creates empty files", () => {
  const items = [
    { file: "a.png", caption: "same", has_caption_file: true },
    { file: "b.png", caption: "old", has_caption_file: true },
    { file: "c.png", caption: "", has_caption_file: false },
    { file: "d.png", caption: "", has_caption_file: false },
    { file: "e.png", caption: "kept", has_caption_file: true },
  ];
  const finals = { "a.png": " same ", "b.png": "new", "c.png": "", "d.png": "fresh\ncaption", "e.png": "" };
  assert.deepEqual(captionsToSave(items, finals), { "b.png": "new", "d.png": "fresh, caption", "e.png": "" });
});

test("pyStrip and pySplitWhitespace use exactly pyIsSpace's characters", () => {
  for (let code = 0; code <= 0xffff; code += 1) {
    if (code >= 0xd800 && code <= 0xdfff) continue;
    const ch = String.fromCharCode(code);
    assert.equal(pyStrip(`${ch}x${ch}`) === "x", pyIsSpace(ch), `U+${code.toString(16)}`);
    assert.equal(pySplitWhitespace(`a${ch}b`).length === 2, pyIsSpace(ch), `U+${code.toString(16)}`);
  }
});
