import { test } from "node:test";
import assert from "node:assert/strict";

import { checkpointSource, measureLabel, planKey, planLines, planRequest, widgetNames } from "../../js/lib/plan.js";

/** LiteGraph-like nodes with inputs, widgets, outputs and a graph of links (origin -> target). */
function makeGraph() {
  const nodes = new Map();
  const links = new Map();
  const graph = { links, getNodeById: (id) => nodes.get(id) };
  let nextLink = 1;
  return {
    add(type, widgets = {}, inputs = [], outputs = [], spec = null) {
      const node = {
        id: nodes.size + 1, type, comfyClass: type, title: type, graph,
        inputs: inputs.map((name) => ({ name, link: null })),
        outputs: outputs.map((name) => ({ name, links: [] })),
        widgets: Object.entries(widgets).map(([name, value]) => ({ name, value })),
        getInputNode(slot) {
          const link = links.get(this.inputs[slot]?.link);
          return link ? nodes.get(link.origin_id) : null;
        },
      };
      if (spec) node.constructor = { nodeData: { input: spec } };
      nodes.set(node.id, node);
      return node;
    },
    connect(origin, output, target, inputName) {
      const id = nextLink++;
      links.set(id, { origin_id: origin.id, target_id: target.id });
      target.inputs.find((i) => i.name === inputName).link = id;
      origin.outputs.find((o) => o.name === output).links.push(id);
    },
  };
}

function chain() {
  const g = makeGraph();
  const ckpt = g.add("CheckpointLoaderSimple", { ckpt_name: "sd15.safetensors" }, [], ["MODEL", "CLIP", "VAE"]);
  const lora = g.add("LoraLoader", { lora_name: "x.safetensors", strength_model: 1, strength_clip: 1 },
    ["model", "clip"], ["MODEL", "CLIP"]);
  const load = g.add("StyleLoRALoadDataset", { folder: "daumier", repeats: 10, resolution: 512 }, ["clip"], ["dataset", "report"]);
  const options = g.add("StyleLoRATrainOptions", { min_snr_gamma: 5 }, [], ["options"]);
  const train = g.add("StyleLoRATrain", { rank: 32, alpha: 16, epochs: 20, batch_size: 4, training_panel: { x: 1 } },
    ["model", "clip", "vae", "dataset", "options"], ["run", "loss_plot", "summary", "plan"],
    { required: { model: ["MODEL"], dataset: ["STYLE_LORA_DATASET"], rank: ["INT", {}], alpha: ["FLOAT", {}],
      epochs: ["INT", {}], batch_size: ["INT", {}], preset: [["guide", "custom"]] },
    optional: { options: ["STYLE_LORA_TRAIN_OPTIONS"] } });
  const save = g.add("StyleLoRASaveEpochs", { name: "daumier", save: "last_k", n: 3 }, ["run"], ["epochs"]);
  g.connect(ckpt, "MODEL", lora, "model");
  g.connect(lora, "MODEL", train, "model");
  g.connect(load, "dataset", train, "dataset");
  g.connect(options, "options", train, "options");
  g.connect(train, "run", save, "run");
  return { g, ckpt, lora, load, options, train, save };
}

test("the request carries the chain's widgets and the checkpoint behind a LoRA loader", () => {
  const { train } = chain();
  const body = planRequest(train);
  assert.deepEqual(body, {
    load_dataset: { folder: "daumier", repeats: 10, resolution: 512 },
    // from the node's definition: its widget inputs only (not model/dataset links, not the panel widget)
    train_lora: { rank: 32, alpha: 16, epochs: 20, batch_size: 4 },
    train_options: { min_snr_gamma: 5 },
    save_epochs: { save: "last_k", n: 3 },
    checkpoint: "sd15.safetensors",
  });
  assert.deepEqual(checkpointSource(train), { name: "sd15.safetensors", via: ["LoraLoader"], error: null });
});

test("widget names: the definition's widget inputs, else the node's plain widgets", () => {
  const { train, load } = chain();
  assert.deepEqual(widgetNames(train), ["rank", "alpha", "epochs", "batch_size"]);
  assert.deepEqual(widgetNames(load), ["folder", "repeats", "resolution"]);
});

test("a chain not connected yet says what to connect; a model not from a checkpoint has no name", () => {
  const g = makeGraph();
  const train = g.add("StyleLoRATrain", { rank: 32 }, ["model", "dataset"], ["run"]);
  assert.match(planRequest(train).error, /Load Dataset/);
  const unet = g.add("UNETLoader", { unet_name: "u.safetensors" }, [], ["MODEL"]);
  const load = g.add("StyleLoRALoadDataset", { folder: "d" }, [], ["dataset"]);
  g.connect(unet, "MODEL", train, "model");
  g.connect(load, "dataset", train, "dataset");
  assert.equal(planRequest(train).checkpoint, null);
  assert.match(checkpointSource(train).error, /UNETLoader.*not from a Load Checkpoint/);
});

test("the key changes with any widget; lines flag the guide's misses", () => {
  const { train } = chain();
  const before = planKey(planRequest(train));
  train.widgets.find((w) => w.name === "rank").value = 16;
  assert.notEqual(planKey(planRequest(train)), before);
  const lines = planLines({ text: "Pre-flight plan\n  [ok] 40 images\n  [!!] 12 epochs (the guide: 20)\n", fits: null });
  assert.deepEqual(lines.map((l) => [l.text, l.level]), [["[ok] 40 images", "ok"],
    ["[!!] 12 epochs (the guide: 20)", "warn"]]);
  assert.equal(planLines({ text: "  memory on cuda: about 30 GiB", fits: false })[0].level, "warn");
  const measured = planLines({ text: "Pre-flight plan\n  4 images x 10 repeats\n  [ok] 40 images\n  disk: 1 GiB\n" +
    "  memory on cpu: about 5 GiB at its peak\n  measured in the warm-up: 5 GiB\n  time: 2 s/step", fits: true });
  assert.deepEqual(measured.map((l) => l.text.split(" ")[0]), ["4", "memory", "measured", "time:", "[ok]", "disk:"]);
  assert.equal(measureLabel(null, false), "Measure memory & time");
  assert.equal(measureLabel({ measured: true }, false), "Measure again");
  assert.equal(measureLabel({ measured: true }, true), "Measuring…");
});
