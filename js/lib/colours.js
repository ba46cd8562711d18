// Link colours for the pack's socket types.
// ComfyUI frontend 1.49 colours links from LGraphCanvas.link_type_colors and slots from
// app.canvas.default_connection_color_byType; whenever a colour palette loads it first sets every
// known type to "" and then copies the palette's colours (loadLinkColorPalette), which would wipe
// colours an extension set earlier. So each entry becomes an accessor: a palette colour that is
// set wins, an empty one falls back to ours. Nodes 2.0 (Vue nodes) read CSS variables
// --color-datatype-<TYPE>, which a stylesheet rule provides as the fallback.
// Pure module: no DOM access on import, no ComfyUI imports.

export const TYPE_COLOURS = Object.freeze({
  STYLE_LORA_DATASET: "#7bbf8b",
  STYLE_LORA_RUN: "#e0a458",
  STYLE_LORA_EPOCHS: "#d07cc4",
});

const MARK = Symbol.for("style_lora_trainer.colour");

/** Make table[type] read as ``colour`` unless something stores a non-empty colour there. */
export function installDefaultColours(table, colours = TYPE_COLOURS) {
  if (!table || typeof table !== "object") return false;
  for (const [type, colour] of Object.entries(colours)) {
    const current = Object.getOwnPropertyDescriptor(table, type);
    if (current?.get?.[MARK]) continue;
    if (current && !current.configurable) continue;
    let stored = current && "value" in current ? current.value : undefined;
    if (stored === colour) stored = undefined;
    const get = () => stored || colour;
    get[MARK] = true;
    Object.defineProperty(table, type, {
      configurable: true,
      enumerable: true,
      get,
      set(value) {
        stored = value;
      },
    });
  }
  return true;
}

/** The CSS text giving Vue nodes the same colours (a palette's inline variables still win). */
export function colourCss(colours = TYPE_COLOURS) {
  const lines = Object.entries(colours).map(([type, colour]) => `  --color-datatype-${type}: ${colour};`);
  return `:root {\n${lines.join("\n")}\n}\n`;
}
