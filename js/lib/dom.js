// Small DOM and widget helpers shared by the panels (js/panels/*.js) and the extension entry.
// ComfyUI's `app` is passed in where one is needed, never imported. No side effects on import:
// `document` and `Node` are only read when a function is called.
import { findWidget } from "./graph.js";

/** document.createElement with properties, attributes, listeners and children in one call. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (value === false && !(key in node)) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key in node && typeof value !== "string") node[key] = value;
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Add <link rel="stylesheet" id=… href=…> to the document's head unless an element with that id is there. */
export function addStylesheet(id, href) {
  if (document.getElementById(id)) return null;
  const link = el("link", { id, rel: "stylesheet", href: String(href) });
  document.head.append(link);
  return link;
}

/** Add <style id=…> with ``css`` to the document's head unless an element with that id is there. */
export function addStyle(id, css) {
  if (document.getElementById(id)) return null;
  const style = el("style", { id, text: css });
  document.head.append(style);
  return style;
}

export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      timer = null;
      fn(...args);
    }, ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

export function markDirty(node, app) {
  node.setDirtyCanvas?.(true, true);
  app.graph?.setDirtyCanvas?.(true, true);
}

/**
 * Run ``change`` (widget values the pack sets, not LiteGraph) inside the frontend's before/after
 * change pair, so its change tracker records it: undo, the "modified" mark and the workflow kept
 * across a reload. A click's mouseup is captured before its onclick runs, so without this the
 * frontend would not see the change until the next user event.
 */
export function recordChange(app, change) {
  const canvas = app?.canvas;
  const pair = typeof canvas?.emitBeforeChange === "function" && typeof canvas?.emitAfterChange === "function"
    ? [() => canvas.emitBeforeChange(), () => canvas.emitAfterChange()]
    : [() => app?.graph?.beforeChange?.(), () => app?.graph?.afterChange?.()]; // older frontends
  pair[0]();
  try {
    return change();
  } finally {
    pair[1]();
  }
}

/** Scroll the panel itself; Ctrl+wheel and wheels it cannot use still zoom/pan the canvas. */
export function routeWheel(scroller, app) {
  scroller.addEventListener("wheel", (event) => {
    const canScroll = scroller.scrollHeight > scroller.clientHeight + 1;
    const down = event.deltaY > 0;
    const atEdge = down ? scroller.scrollTop + scroller.clientHeight >= scroller.scrollHeight - 1 : scroller.scrollTop <= 0;
    if (!event.ctrlKey && canScroll && !atEdge && Math.abs(event.deltaY) >= Math.abs(event.deltaX)) {
      event.stopPropagation();
      return;
    }
    if (typeof app.canvas?.processMouseWheel === "function") {
      event.preventDefault();
      event.stopPropagation();
      app.canvas.processMouseWheel(event);
    }
  }, { passive: false });
}

/**
 * A DOM widget that is neither an input of the node nor saved in the workflow. ``minHeight`` is a
 * number, or a function for a panel that grows (the frontend asks again on every layout).
 */
export function addUnsavedWidget(node, name, type, element, { minHeight, getValue = () => "", setValue = () => {} }) {
  const widget = node.addDOMWidget(name, type, element, {
    serialize: false, // not an input of the node
    hideOnZoom: true,
    getValue,
    setValue,
    getMinHeight: typeof minHeight === "function" ? minHeight : () => minHeight,
  });
  widget.serialize = false; // not saved in the workflow either
  return widget;
}

export function addPanelWidget(node, name, element, minHeight) {
  return addUnsavedWidget(node, name, "style_lora_panel", element, { minHeight }); // everything shown is derived
}

export function ensureWidth(node, width, height) {
  if (!(node.size?.length >= 2)) return;
  const [w, h] = node.size;
  if (w < width || h < height) node.setSize?.([Math.max(w, width), Math.max(h, height)]);
}

/** Grow the node to its computed height (after a widget was shown or added). */
export function growToMinHeight(node) {
  const [w, h] = node.size ?? [0, 0];
  const min = node.computeSize?.();
  if (min && h < min[1]) node.setSize?.([w, min[1]]);
}

/** Call ``fn`` after the callback of each named widget (the widget's own callback runs first). */
export function hookWidgetCallbacks(node, names, fn) {
  for (const name of names) {
    const widget = findWidget(node, name);
    if (!widget) continue;
    const callback = widget.callback;
    widget.callback = function () {
      const result = callback?.apply(this, arguments);
      fn();
      return result;
    };
  }
}
