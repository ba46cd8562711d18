// Style LoRA Trainer: frontend extension (no build step).
// - gives the pack's socket types their own link colours;
// - shows a node's text result (training summary, saved LoRA names) in the node;
// - shows live training status under TrainLoRA from the style_lora.train_step event.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const TYPE_COLOURS = {
  STYLE_LORA_DATASET: "#7bbf8b",
  STYLE_LORA_RUN: "#e0a458",
  STYLE_LORA_EPOCHS: "#d07cc4",
};
const OUR_NODES = new Set([
  "StyleLoRALoadDataset", "StyleLoRACaptionEditor", "StyleLoRAShuffleCaption",
  "StyleLoRATrain", "StyleLoRASaveEpochs", "StyleLoRAEpochWeightGrid",
]);

function textWidget(node, name) {
  let widget = node.widgets?.find((w) => w.name === name);
  if (!widget) {
    widget = node.addWidget("text", name, "", () => {}, { multiline: true });
    widget.serialize = false; // results are not part of the saved workflow
    if (widget.inputEl) widget.inputEl.readOnly = true;
  }
  return widget;
}

app.registerExtension({
  name: "StyleLoRATrainer",
  async setup() {
    const canvasType = globalThis.LGraphCanvas;
    for (const [type, colour] of Object.entries(TYPE_COLOURS)) {
      if (canvasType?.link_type_colors) canvasType.link_type_colors[type] = colour;
      if (app.canvas?.default_connection_color_byType) {
        app.canvas.default_connection_color_byType[type] = colour;
      }
    }
    api.addEventListener("style_lora.train_step", ({ detail }) => {
      const node = app.graph?.getNodeById?.(Number(detail.node));
      if (!node) return;
      const eta = Math.round(detail.eta_seconds);
      textWidget(node, "status").value =
        `epoch ${detail.epoch}/${detail.num_epochs} · step ${detail.step}/${detail.total_steps}` +
        ` · loss ${detail.loss.toFixed(4)} · d·lr ${detail.dlr.toExponential(2)}` +
        ` · ETA ${Math.floor(eta / 60)}:${String(eta % 60).padStart(2, "0")}`;
      node.setDirtyCanvas?.(true, false);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!OUR_NODES.has(nodeData.name)) return;
    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text?.length) textWidget(this, "result").value = message.text.join("\n");
    };
  },
});
