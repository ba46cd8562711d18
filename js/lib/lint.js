// Quick, client-side caption badges for the caption editor, shown while typing and until the
// server's exact answer (POST /style_lora/lint, real tokenizer) arrives. Same codes and levels as
// style_lora_engine/lint.py caption_issues(); token counts here are only an estimate.
// Pure module: no DOM, no ComfyUI imports, no side effects on import.
import { pySplitWhitespace, pyStrip } from "./captions.js";

export const TOKEN_LIMIT = 75; // the text encoder's window (77 minus start/end tokens)
export const MIN_WORDS = 5;

export const CAPTION_ADVICE =
  "The guide asks for detailed captions: describe the subject, its context/backdrop and each " +
  'distinct element, e.g. "A red apple" -> "A glossy red apple with droplets of water, nestled ' +
  'among green leaves".';

/** Python's len(caption.split()). */
export function wordCount(caption) {
  return pySplitWhitespace(caption ?? "").length;
}

// CLIP's pre-tokenizer: contractions, letter runs, single digits, other non-space runs.
const CLIP_PIECES = /'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+/gu;

/**
 * An estimate of the CLIP token count (without start/end tokens). Calibrated on the guide's text
 * against the real tokenizer (within about 10% there): short words are one token, longer and rarer
 * ones a little more on average, accented letters often split off, every digit is a token.
 */
export function estimateTokens(caption) {
  const text = String(caption ?? "").toLowerCase();
  let tokens = 0;
  for (const [piece] of text.matchAll(CLIP_PIECES)) {
    if (/^\p{L}/u.test(piece)) {
      const letters = [...piece];
      const nonAscii = letters.filter((ch) => ch > "\u007f").length;
      const n = letters.length;
      tokens += 1 + (n <= 5 ? 0.04 : 0.12 + Math.max(0, n - 9) * 0.1) + nonAscii;
    } else {
      tokens += /^\p{N}$/u.test(piece) ? 1 : Math.ceil([...piece].length / 2);
    }
  }
  return Math.round(tokens);
}

/**
 * The guide's checks of one caption, as [{level, code, message, estimated}], like the server's
 * caption_issues(): missing/empty, fewer than minWords words, and (estimated) over the 75-token
 * window, or over ``tokenCap`` where the text encoding cuts captions (null, the server's answer
 * inside ComfyUI: its CLIP encodes every window). ``tokens`` (an exact server count) replaces the estimate.
 */
export function quickIssues(caption, { missing = false, captionFile = "", minWords = MIN_WORDS,
  tokenLimit = TOKEN_LIMIT, tokenCap = null, tokens = null } = {}) {
  const text = String(caption ?? "");
  if (missing && !pyStrip(text)) {
    return [{ level: "warning", code: "caption_missing", estimated: false,
      message: `No caption file${captionFile ? ` (${captionFile})` : ""}. Write one: ${CAPTION_ADVICE}` }];
  }
  if (!pyStrip(text)) {
    return [{ level: "warning", code: "caption_empty", estimated: false, message: `The caption is empty. ${CAPTION_ADVICE}` }];
  }
  const issues = [];
  const words = wordCount(text);
  if (words < minWords) {
    issues.push({ level: "warning", code: "caption_short", estimated: false,
      message: `The caption has only ${words} word(s). ${CAPTION_ADVICE}` });
  }
  const exact = Number.isInteger(tokens);
  const count = exact ? tokens : estimateTokens(text);
  const about = exact ? "" : "about ";
  if (Number.isInteger(tokenCap) && count > tokenCap) {
    issues.push({ level: "warning", code: "caption_truncated", estimated: !exact,
      message: `The caption is ${about}${count} tokens; everything after token ${tokenCap} is cut. Shorten it.` });
  } else if (count > tokenLimit) {
    const how = Number.isInteger(tokenCap)
      ? `it is encoded in up to ${Math.floor(tokenCap / tokenLimit)} chunks of ${tokenLimit} tokens.`
      : `it is encoded in ${Math.ceil(count / tokenLimit)} windows of ${tokenLimit} tokens, the way ComfyUI ` +
        "encodes a long prompt (nothing is cut).";
    issues.push({ level: "info", code: "caption_long", estimated: !exact,
      message: `The caption is ${about}${count} tokens, more than the text encoder's ${tokenLimit}-token window; ${how}` });
  }
  return issues;
}

