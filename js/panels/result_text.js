// A node's text result (training summary, saved LoRA names) shown in the node after it runs: a
// read-only, unsaved textarea widget. ComfyUI's app comes from the entry; nothing happens on import.
import CONTRACT from "../lib/contract.json" with { type: "json" };
import { addUnsavedWidget, el, growToMinHeight, markDirty, routeWheel } from "../lib/dom.js";
import { findWidget } from "../lib/graph.js";

export function showResultText(node, text, app) {
  let widget = findWidget(node, "result");
  if (!widget) {
    const area = el("textarea", { class: "slt-result", readOnly: true, spellcheck: false });
    routeWheel(area, app);
    widget = addUnsavedWidget(node, "result", "style_lora_result", area, {
      minHeight: CONTRACT.result_text.min_height,
      getValue: () => area.value,
      setValue: (value) => {
        area.value = value ?? "";
      },
    });
  }
  widget.value = text;
  growToMinHeight(node);
  markDirty(node, app);
}
