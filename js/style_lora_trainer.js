// Style LoRA Trainer: frontend extension (no build step; ComfyUI frontend 1.49+). The entry, and
// the only module that imports ComfyUI (../../scripts/app.js, api.js) or registers anything:
// - the pack's socket types get their own link colours; the panels' styles are a stylesheet link;
// - Caption Editor, Shuffle Caption, Train LoRA and Epoch × Weight Grid nodes get their panel
//   (./panels/*.js), handed ComfyUI's app, the pack's routes (./lib/api.js) and the live panels;
// - the training events go to the Train LoRA panels, the grid's execution output to its picker;
//   a node's text result is shown in the node.
// ComfyUI imports every .js file under js/ as an extension, so every other module only exports.
// Event names and panel sizes are in ./lib/contract.json, shared with the Python side. The server
// side of every request and event is described in docs/CANVAS.md.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

import CONTRACT from "./lib/contract.json" with { type: "json" };
import { createServerApi } from "./lib/api.js";
import { colourCss, installDefaultColours, TYPE_COLOURS } from "./lib/colours.js";
import { addStyle, addStylesheet, ensureWidth } from "./lib/dom.js";
import { CAPTION_EDITOR, EPOCH_WEIGHT_GRID, LOAD_DATASET, nodeType, PICK_EPOCH, SHUFFLE_CAPTION,
  TRAIN } from "./lib/graph.js";
import { createPanelRegistry } from "./lib/registry.js";
import { CaptionGallery } from "./panels/caption_gallery.js";
import { GridPicker } from "./panels/grid_picker.js";
import { showResultText } from "./panels/result_text.js";
import { ShufflePreview } from "./panels/shuffle_preview.js";
import { TrainingPanel } from "./panels/training_chart.js";

const SAVE_EPOCHS = "StyleLoRASaveEpochs";
const OUR_NODES = new Set([LOAD_DATASET, CAPTION_EDITOR, SHUFFLE_CAPTION, TRAIN, SAVE_EPOCHS, EPOCH_WEIGHT_GRID,
  PICK_EPOCH]);
const PANEL_CLASSES = new Map([[CAPTION_EDITOR, CaptionGallery], [SHUFFLE_CAPTION, ShufflePreview], [TRAIN, TrainingPanel],
  [EPOCH_WEIGHT_GRID, GridPicker]]);
const TRAIN_EVENTS = Object.values(CONTRACT.events);
const POLL_MS = 700;
const STYLESHEET_ID = "style-lora-trainer-css";
const COLOURS_ID = "style-lora-trainer-colours";

const registry = createPanelRegistry();
const panels = registry.panels;
const context = { app, server: createServerApi(api), panels };

function injectStyles() {
  addStylesheet(STYLESHEET_ID, new URL("./style_lora_trainer.css", import.meta.url));
  addStyle(COLOURS_ID, colourCss(TYPE_COLOURS)); // Nodes 2.0 reads the link colours from CSS variables
}

function applyLinkColours() {
  installDefaultColours(globalThis.LGraphCanvas?.link_type_colors);
  installDefaultColours(app.canvas?.constructor?.link_type_colors);
  installDefaultColours(app.canvas?.default_connection_color_byType);
}

function attachPanel(node) {
  const type = nodeType(node);
  if (node.styleLoraPanel) return node.styleLoraPanel;
  const Panel = PANEL_CLASSES.get(type);
  if (!Panel) return null;
  const panel = new Panel(node, context);
  const { min_width: width, min_height: height } = CONTRACT.panels[type];
  ensureWidth(node, width, height);
  node.styleLoraPanel = panel;
  registry.register(panel);
  if (!(panel instanceof TrainingPanel)) setTimeout(() => node.graph && panel.check(), 0);
  return panel;
}

function trainingPanels() {
  return [...panels].filter((p) => p instanceof TrainingPanel);
}

app.registerExtension({
  name: "StyleLoRATrainer",
  async setup() {
    injectStyles();
    applyLinkColours();
    for (const name of TRAIN_EVENTS) {
      api.addEventListener(name, ({ detail }) => {
        for (const panel of trainingPanels()) if (panel.matches(detail)) panel.onEvent(name, detail);
      });
    }
    // Events sent while the socket was down are lost: read the server's history again.
    api.addEventListener("reconnected", () => {
      for (const panel of trainingPanels()) panel.refresh();
    });
    setInterval(registry.poll, POLL_MS);
  },
  async nodeCreated(node) {
    if (!OUR_NODES.has(nodeType(node))) return;
    applyLinkColours();
    const panel = attachPanel(node);
    if (panel instanceof TrainingPanel) {
      // A node loaded from a workflow gets its saved id after this call.
      setTimeout(() => panel.refresh(), 0);
    }
  },
  async afterConfigureGraph() {
    applyLinkColours();
    for (const panel of panels) {
      if (!panel.node.graph) continue;
      if (panel instanceof TrainingPanel) panel.refresh();
      else if (panel instanceof CaptionGallery) {
        panel.loadedKey = null; // the workflow's edits and folder: read everything again
        panel.check();
      } else panel.check();
    }
  },
  async beforeRegisterNodeDef(nodeType_, nodeData) {
    if (!OUR_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType_.prototype.onExecuted;
    nodeType_.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text?.length) showResultText(this, message.text.join("\n"), app);
      if (nodeData.name === TRAIN) this.styleLoraPanel?.refresh?.();
      if (nodeData.name === EPOCH_WEIGHT_GRID) this.styleLoraPanel?.onExecuted?.(message);
      // New epoch files: refresh the node definitions so LoraLoader's list shows them at once
      // (what pressing R does), instead of the user wondering where the files went.
      if (nodeData.name === SAVE_EPOCHS && message?.text?.length) app.refreshComboInNodes?.()?.catch?.(() => {});
    };
  },
});