const LEVEL_RANK = { error: 3, warning: 2, info: 1 };

/** The most severe level among issues, or "ok". */
export function worstLevel(issues) {
  let worst = "ok";
  for (const issue of issues ?? []) {
    if ((LEVEL_RANK[issue.level] ?? 0) > (LEVEL_RANK[worst] ?? 0)) worst = issue.level;
  }
  return worst;
}

const SHORT_LABELS = {
  caption_missing: "missing",
  caption_empty: "empty",
  caption_short: "too short",
  caption_long: "long",
  caption_truncated: "too long",
  caption_unreadable: "caption unreadable",
  image_too_large: "too large",
  image_huge: "very large",
  image_unreadable: "unreadable",
  image_outside: "link outside",
};

/** Badges for one image: [{level, label, title}], e.g. "too short", "~80 tok". */
export function badges(issues, tokens = null, { tokenLimit = TOKEN_LIMIT } = {}) {
  const out = (issues ?? []).map((issue) => ({
    level: issue.level,
    label: (issue.estimated ? "~" : "") + (SHORT_LABELS[issue.code] ?? issue.code),
    title: issue.message ?? "",
  }));
  if (Number.isInteger(tokens)) {
    out.push({ level: tokens > tokenLimit ? "info" : "ok", label: `${tokens} tok`,
      title: `${tokens} tokens (real tokenizer); the window is ${tokenLimit}.` });
  }
  return out;
}

/**
 * Cache of the server's exact lint answers by caption text, so a caption is sent once and the
 * badge switches from the estimate to the exact result when the answer arrives.
 */
export class LintCache {
  constructor(limit = 5000) {
    this.limit = limit;
    this.results = new Map(); // caption -> {tokens, issues}
    this.tokenLimit = TOKEN_LIMIT;
    this.tokenCap = null;
    this.minWords = MIN_WORDS;
  }

  get(caption) {
    return this.results.get(caption) ?? null;
  }

  /** The captions that still need an exact answer (unique, in first-seen order). */
  missing(captions) {
    const out = [];
    const seen = new Set();
    for (const caption of captions) {
      if (!pyStrip(caption ?? "") || this.results.has(caption) || seen.has(caption)) continue;
      seen.add(caption);
      out.push(caption);
    }
    return out;
  }

  /** Store a POST /style_lora/lint answer for the captions that were sent. */
  store(captions, answer) {
    if (!answer || !Array.isArray(answer.results)) return;
    if (Number.isInteger(answer.token_limit)) this.tokenLimit = answer.token_limit;
    if (answer.token_cap === null || Number.isInteger(answer.token_cap)) this.tokenCap = answer.token_cap;
    if (Number.isInteger(answer.min_words)) this.minWords = answer.min_words;
    captions.forEach((caption, index) => {
      const result = answer.results[index];
      if (result) this.results.set(caption, { tokens: result.tokens ?? null, issues: result.issues ?? [] });
    });
    while (this.results.size > this.limit) this.results.delete(this.results.keys().next().value);
  }

  /**
   * The issues to show for a caption: the server's, exact, when known; otherwise the estimate.
   * A missing caption file is the image's fact, not the text's, so it is always checked here.
   */
  issuesFor(caption, { missing = false, captionFile = "" } = {}) {
    const known = this.get(caption);
    if (missing && !pyStrip(caption ?? "")) {
      return { exact: true, tokens: null, issues: quickIssues(caption, { missing, captionFile, minWords: this.minWords }) };
    }
    if (known && Number.isInteger(known.tokens)) return { exact: true, tokens: known.tokens, issues: known.issues };
    if (known) {
      // The server has no tokenizer: its word checks are exact, the length check is estimated here.
      const estimated = quickIssues(caption, { minWords: this.minWords, tokenLimit: this.tokenLimit, tokenCap: this.tokenCap })
        .filter((issue) => issue.estimated);
      return { exact: false, tokens: null, issues: [...known.issues, ...estimated] };
    }
    return { exact: false, tokens: null,
      issues: quickIssues(caption, { minWords: this.minWords, tokenLimit: this.tokenLimit, tokenCap: this.tokenCap }) };
  }
}
