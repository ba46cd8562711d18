// Caption logic of the caption editor panel, mirroring style_lora_engine/captions.py,
// style_lora_engine/shuffle.py (split_caption) and style_lora_engine/dataset.py
// (normalize_caption) exactly, so the previews show what the node will train on.
// Pure module: no DOM, no ComfyUI imports, no side effects on import.
//
// Python's notion of whitespace (str.isspace, str.split(), str.strip(), re's \s) differs from
// JavaScript's \s (Python adds U+001C-U+001F and U+0085; JS adds U+FEFF), so it is spelled out.

export const PY_WHITESPACE =
  "\t\n\u000b\u000c\r\u001c\u001d\u001e\u001f \u0085\u00a0\u1680" +
  "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" +
  "\u2028\u2029\u202f\u205f\u3000";
// The same set as a regex character class.
const WS_CLASS = `[${[...PY_WHITESPACE].map((ch) => `\\u${ch.charCodeAt(0).toString(16).padStart(4, "0")}`).join("")}]`;
const WS_RUN = new RegExp(`${WS_CLASS}+`);
const WS_LEADING = new RegExp(`^${WS_CLASS}+`);
const WS_TRAILING = new RegExp(`${WS_CLASS}+$`);
// str.splitlines() boundaries ("\r\n" counts once; empty lines are dropped by the callers anyway).
const LINE_BREAK = /\r\n|[\n\r\u000b\u000c\u001c\u001d\u001e\u0085\u2028\u2029]/;

export const EDIT_KEYS = Object.freeze(["prefix", "suffix", "find", "replace", "overrides"]);

/** Python's ch.isspace() for one character. */
export function pyIsSpace(ch) {
  return typeof ch === "string" && ch.length === 1 && PY_WHITESPACE.includes(ch);
}

/** Python's s.strip() / lstrip() / rstrip() without arguments. */
export function pyStrip(s) {
  return String(s).replace(WS_LEADING, "").replace(WS_TRAILING, "");
}
export function pyLStrip(s) {
  return String(s).replace(WS_LEADING, "");
}
export function pyRStrip(s) {
  return String(s).replace(WS_TRAILING, "");
}

/** Python's s.rstrip(chars) for a set of plain characters. */
export function pyRStripChars(s, chars) {
  let end = s.length;
  while (end > 0 && chars.includes(s[end - 1])) end -= 1;
  return s.slice(0, end);
}

/** Python's s.split() without arguments: runs of whitespace, no empty parts. */
export function pySplitWhitespace(s) {
  return String(s).split(WS_RUN).filter((part) => part !== "");
}

function escapeRegExp(text) {
  return text.replace(/[.*+?^${}()|[\]\\/-]/g, "\\$&");
}

/** dataset.normalize_caption: whitespace runs collapsed, lines joined with ", ", stripped. */
export function normalizeCaption(text) {
  let lines = String(text ?? "")
    .split(LINE_BREAK)
    .map((line) => pySplitWhitespace(line).join(" "))
    .filter((line) => line !== "");
  if (lines.length > 1) {
    lines = lines
      .slice(0, -1)
      .map((line) => pyRStrip(pyRStripChars(line, ",")))
      .concat(lines.slice(-1))
      .filter((line) => line !== "");
  }
  return pyStrip(lines.join(", "));
}

/**
 * shuffle.split_caption: the stripped, non-empty parts of a caption and the joiner it uses
 * (the separator with the caption's own surrounding whitespace, the most common form).
 */
export function splitCaption(caption, separator = ",") {
  if (!separator) throw new Error('Caption separator cannot be empty; use "," (the usual choice).');
  const core = pyStrip(separator);
  if (!core) return { parts: pySplitWhitespace(caption), joiner: " " };
  const pattern = new RegExp(`${WS_CLASS}*${escapeRegExp(core)}${WS_CLASS}*`, "g");
  const parts = caption.split(pattern).map(pyStrip).filter((part) => part !== "");
  const counts = new Map(); // insertion order = first seen, like collections.Counter
  for (const match of pyStrip(caption).matchAll(pattern)) {
    counts.set(match[0], (counts.get(match[0]) ?? 0) + 1);
  }
  let joiner = null;
  let best = 0;
  for (const [text, count] of counts) {
    if (count > best) {
      best = count;
      joiner = text;
    }
  }
  if (joiner === null) joiner = separator !== core ? separator : `${core} `;
  return { parts, joiner };
}

function joinerFor(separator) {
  // "," -> ", " and " | " -> " | ": the separator followed by exactly one space.
  const core = pyRStrip(separator);
  return core ? `${core} ` : " ";
}

function startsWithPart(caption, part, separator) {
  if (caption === part) return true;
  if (!caption.startsWith(part)) return false;
  const rest = caption.slice(part.length);
  const core = pyStrip(separator);
  return core ? pyLStrip(rest).startsWith(core) : pyIsSpace(rest.slice(0, 1));
}

