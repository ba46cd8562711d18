import { test } from "node:test";
import assert from "node:assert/strict";

import { chainKey, datasetSource, inputNode, sourceKey, widgetValue } from "../../js/lib/graph.js";
import { applyEditChain } from "../../js/lib/captions.js";

/** A minimal LiteGraph-like graph: nodes with inputs/widgets and getInputNode(slot). */
function makeGraph() {
  const nodes = new Map();
  const links = new Map();
  let nextLink = 1;
  const graph = {
    add(type, widgets = {}, inputs = []) {
      const node = {
        id: nodes.size + 1,
        type,
        comfyClass: type,
        title: type,
        inputs: inputs.map((name) => ({ name, link: null })),
        widgets: Object.entries(widgets).map(([name, value]) => ({ name, value })),
        getInputNode(slot) {
          const link = links.get(this.inputs[slot]?.link);
          return link ? nodes.get(link.origin) : null;
        },
      };
      nodes.set(node.id, node);
      return node;
    },
    connect(origin, target, inputName) {
      const id = nextLink++;
      links.set(id, { origin: origin.id });
      target.inputs.find((i) => i.name === inputName).link = id;
    },
  };
  return graph;
}

function pipeline() {
  const g = makeGraph();
  const load = g.add("StyleLoRALoadDataset", { folder: "daumier", caption_extension: ".caption" }, ["clip"]);
  const editor1 = g.add("StyleLoRACaptionEditor", { prefix: "daumier style", suffix: "", find: "", replace: "",
    write_back: false, edits: '{"overrides": {"a.png": "a man, a hat"}}' }, ["dataset", "captions"]);
  const reroute = g.add("Reroute", {}, [""]);
  const shuffle = g.add("StyleLoRAShuffleCaption", { enabled: true, separator: " | ", keep_tokens: 1, seed: 0,
    preview_count: 3 }, ["dataset"]);
  const editor2 = g.add("StyleLoRACaptionEditor", { prefix: "", suffix: "lithography", find: "man", replace: "gentleman",
    write_back: false, edits: "{}" }, ["dataset", "captions"]);
  const train = g.add("StyleLoRATrain", {}, ["dataset"]);
  g.connect(load, editor1, "dataset");
  g.connect(editor1, reroute, "");
  g.connect(reroute, shuffle, "dataset");
  g.connect(shuffle, editor2, "dataset");
  g.connect(editor2, train, "dataset");
  return { g, load, editor1, reroute, shuffle, editor2, train };
}

test("inputNode follows Reroute nodes", () => {
  const { shuffle, editor1, load } = pipeline();
  assert.equal(inputNode(shuffle, "dataset"), editor1);
  assert.equal(inputNode(load, "clip"), null);
  assert.equal(inputNode(load, "no such input"), null);
});

test("datasetSource finds Load Dataset through editors, reroutes and shuffles", () => {
  const { train, editor2, shuffle, editor1 } = pipeline();
  const source = datasetSource(train);
  assert.equal(source.error, null);
  assert.equal(source.folder, "daumier");
  assert.equal(source.caption_extension, ".caption");
  assert.deepEqual(source.chain.map((c) => c.node), [editor1, editor2]);
  // editor1 sees no shuffle upstream (","), editor2 sits below the " | " shuffle.
  assert.deepEqual(source.chain.map((c) => c.separator), [",", " | "]);
  assert.equal(source.chain[0].edits.prefix, "daumier style");
  assert.deepEqual(source.chain[0].edits.overrides, { "a.png": "a man, a hat" });
  assert.equal(source.separator, " | ");
  // What the trainer gets for a.png: editor1's override + prefix, then editor2's find/replace + suffix.
  assert.equal(applyEditChain("ignored", "a.png", source.chain),
    "daumier style, a gentleman, a hat | lithography");
  // The shuffle node's own source: only editor1 upstream.
  assert.deepEqual(datasetSource(shuffle).chain.map((c) => c.node), [editor1]);
  assert.deepEqual(datasetSource(editor1).chain, []);
});

test("datasetSource explains a missing or wrong connection", () => {
  const g = makeGraph();
  const editor = g.add("StyleLoRACaptionEditor", { edits: "{}" }, ["dataset"]);
  assert.match(datasetSource(editor).error, /Connect the dataset input/);
  const other = g.add("SomethingElse", {}, []);
  g.connect(other, editor, "dataset");
  assert.match(datasetSource(editor).error, /SomethingElse/);
  assert.equal(sourceKey(datasetSource(editor)).startsWith("error:"), true);
});

test("a folder widget turned into an input reads the connected primitive", () => {
  const g = makeGraph();
  const load = g.add("StyleLoRALoadDataset", { folder: "stale", caption_extension: ".txt" }, ["folder"]);
  const primitive = g.add("PrimitiveNode", { value: "from_primitive" }, []);
  g.connect(primitive, load, "folder");
  assert.equal(widgetValue(load, "folder"), "from_primitive");
  const editor = g.add("StyleLoRACaptionEditor", { edits: "{}" }, ["dataset"]);
  g.connect(load, editor, "dataset");
  assert.equal(datasetSource(editor).folder, "from_primitive");
});

test("keys change exactly when the folder or the upstream edits change", () => {
  const { train, load, editor1 } = pipeline();
  const key1 = sourceKey(datasetSource(train));
  const chain1 = chainKey(datasetSource(train));
  editor1.widgets.find((w) => w.name === "prefix").value = "other";
  assert.equal(sourceKey(datasetSource(train)), key1);
  assert.notEqual(chainKey(datasetSource(train)), chain1);
  load.widgets.find((w) => w.name === "folder").value = "elsewhere";
  assert.notEqual(sourceKey(datasetSource(train)), key1);
});

test("an unreadable upstream edits JSON is reported, not thrown", () => {
  const { train, editor1 } = pipeline();
  editor1.widgets.find((w) => w.name === "edits").value = "{broken";
  const source = datasetSource(train);
  assert.match(source.chain[0].error, /not valid JSON/);
  assert.deepEqual(source.chain[0].edits.overrides, {});
});

test("a connected captions input is flagged", () => {
  const { g, train, editor1 } = pipeline();
  const captioner = g.add("SomeCaptioner", {}, []);
  g.connect(captioner, editor1, "captions");
  assert.equal(datasetSource(train).captionsInput, "StyleLoRACaptionEditor");
});
