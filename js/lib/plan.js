// The Train LoRA panel's pre-flight plan: what POST /style_lora/plan is sent (the widgets of the Train LoRA
// node's own chain and the Load Checkpoint its MODEL comes from) and how its answer is shown.
// Pure module: no DOM, no ComfyUI imports, no side effects on import.
import { datasetSource, findWidget, inputLinked, inputNode, nodeType, outputNodes, widgetValue } from "./graph.js";

export const TRAIN_OPTIONS = "StyleLoRATrainOptions";
export const SAVE_EPOCHS = "StyleLoRASaveEpochs";
const MAX_DEPTH = 64;
const PRIMITIVE = new Set(["string", "number", "boolean"]);
const WIDGET_KINDS = new Set(["INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"]);

function isWidgetInput(entry) {
  const [kind, options] = Array.isArray(entry) ? entry : [];
  return (Array.isArray(kind) || WIDGET_KINDS.has(kind)) && !options?.forceInput;
}

/**
 * The names of a node's widget inputs, from its definition (ComfyUI's nodeData) when the frontend has it,
 * else its widgets; panel widgets and frontend-only widgets (control_after_generate) are left out.
 */
export function widgetNames(node) {
  const spec = node?.constructor?.nodeData?.input;
  if (spec) {
    const entries = [...Object.entries(spec.required ?? {}), ...Object.entries(spec.optional ?? {})];
    return entries.filter(([name, entry]) => isWidgetInput(entry) && (findWidget(node, name) || inputLinked(node, name)))
      .map(([name]) => name);
  }
  // Without a definition: the plain widgets (a DOM widget, such as a panel, has an element).
  return (node?.widgets ?? []).filter((w) => w.name && !w.element && PRIMITIVE.has(typeof w.value)).map((w) => w.name);
}

/** {name: value} of a node's widgets (a widget turned into a linked input: its source's value). */
export function widgetValues(node) {
  const out = {};
  for (const name of widgetNames(node)) {
    const value = widgetValue(node, name);
    if (PRIMITIVE.has(typeof value)) out[name] = value;
  }
  return out;
}

/**
 * The Load Checkpoint name Train LoRA's MODEL comes from, following `model` inputs up through LoRA loaders
 * and other model patches: {name, via: [titles between], error}.
 */
export function checkpointSource(trainNode) {
  const via = [];
  let current = inputNode(trainNode, "model");
  for (let depth = 0; current && depth < MAX_DEPTH; depth += 1) {
    const widget = findWidget(current, "ckpt_name");
    if (widget) return { name: String(widget.value ?? ""), via, error: null };
    const title = current.title ?? nodeType(current);
    if (!current.inputs?.some((input) => input.name === "model")) {
      return { name: null, via, error: `The model comes from "${title}", not from a Load Checkpoint node.` };
    }
    via.push(title);
    current = inputNode(current, "model");
  }
  return { name: null, via, error: "Connect Train LoRA's model input to a Load Checkpoint node." };
}

/** The request for POST /style_lora/plan, or {error} when the chain is not connected yet. */
export function planRequest(trainNode) {
  const source = datasetSource(trainNode);
  if (!source.load) return { error: source.error };
  const body = {
    load_dataset: widgetValues(source.load),
    train_lora: widgetValues(trainNode),
    train_options: null,
    save_epochs: null,
    checkpoint: checkpointSource(trainNode).name || null,
  };
  const options = inputNode(trainNode, "options");
  if (options && nodeType(options) === TRAIN_OPTIONS) body.train_options = widgetValues(options);
  let savers = [];
  try {
    savers = outputNodes(trainNode, "run").filter((n) => nodeType(n) === SAVE_EPOCHS);
  } catch {
    savers = [];
  }
  if (savers.length) {
    const { save, n } = widgetValues(savers[0]);
    body.save_epochs = { ...(save !== undefined ? { save } : {}), ...(n !== undefined ? { n } : {}) };
  }
  return body;
}

/** A string that changes whenever the plan would. */
export function planKey(request) {
  return JSON.stringify(request);
}

const KEY_FIGURES = /^ {2}(memory on |measured in the warm-up:|it does not fit:|time:)/;

/**
 * The answer's lines, each {text, level}: "warn" for the guide's misses and what does not fit. The
 * text's title line is left out (the panel has its own); memory and time come right after the step
 * counts, above the checks and the disk, so the panel's first lines answer "does it fit, how long".
 */
export function planLines(answer) {
  let lines = String(answer?.text ?? "").split("\n").filter((line) => line.trim());
  if (lines[0] === "Pre-flight plan") lines.shift();
  const key = lines.filter((line) => KEY_FIGURES.test(line));
  lines = [...lines.slice(0, 1), ...key, ...lines.slice(1).filter((line) => !KEY_FIGURES.test(line))];
  return lines.map((text) => {
    const warn = text.includes("[!!]") || /does not fit/.test(text) || (answer?.fits === false && /memory/.test(text));
    return { text: text.replace(/^ {2}/, ""), level: warn ? "warn" : "ok" };
  });
}

/** The Measure button's label for an answer (null: not asked yet). */
export function measureLabel(answer, measuring) {
  if (measuring) return "Measuring…";
  return answer?.measured ? "Measure again" : "Measure memory & time";
}
