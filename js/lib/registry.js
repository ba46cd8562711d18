// The live panels: one registry, one poll that notices upstream changes (folder, links, widgets,
// edits) by calling each panel's check(). A panel is {node, check(), dispose?()}. No side effects
// on import: the entry creates the registry and runs the poll.

export function createPanelRegistry() {
  const panels = new Set();

  /** Remember ``panel`` until its node is removed (node.onRemoved) or leaves its graph. */
  function register(panel) {
    panels.add(panel);
    const node = panel.node;
    const onRemoved = node.onRemoved;
    node.onRemoved = function () {
      panel.dispose?.();
      panels.delete(panel);
      return onRemoved?.apply(this, arguments);
    };
  }

  function poll() {
    if (typeof document !== "undefined" && document.hidden) return;
    for (const panel of panels) {
      if (!panel.node.graph) {
        // Gone with its graph (a workflow closed or reloaded, undo) without onRemoved: forget it.
        // (A node not added to a graph yet has never been seen in one.)
        if (panel.seenInGraph) {
          panel.dispose?.();
          panels.delete(panel);
        }
        continue;
      }
      panel.seenInGraph = true;
      try {
        panel.check();
      } catch (error) {
        console.warn("[Style LoRA] panel update failed:", error);
      }
    }
  }

  return { panels, register, poll };
}