function endsWithPart(caption, part, separator) {
  if (caption === part) return true;
  if (!caption.endsWith(part)) return false;
  const rest = caption.slice(0, caption.length - part.length);
  const core = pyStrip(separator);
  return core ? pyRStrip(rest).endsWith(core) : pyIsSpace(rest.slice(-1));
}

/** A plain, fully-populated edits object. */
export function emptyEdits() {
  return { prefix: "", suffix: "", find: "", replace: "", overrides: {} };
}

// Own, enumerable data property (a file literally named "__proto__" must not touch the prototype).
function define(object, key, value) {
  Object.defineProperty(object, key, { value, enumerable: true, writable: true, configurable: true });
  return object;
}

function overrideFor(edits, fileName) {
  const overrides = edits?.overrides;
  if (!overrides) return null;
  return Object.prototype.hasOwnProperty.call(overrides, fileName) ? overrides[fileName] : null;
}

/**
 * captions.edit_caption: a per-image override replaces the caption (normalised); then
 * find/replace (plain text, every occurrence); then prefix and suffix joined with the separator
 * plus one space, each skipped when the caption's first (last) part already is it.
 */
export function editCaption(caption, edits, fileName, separator = ",") {
  let text = String(caption ?? "");
  const override = overrideFor(edits, fileName);
  if (override !== null && override !== undefined) text = normalizeCaption(override);
  const find = edits?.find ?? "";
  if (find) text = text.split(find).join(edits?.replace ?? "");
  const joiner = joinerFor(separator);
  const prefix = pyStrip(edits?.prefix ?? "");
  if (prefix && !startsWithPart(text, prefix, separator)) {
    text = pyStrip(text) ? `${prefix}${joiner}${text}` : prefix;
  }
  const suffix = pyStrip(edits?.suffix ?? "");
  if (suffix && !endsWithPart(text, suffix, separator)) {
    text = pyStrip(text) ? `${text}${joiner}${suffix}` : suffix;
  }
  return text;
}

export class EditsError extends Error {
  constructor(message) {
    super(message);
    this.name = "EditsError";
  }
}

const EDITS_FIX =
  'Expected a JSON object like {"prefix": "", "suffix": "", "find": "", "replace": "", ' +
  '"overrides": {"image.png": "caption"}}; fix the text or clear it.';

function pyTypeName(value) {
  if (value === null) return "NoneType";
  if (Array.isArray(value)) return "list";
  if (typeof value === "string") return "str";
  if (typeof value === "boolean") return "bool";
  if (typeof value === "number") return Number.isInteger(value) ? "int" : "float";
  return "dict";
}

/**
 * CaptionEdits.from_json: the same accepted inputs and the same refusals (an EditsError whose
 * message names the problem). Blank text means no edits. Returns a fresh plain object whose
 * overrides are a {file: caption} object.
 */
export function parseEdits(text) {
  if (text === null || text === undefined || !pyStrip(String(text))) return emptyEdits();
  let data;
  try {
    data = JSON.parse(String(text));
  } catch (error) {
    throw new EditsError(`Caption edits are not valid JSON (${error.message}). ${EDITS_FIX}`);
  }
  if (data === null || typeof data !== "object" || Array.isArray(data)) {
    throw new EditsError(`Caption edits must be a JSON object, got ${pyTypeName(data)}. ${EDITS_FIX}`);
  }
  const unknown = Object.keys(data).filter((key) => !EDIT_KEYS.includes(key)).sort();
  if (unknown.length) {
    throw new EditsError(
      `Unknown caption edit key(s) ${unknown.map((k) => `'${k}'`).join(", ")}; allowed: ${EDIT_KEYS.join(", ")}.`,
    );
  }
  const edits = emptyEdits();
  for (const key of ["prefix", "suffix", "find", "replace"]) {
    let value = data[key] ?? "";
    if (typeof value !== "string") {
      throw new EditsError(`Caption edit '${key}' must be text, got ${JSON.stringify(value)}. ${EDITS_FIX}`);
    }
    edits[key] = value;
  }
  edits.overrides = parseOverrides(data.overrides);
  return edits;
}

function isFalsyJson(value) {
  // Python's `data.get("overrides") or {}`: None, {}, [], "", 0 and false mean no overrides.
  if (value === undefined || value === null || value === false || value === 0 || value === "") return true;
  if (Array.isArray(value)) return value.length === 0;
  return typeof value === "object" && Object.keys(value).length === 0;
}

function parseOverrides(raw) {
  if (isFalsyJson(raw)) return {};
  let pairs;
  if (raw !== null && typeof raw === "object" && !Array.isArray(raw)) {
    pairs = Object.entries(raw);
  } else if (Array.isArray(raw) && raw.every((p) => Array.isArray(p) && p.length === 2)) {
    pairs = raw;
  } else {
    throw new EditsError(`Caption edit 'overrides' must map image file names to captions. ${EDITS_FIX}`);
  }
  const result = {};
  for (const [name, caption] of pairs) {
    if (typeof name !== "string" || typeof caption !== "string") {
      throw new EditsError(
        `Override ${JSON.stringify(name)}: both the file name and the caption must be text. ${EDITS_FIX}`,
      );
    }
    define(result, name, caption);
  }
  return sortOverrides(result);
}

