import { test } from "node:test";
import assert from "node:assert/strict";

import { badges, estimateTokens, LintCache, quickIssues, worstLevel, wordCount } from "../../js/lib/lint.js";

// Real CLIP token counts (without start/end tokens) of the guide's captions, from the CLIP BPE
// tokenizer the tests build (dev/tiny_model.py build_clip_tokenizer).
const GUIDE_TOKENS = [
  ["A glossy red apple with droplets of water, nestled among green leaves", 14],
  ["A woman wearing glasses reflecting light, in a sunlit library, reading a vintage leather-bound book", 20],
  ["A tall mountain, peak shrouded in mist, winding river at its base reflecting the first light of dawn", 22],
  ["used leather sports balls, deep brown tones with visible cracking, vintage basketball and soccer ball, faded lines and chunky stitching", 23],
  ["caricature of a man with a long beard, hands clasped in front, large crowd in the background, lithography, by Honoré Daumier", 29],
  ["historic photograph of a calm water scene, a rowboat under hanging tree branches, reflective surface, lush surrounding vegetation, by Eugène Atget", 30],
  ["man in green coat, seated in armchair, smoking pipe, looking displeased, fallen hat on ground, sparse room setting, titled 'a dox fight', 1788, hand colored etching, by Thomas Rowlandson", 46],
];

test("estimateTokens is within 15% of the real CLIP count on the guide's captions", () => {
  for (const [caption, real] of GUIDE_TOKENS) {
    const estimate = estimateTokens(caption);
    assert.ok(Math.abs(estimate - real) <= Math.max(1, real * 0.15), `${estimate} vs ${real}: ${caption}`);
  }
  // Digits are one token each, punctuation counts.
  assert.equal(estimateTokens("1788"), 4);
  assert.equal(estimateTokens(""), 0);
  const long = Array(40).fill("glossy red apple").join(", ");
  assert.ok(estimateTokens(long) > 150);
});

test("wordCount is Python's len(caption.split())", () => {
  assert.equal(wordCount("  a  red\u00a0apple\n"), 3);
  assert.equal(wordCount(""), 0);
});

test("quickIssues mirrors the server's codes and levels", () => {
  assert.deepEqual(quickIssues("", { missing: true, captionFile: "a.txt" }).map((i) => [i.level, i.code]),
    [["warning", "caption_missing"]]);
  assert.match(quickIssues("", { missing: true, captionFile: "a.txt" })[0].message, /a\.txt/);
  assert.deepEqual(quickIssues("  ").map((i) => i.code), ["caption_empty"]);
  assert.deepEqual(quickIssues("A red apple").map((i) => [i.level, i.code]), [["warning", "caption_short"]]);
  assert.deepEqual(quickIssues("A glossy red apple with droplets of water"), []);
  assert.deepEqual(quickIssues("one two three four five", { minWords: 6 }).map((i) => i.code), ["caption_short"]);
  const long = Array(30).fill("glossy red apple").join(", ");
  const issues = quickIssues(long);
  assert.deepEqual(issues.map((i) => [i.level, i.code, i.estimated]), [["info", "caption_long", true]]);
  assert.match(issues[0].message, /about \d+ tokens/);
  // An exact count replaces the estimate.
  assert.deepEqual(quickIssues(long, { tokens: 70 }), []);
  // Where the encoding cuts (the diffusers path's 225), too long is a warning; in ComfyUI (no cap)
  // the same caption is a note saying how many windows encode it.
  assert.deepEqual(quickIssues("x y z w v", { tokens: 300, tokenCap: 225 }).map((i) => [i.code, i.estimated]), [["caption_truncated", false]]);
  const uncut = quickIssues("x y z w v", { tokens: 300 });
  assert.deepEqual(uncut.map((i) => [i.level, i.code]), [["info", "caption_long"]]);
  assert.match(uncut[0].message, /4 windows of 75 tokens.*nothing is cut/);
  const cache = new LintCache();
  cache.store(["a"], { results: [{ tokens: 1, issues: [] }], token_limit: 75, token_cap: 225, min_words: 5 });
  assert.equal(cache.tokenCap, 225);
  cache.store(["b"], { results: [{ tokens: 1, issues: [] }], token_limit: 75, token_cap: null, min_words: 5 });
  assert.equal(cache.tokenCap, null);
});

test("worstLevel and badges", () => {
  assert.equal(worstLevel([]), "ok");
  assert.equal(worstLevel([{ level: "info" }, { level: "warning" }]), "warning");
  assert.equal(worstLevel([{ level: "warning" }, { level: "error" }]), "error");
  const list = badges([{ level: "warning", code: "caption_short", message: "m", estimated: false },
    { level: "info", code: "caption_long", message: "n", estimated: true }], 80);
  assert.deepEqual(list.map((b) => [b.level, b.label]), [["warning", "too short"], ["info", "~long"], ["info", "80 tok"]]);
  assert.deepEqual(badges([], 12).map((b) => [b.level, b.label]), [["ok", "12 tok"]]);
});

test("LintCache asks once per caption and prefers the exact answer", () => {
  const cache = new LintCache();
  const long = Array(30).fill("glossy red apple").join(", ");
  assert.deepEqual(cache.missing(["a b c d e f", "", "a b c d e f", long]), ["a b c d e f", long]);
  assert.equal(cache.issuesFor(long).exact, false);
  cache.store(["a b c d e f", long], { token_limit: 75, min_words: 5, results: [
    { tokens: 6, issues: [] },
    { tokens: 92, issues: [{ level: "info", code: "caption_long", message: "92 tokens" }] },
  ] });
  assert.deepEqual(cache.missing(["a b c d e f", long, "new one here ok yes"]), ["new one here ok yes"]);
  const exact = cache.issuesFor(long);
  assert.equal(exact.exact, true);
  assert.equal(exact.tokens, 92);
  assert.equal(exact.issues[0].message, "92 tokens");
  // A missing caption file is the image's fact: checked even when the text is known.
  assert.deepEqual(cache.issuesFor("", { missing: true }).issues.map((i) => i.code), ["caption_missing"]);
});

test("LintCache: without a server tokenizer the length check stays an estimate", () => {
  const cache = new LintCache();
  const long = Array(30).fill("glossy red apple").join(", ");
  cache.store([long], { results: [{ tokens: null, issues: [] }] });
  const result = cache.issuesFor(long);
  assert.equal(result.exact, false);
  assert.deepEqual(result.issues.map((i) => i.code), ["caption_long"]);
});

test("LintCache forgets the oldest answers beyond its limit", () => {
  const cache = new LintCache(2);
  cache.store(["a", "b", "c"], { results: [{ tokens: 1, issues: [] }, { tokens: 1, issues: [] }, { tokens: 1, issues: [] }] });
  assert.equal(cache.get("a"), null);
  assert.equal(cache.get("c").tokens, 1);
});

test("LintCache: a missing caption has no token count (no \"0 tok\" badge)", () => {
  const cache = new LintCache();
  const result = cache.issuesFor("", { missing: true, captionFile: "b.txt" });
  assert.equal(result.tokens, null);
  assert.deepEqual(badges(result.issues, result.tokens).map((b) => b.label), ["missing"]);
});
