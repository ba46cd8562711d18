// Finding a panel's dataset upstream in the LiteGraph graph: follow the `dataset` input through
// Caption Editor / Shuffle Caption nodes (and frontend Reroute nodes) to the Load Dataset node.
// Works on any objects shaped like LiteGraph nodes (inputs, widgets, getInputNode), so tests use
// plain fakes. Pure module: no DOM, no ComfyUI imports, no side effects on import.
import { effectiveEdits, tryParseEdits } from "./captions.js";

export const LOAD_DATASET = "StyleLoRALoadDataset";
export const CAPTION_EDITOR = "StyleLoRACaptionEditor";
export const SHUFFLE_CAPTION = "StyleLoRAShuffleCaption";
export const TRAIN = "StyleLoRATrain";
const PASS_THROUGH = new Set(["Reroute"]);
const MAX_DEPTH = 64;

export function nodeType(node) {
  return node?.comfyClass ?? node?.type ?? "";
}

/** The node connected to the input called ``name`` (following Reroute nodes), or null. */
export function inputNode(node, name) {
  let current = node;
  let inputName = name;
  for (let depth = 0; current && depth < MAX_DEPTH; depth += 1) {
    const slot = current.inputs?.findIndex((input) => input.name === inputName) ?? -1;
    if (slot < 0 || current.inputs[slot].link === null || current.inputs[slot].link === undefined) return null;
    let origin = null;
    try {
      origin = current.getInputNode?.(slot) ?? null;
    } catch {
      origin = null; // a node being removed has no graph
    }
    if (!origin || !PASS_THROUGH.has(nodeType(origin))) return origin;
    current = origin;
    inputName = origin.inputs?.[0]?.name;
  }
  return null;
}

/** Whether the input called ``name`` is connected. */
export function inputLinked(node, name) {
  const input = node?.inputs?.find((i) => i.name === name);
  return input ? input.link !== null && input.link !== undefined : false;
}

export function findWidget(node, name) {
  return node?.widgets?.find((w) => w.name === name) ?? null;
}

/**
 * A widget's value; when the widget was turned into a connected input (e.g. the folder fed by a
 * String primitive), the value of the connected node's first widget.
 */
export function widgetValue(node, name, fallback = undefined) {
  if (inputLinked(node, name)) {
    const source = inputNode(node, name);
    const widget = source?.widgets?.find((w) => w.name === "value") ?? source?.widgets?.[0];
    if (widget && widget.value !== undefined) return widget.value;
  }
  const widget = findWidget(node, name);
  return widget && widget.value !== undefined && widget.value !== null ? widget.value : fallback;
}

/** The edits one Caption Editor applies: its widgets plus the overrides of its edits JSON. */
export function editorEdits(node) {
  const { edits, error } = tryParseEdits(widgetValue(node, "edits", "{}"));
  return {
    edits: effectiveEdits(edits, {
      prefix: String(widgetValue(node, "prefix", "")),
      suffix: String(widgetValue(node, "suffix", "")),
      find: String(widgetValue(node, "find", "")),
      replace: String(widgetValue(node, "replace", "")),
    }),
    error,
  };
}

/**
 * Walk up from ``node`` through its `dataset` input. Returns
 * {load, folder, caption_extension, chain, captionsInput, error}: ``chain`` lists the upstream
 * Caption Editors in graph order (nearest the dataset first) with the edits and separator each
 * applies; ``captionsInput`` names an upstream editor whose captions come from a connected
 * `captions` input (their text is not known to the browser). ``error`` says what is missing.
 */
export function datasetSource(node) {
  const nodes = [];
  let current = inputNode(node, "dataset");
  const seen = new Set();
  while (current && !seen.has(current) && nodes.length < MAX_DEPTH) {
    seen.add(current);
    const type = nodeType(current);
    if (type === LOAD_DATASET) break;
    if (type !== CAPTION_EDITOR && type !== SHUFFLE_CAPTION) {
      return { load: null, chain: [], error: `The dataset input comes from "${current.title ?? type}"; ` +
        "connect it to a Load Dataset node (directly or through Caption Editor / Shuffle Caption)." };
    }
    nodes.unshift(current);
    current = inputNode(current, "dataset");
  }
  if (!current || nodeType(current) !== LOAD_DATASET) {
    return { load: null, chain: [], error: "Connect the dataset input to a Load Dataset node to see its images." };
  }
  const chain = [];
  let separator = ",";
  let captionsInput = null;
  for (const n of nodes) {
    if (nodeType(n) === SHUFFLE_CAPTION) {
      separator = String(widgetValue(n, "separator", ",")) || ",";
    } else {
      const { edits, error } = editorEdits(n);
      if (inputLinked(n, "captions")) captionsInput = n.title ?? CAPTION_EDITOR;
      chain.push({ node: n, edits, separator, error });
    }
  }
  return {
    load: current,
    folder: String(widgetValue(current, "folder", "")),
    caption_extension: String(widgetValue(current, "caption_extension", ".txt")) || ".txt",
    chain,
    separator, // the separator a node right below the chain sees
    captionsInput,
    error: null,
  };
}

/** A string that changes whenever what the panel shows of ``source`` would change. */
export function sourceKey(source) {
  if (!source || !source.load) return `error:${source?.error ?? ""}`;
  return JSON.stringify([source.folder, source.caption_extension]);
}

export function chainKey(source) {
  if (!source || !source.load) return "";
  return JSON.stringify([source.separator, source.captionsInput,
    source.chain.map((c) => [c.edits, c.separator, c.error])]);
}

export const EPOCH_WEIGHT_GRID = "StyleLoRAEpochWeightGrid";
export const PICK_EPOCH = "StyleLoRAPickEpoch";

function linkById(graph, id) {
  const links = graph?.links;
  return graph?.getLink?.(id) ?? links?.get?.(id) ?? links?.[id] ?? null;
}

function nodeById(graph, id) {
  return graph?.getNodeById?.(id) ?? graph?._nodes_by_id?.[id] ?? graph?.nodes?.get?.(id) ?? null;
}

/**
 * The nodes fed by ``node``'s output ``slot`` (an index, or the output's name), following Reroute
 * nodes; each once, in link order. Reads LiteGraph's output.links and graph links (Map or object).
 */
export function outputNodes(node, slot) {
  const out = [];
  const seen = new Set();
  const visit = (current, index, depth) => {
    if (!current || depth > MAX_DEPTH) return;
    for (const id of current.outputs?.[index]?.links ?? []) {
      const link = linkById(current.graph, id);
      const target = link ? nodeById(current.graph, link.target_id) : null;
      if (!target || seen.has(target)) continue;
      seen.add(target);
      if (PASS_THROUGH.has(nodeType(target))) visit(target, 0, depth + 1);
      else out.push(target);
    }
  };
  const index = typeof slot === "number" ? slot : (node?.outputs?.findIndex((o) => o.name === slot) ?? -1);
  if (index >= 0) visit(node, index, 0);
  return out;
}