/** Compare strings by code point, like Python's sorted() on str. */
export function compareCodePoints(a, b) {
  const ia = a[Symbol.iterator]();
  const ib = b[Symbol.iterator]();
  for (;;) {
    const x = ia.next();
    const y = ib.next();
    if (x.done || y.done) return x.done === y.done ? 0 : x.done ? -1 : 1;
    const cx = x.value.codePointAt(0);
    const cy = y.value.codePointAt(0);
    if (cx !== cy) return cx < cy ? -1 : 1;
  }
}

function sortOverrides(overrides) {
  const sorted = {};
  for (const name of Object.keys(overrides).sort(compareCodePoints)) define(sorted, name, overrides[name]);
  return sorted;
}

/** The edits widget's JSON (like CaptionEdits.to_json: indent 2, overrides sorted by name). */
export function serializeEdits(edits) {
  const data = {
    prefix: edits?.prefix ?? "",
    suffix: edits?.suffix ?? "",
    find: edits?.find ?? "",
    replace: edits?.replace ?? "",
    overrides: sortOverrides({ ...(edits?.overrides ?? {}) }),
  };
  return JSON.stringify(data, null, 2);
}

/** parseEdits that never throws: {edits, error} (error is the message text or null). */
export function tryParseEdits(text) {
  try {
    return { edits: parseEdits(text), error: null };
  } catch (error) {
    return { edits: emptyEdits(), error: error.message };
  }
}

/**
 * What StyleLoRACaptionEditor.edit applies: the node's own prefix/suffix/find/replace widgets
 * (they win over the JSON's first four keys) and the JSON's overrides.
 */
export function effectiveEdits(stored, widgets) {
  return {
    prefix: widgets?.prefix ?? "",
    suffix: widgets?.suffix ?? "",
    find: widgets?.find ?? "",
    replace: widgets?.replace ?? "",
    overrides: { ...(stored?.overrides ?? {}) },
  };
}

/**
 * A copy of ``edits`` with one image's hand edit set: ``text`` becomes the override unless it
 * normalises to ``base`` (the caption the image has without an override), which removes it.
 */
export function setOverride(edits, fileName, text, base) {
  const overrides = { ...(edits?.overrides ?? {}) };
  if (text === null || text === undefined || normalizeCaption(text) === normalizeCaption(base ?? "")) {
    delete overrides[fileName];
  } else {
    define(overrides, fileName, String(text));
  }
  return { ...emptyEdits(), ...edits, overrides: sortOverrides(overrides) };
}

/** Override names that match no listed image (typos, or images removed since). */
export function unknownOverrides(edits, fileNames) {
  const names = new Set(fileNames);
  return Object.keys(edits?.overrides ?? {}).filter((name) => !names.has(name));
}

/**
 * captions.tag_frequency over a list of captions: every stripped part, counted; most frequent
 * first, then by name. Returns [{tag, count}].
 */
export function tagFrequency(captions, separator = ",") {
  const counts = new Map();
  for (const caption of captions) {
    for (const part of splitCaption(String(caption ?? ""), separator).parts) {
      counts.set(part, (counts.get(part) ?? 0) + 1);
    }
  }
  return [...counts.entries()]
    .map(([tag, count]) => ({ tag, count }))
    .sort((a, b) => b.count - a.count || compareCodePoints(a.tag, b.tag));
}

/** Whether one of the caption's parts is exactly ``tag``. */
export function captionHasTag(caption, tag, separator = ",") {
  return splitCaption(String(caption ?? ""), separator).parts.includes(tag);
}

/**
 * Apply a chain of caption editors in order (the upstream ones first), like the graph does.
 * ``chain`` is a list of {edits, separator}; returns the caption after all of them.
 */
export function applyEditChain(caption, fileName, chain) {
  let text = caption;
  for (const link of chain) text = editCaption(text, link.edits, fileName, link.separator ?? ",");
  return text;
}

/**
 * The captions to send to POST /style_lora/captions: each image's final caption where it differs
 * from what its caption file holds (a missing file is only created for a non-empty caption).
 * ``items`` are {file, caption (the file's text), has_caption_file}; ``finals`` maps file -> text.
 */
export function captionsToSave(items, finals) {
  const out = {};
  for (const item of items) {
    const text = finals[item.file];
    if (text === undefined) continue;
    const final = normalizeCaption(text);
    if (!item.has_caption_file && !final) continue;
    if (item.has_caption_file && final === normalizeCaption(item.caption ?? "")) continue;
    out[item.file] = final;
  }
  return out;
}
