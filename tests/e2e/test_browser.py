"""Browser tier of ``make e2e``: the pack in a real ComfyUI, driven through ComfyUI's real frontend
(``comfyui_frontend_package`` as installed with ComfyUI) in headless Chromium.

Needs what the rest of tests/e2e needs (``COMFYUI_DIR``, ``COMFYUI_PYTHON``) plus Playwright for
Python (``requirements-e2e.txt``) and a system Chromium (``/usr/bin/chromium``); each missing piece
skips the module with the reason. Shares the session's ComfyUI (conftest.py runs this module last,
since it adds files to the server's input and loras folders). The page may only reach 127.0.0.1.

Checked:

* the frontend starts (no first-run template dialog: settings are posted first), the pack's
  extension is loaded and a graph of the pack's nodes built in the page runs;
* every ``workflows/*.json`` loads with ``app.loadGraphData`` with no unknown node type, no
  missing-nodes report and no error from the pack; ``app.graphToPrompt()``'s output, with the test
  checkpoint (and a real LoRA file) in place of the example's model names, is accepted by
  ``POST /prompt`` with no ``node_errors``. Accepted prompts are not run to the end: each one is
  taken off the queue (``POST /queue {"delete"}``) and interrupted (``POST /interrupt`` with its
  prompt id) at once, and the test waits until the queue is empty again;
* the caption editor gallery shows a dataset's thumbnails (loaded images); a caption typed into
  its textarea is in the node's ``edits`` widget and in the workflow ``graphToPrompt`` saves; the
  gallery's save button writes that caption file on disk (and no other), after which the gallery
  shows the file's text and the edit stays in ``edits`` (the workflow keeps carrying it);
* the Train LoRA panel's plan before Queue: built in the page, the chain's plan appears (steps, the
  guide's misses, the checkpoint's family, disk, free memory) and follows a widget change; a real
  mouse click on Measure runs the warm-up in ComfyUI (the peak memory and s/step), and none of it
  queues a prompt; after a reload the measured plan is shown again;
* a short training queued from the page (``app.queuePrompt``, as Run does; 2 images, 2 epochs of
  2 steps, batch 1, 64 px) fills ``node.styleLoraChart`` while running; a page reload mid-run
  rebuilds it from ``GET /style_lora/training``; at the end it holds every step (equal to the
  route's points) and both epoch markers, also after another reload; the Epoch × Weight grid of
  the run appears in its PreviewImage node.

Screenshots go to ``tests/e2e/artifacts/`` (gitignored). With ``STYLE_LORA_SCREENSHOTS_TO=docs/img``
the caption editor, training chart, grid, sample strip and grid picker screenshots are also copied
there for the README.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from browser_harness import FRONTEND_SETTINGS, VIEWPORT, BrowserSession, copy_to_docs, unavailable_reason
from comfy_harness import REPO, error_text
from PIL import Image, ImageDraw

# Checked at collection, so a missing browser skips before ComfyUI is started or the checkpoint built.
BROWSER_MISSING = unavailable_reason()
pytestmark = [pytest.mark.e2e, pytest.mark.skipif(BROWSER_MISSING is not None, reason=BROWSER_MISSING or "")]

WORKFLOWS_DIR = REPO / "workflows"
EXPECTED_WORKFLOWS = ["style_lora_full_guide_sd15", "style_lora_full_guide_sdxl", "style_lora_low_vram_sd15",
                      "style_lora_captioning_only", "style_lora_compare_epochs"]
OUR_NODE_TYPES = ["StyleLoRALoadDataset", "StyleLoRACaptionEditor", "StyleLoRAShuffleCaption", "StyleLoRATrain",
                  "StyleLoRASaveEpochs", "StyleLoRAEpochWeightGrid"]
COMPARE_LORA = "browser_compare"  # <name>-00000N.safetensors, made by _write_lora_files
SIZE = 64


def _workflow_names() -> list[str]:
    found = sorted(p.stem for p in WORKFLOWS_DIR.glob("*.json")) if WORKFLOWS_DIR.is_dir() else []
    return sorted(set(EXPECTED_WORKFLOWS) | set(found))


# -- page scripts --------------------------------------------------------------------------------

# Builds a graph in the page from {"name": str, "nodes": {key: {"type", "widgets": {name: value},
# "links": {input: [key, output slot]}}}} in a new workflow, lays it out and fits it in the view;
# returns {key: node id}.
BUILD_GRAPH = """async (spec) => {
  await app.loadGraphData({last_node_id: 0, last_link_id: 0, nodes: [], links: [], groups: [], config: {},
                           extra: {}, version: 0.4}, true, true, spec.name);
  const made = {};
  for (const [key, d] of Object.entries(spec.nodes)) {
    const node = LiteGraph.createNode(d.type);
    if (!node) throw new Error(`no node type ${d.type}`);
    app.graph.add(node);
    for (const [name, value] of Object.entries(d.widgets || {})) {
      const w = node.widgets?.find((x) => x.name === name);
      if (!w) throw new Error(`${d.type} has no widget ${name}`);
      w.value = value;
    }
    if (d.size) node.setSize([Math.max(node.size[0], d.size[0]), Math.max(node.size[1], d.size[1])]);
    made[key] = node;
  }
  for (const [key, d] of Object.entries(spec.nodes)) {
    for (const [input, [src, slot]] of Object.entries(d.links || {})) {
      const target = made[key];
      const index = target.inputs.findIndex((i) => i.name === input);
      if (index < 0) throw new Error(`${d.type} has no input ${input}`);
      if (!made[src].connect(slot, target, index)) throw new Error(`could not link ${src}:${slot} -> ${key}.${input}`);
    }
  }
  if (spec.columns) {  // a readable layout: columns of nodes, top to bottom (again once panels have grown)
    window.__styleLoraRelayout(spec.columns.map((column) => column.map((key) => made[key].id)));
  } else {
    app.graph.arrange(60);
  }
  window.__styleLoraFit(app.graph.nodes);
  return Object.fromEntries(Object.entries(made).map(([k, n]) => [k, n.id]));
}"""

# Fits nodes into the canvas view (LiteGraph: screen = (pos + offset) * scale).
PAGE_HELPERS = """() => {
  window.__styleLoraFit = (nodes, maxScale = 1.0, groups = []) => {
    const title = LiteGraph.NODE_TITLE_HEIGHT || 30;
    let x0 = Infinity, y0 = Infinity, x1 = -Infinity, y1 = -Infinity;
    const boxes = nodes.map((n) => [n.pos[0], n.pos[1] - title, n.size[0], n.size[1] + title]);
    for (const g of groups) boxes.push([g.pos[0], g.pos[1], g.size[0], g.size[1]]);
    for (const [x, y, w, h] of boxes) {
      x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x + w); y1 = Math.max(y1, y + h);
    }
    // Leave room for the side bar (left) and the top bar.
    const el = app.canvas.canvas, left = 90, top = 100, margin = 30;
    const w = el.clientWidth - left - margin, h = el.clientHeight - top - margin;
    const scale = Math.min(maxScale, w / (x1 - x0), h / (y1 - y0));
    app.canvas.ds.scale = scale;
    app.canvas.ds.offset = [left / scale - x0 + (w / scale - (x1 - x0)) / 2,
                            top / scale - y0 + (h / scale - (y1 - y0)) / 2];
    app.canvas.setDirty(true, true);
    return {scale, bounds: [x0, y0, x1, y1]};
  };
  window.__styleLoraRelayout = (columns) => {
    const title = LiteGraph.NODE_TITLE_HEIGHT || 30;
    let x = 0;
    for (const column of columns) {
      let y = 0, width = 0;
      for (const id of column) {
        const node = app.graph.getNodeById(id);
        node.pos = [x, y + title];
        y += node.size[1] + title + 40;
        width = Math.max(width, node.size[0]);
      }
      x += width + 60;
    }
    window.__styleLoraFit(app.graph.nodes);
  };
  // Keep the answers of the frontend's POST /prompt calls (prompt ids, node_errors).
  if (!app.api.__styleLoraWrapped) {
    const original = app.api.queuePrompt;
    window.__styleLoraQueued = [];
    app.api.queuePrompt = async function (...args) {
      try {
        const answer = await original.apply(this, args);
        window.__styleLoraQueued.push(answer);
        return answer;
      } catch (e) {
        window.__styleLoraQueued.push({error: String(e), response: e && e.response});
        throw e;
      }
    };
    app.api.__styleLoraWrapped = true;
  }
  return true;
}"""

# Screen rectangle of a node (for a clipped screenshot).
NODE_RECT = """(id) => {
  const n = app.graph.getNodeById(id), ds = app.canvas.ds, title = LiteGraph.NODE_TITLE_HEIGHT || 30;
  const r = app.canvas.canvas.getBoundingClientRect();
  return {x: r.left + (n.pos[0] + ds.offset[0]) * ds.scale, y: r.top + (n.pos[1] - title + ds.offset[1]) * ds.scale,
          width: n.size[0] * ds.scale, height: (n.size[1] + title) * ds.scale};
}"""

LOAD_WORKFLOW = """async ({wf, name}) => {
  const reg = LiteGraph.registered_node_types;
  const all = [...(wf.nodes || []), ...((wf.definitions && wf.definitions.subgraphs) || []).flatMap((s) => s.nodes || [])];
  const unknown = all.filter((n) => !(n.type in reg)).map((n) => `${n.id}:${n.type}`);
  const missing = [];
  const original = app.showMissingNodesError;
  app.showMissingNodesError = function (types, ...rest) { missing.push(types); return original.call(this, types, ...rest); };
  try {
    // skipAssetScans: the examples name checkpoints this server does not have (the test swaps in
    // its own); without it a "model is missing" toast covers the screenshot.
    await app.loadGraphData(wf, true, true, name, {skipAssetScans: true});
  } finally {
    app.showMissingNodesError = original;
  }
  await new Promise((r) => setTimeout(r, 300));
  window.__styleLoraFit(app.graph.nodes, 1.0, app.graph.groups || app.graph._groups || []);
  const nodes = app.graph.nodes.map((n) => ({id: n.id, type: n.type, registered: n.type in reg,
                                             gallery: !!n.styleLoraGallery, chart: !!n.styleLoraChart}));
  const p = await app.graphToPrompt();
  return {unknown, missing, nodes, output: p.output, workflow: p.workflow};
}"""


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ui(comfy_server):
    comfy_server.post_json("/settings", FRONTEND_SETTINGS)
    session = BrowserSession(comfy_server.url).start()
    try:
        took = session.open()
        session.eval(PAGE_HELPERS)
        print(f"\nbrowser: ComfyUI frontend ready in {took:.1f} s")
        yield session
    finally:
        # Everything the page complained about, for reading after a run (ours fail the tests).
        session.dump("browser_log", {"blocked_requests": session.blocked, "page_errors": session.page_errors,
                                     "console": session.console, "http_errors": session.http_errors,
                                     "pack_requests": len(session.pack_requests)})
        session.close()


def _reopen(ui: BrowserSession) -> float:
    took = ui.open()
    ui.eval(PAGE_HELPERS)
    return took


def _run_from_page(ui: BrowserSession) -> str:
    """Queues the page's graph the way the Run button does (app.queuePrompt); returns the prompt id.
    The page then gets progress, events and results over its own websocket."""
    answer = ui.eval("""async () => {
      const before = window.__styleLoraQueued.length;
      await app.queuePrompt(0, 1);
      return window.__styleLoraQueued[before]
        || {error: 'app.queuePrompt did not call api.queuePrompt', lastNodeErrors: app.lastNodeErrors || null};
    }""")
    assert answer.get("prompt_id"), (f"the frontend did not queue the graph: {answer}; console errors: "
                                     f"{[c['text'] for c in ui.console if c['type'] == 'error'][-5:]}")
    assert not answer.get("node_errors"), answer["node_errors"]
    return answer["prompt_id"]


SAVED_DRAFT_WIDGETS = """(id) => {
  // The open workflow's draft (V2 persistence: an index per workspace maps path hashes to entries,
  // each draft is {data: workflow JSON, updatedAt}); the widgets_values of node ``id`` in it, or null.
  const path = app.extensionManager?.workflow?.activeWorkflow?.path;
  const prefix = 'Comfy.Workflow.DraftIndex.v2:';
  for (const key of Object.keys(localStorage).filter((k) => k.startsWith(prefix))) {
    const index = JSON.parse(localStorage.getItem(key) || '{}');
    const hash = Object.keys(index.entries || {}).find((h) => index.entries[h].path === path);
    if (!hash) continue;
    const payload = JSON.parse(localStorage.getItem(`Comfy.Workflow.Draft.v2:${key.slice(prefix.length)}:${hash}`) || 'null');
    const workflow = typeof payload?.data === 'string' ? JSON.parse(payload.data) : payload?.data;
    const node = (workflow?.nodes || []).find((n) => String(n.id) === String(id));
    return node ? node.widgets_values : null;
  }
  return null;
}"""


def _wait_persisted(ui: BrowserSession, node_id: int, first: str, timeout: float = 10.0) -> list:
    """Until the frontend's saved draft of the open workflow holds node ``node_id`` with ``first`` as its
    first widget value (other workflows' drafts may hold the same text); returns its widgets_values."""
    return ui.wait_for(f"""([id, first]) => {{ const values = ({SAVED_DRAFT_WIDGETS})(id);
        return values && values[0] === first ? values : false; }}""", [node_id, first], timeout=timeout)


def _assert_no_errors_of_ours(ui: BrowserSession, t0: float) -> dict:
    errors = ui.errors_since(t0)
    assert not errors["ours"], "errors from the pack in the page:\n" + "\n".join(errors["ours"])
    return errors


def _make_dataset(input_dir: Path, folder: str, count: int = 4, size: int = 128) -> Path:
    """A few small, distinct PNGs with detailed .txt captions."""
    target = input_dir / folder
    target.mkdir(parents=True, exist_ok=True)
    palette = [(200, 70, 60), (60, 140, 200), (230, 190, 60), (90, 170, 100), (160, 90, 190), (240, 130, 40)]
    rng = np.random.default_rng(len(folder))
    for i in range(count):
        bg = palette[i % len(palette)]
        img = Image.new("RGB", (size, size), tuple(int(c * 0.45) for c in bg))
        draw = ImageDraw.Draw(img)
        for _ in range(5):
            x, y = (int(v) for v in rng.integers(0, size - 24, 2))
            r = int(rng.integers(10, 36))
            colour = palette[int(rng.integers(0, len(palette)))]
            draw.ellipse([x, y, x + r, y + r], fill=colour, outline=(20, 20, 20), width=3)
        draw.rectangle([4, size - 20, size - 4, size - 6], fill=bg, outline=(20, 20, 20), width=2)
        img.save(target / f"img{i}.png")
        (target / f"img{i}.txt").write_text(
            f"a flat gouache painting of round shapes, tone {i}, thick dark outlines, soft warm light", "utf-8")
    return target


def _write_lora_files(loras_dir: Path, name: str, epochs: int = 2) -> list[str]:
    """Small kohya-format LoRA files (one SD1.5 module) that LoraLoader can list and load."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    names = []
    for epoch in range(1, epochs + 1):
        key = "lora_unet_mid_block_attentions_0_proj_in"
        tensors = {f"{key}.lora_down.weight": rng.normal(0, 0.01, (4, 1280, 1, 1)).astype(np.float16),
                   f"{key}.lora_up.weight": rng.normal(0, 0.01, (1280, 4, 1, 1)).astype(np.float16),
                   f"{key}.alpha": np.array(2.0, dtype=np.float16)}
        file = f"{name}-{epoch:06d}.safetensors"
        save_file(tensors, str(loras_dir / file), metadata={"ss_network_dim": "4", "ss_network_alpha": "2.0",
                                                             "ss_epoch": str(epoch)})
        names.append(file)
    return names


def _queue_state(server) -> tuple[list, list]:
    q = server.get_json("/queue")
    return q.get("queue_running", []), q.get("queue_pending", [])


def _take_off_queue(server, prompt_id: str, timeout: float = 180.0) -> str:
    """Deletes the prompt if still pending, interrupts it if running, waits for an idle queue."""
    server.post_json("/queue", {"delete": [prompt_id]})
    server.post_json("/interrupt", {"prompt_id": prompt_id})
    deadline = time.time() + timeout
    while time.time() < deadline:
        running, pending = _queue_state(server)
        if not running and not pending:
            break
        if any(item[1] == prompt_id for item in running):
            server.post_json("/interrupt", {"prompt_id": prompt_id})
        time.sleep(0.3)
    else:
        raise TimeoutError(f"the queue did not empty in {timeout:.0f} s:\n{server.log_tail()}")
    entry = server.get_json(f"/history/{prompt_id}").get(prompt_id)
    if not entry:
        return "deleted before it ran"
    messages = [m[0] for m in entry.get("status", {}).get("messages", [])]
    if "execution_interrupted" in messages:
        return "interrupted"
    assert entry["status"].get("status_str") == "success", error_text(entry)
    return "finished before the interrupt"


# -- tests ---------------------------------------------------------------------------------------

def test_frontend_loads_pack_and_runs_a_graph_built_in_the_page(ui, comfy_server):
    t0 = time.time()
    server = comfy_server
    state = ui.eval("""() => ({
      types: Object.keys(LiteGraph.registered_node_types).filter((t) => t.startsWith('StyleLoRA')),
      extension: performance.getEntriesByType('resource').map((e) => e.name)
        .filter((u) => u.includes('/extensions/') && u.includes('style_lora_trainer.js')),
      version: window.__COMFYUI_FRONTEND_VERSION__ || null,
    })""")
    print(f"frontend {state['version']}; pack scripts: {state['extension']}")
    assert set(OUR_NODE_TYPES) <= set(state["types"]), state["types"]
    assert state["extension"], "the pack's js/style_lora_trainer.js was not loaded by the page"
    assert ui.open_dialogs() == [], f"a dialog is open after start-up: {ui.open_dialogs()}"
    # ComfyUI's template browser lists the pack's workflows/ folder (under the pack's folder name).
    templates = server.get_json("/api/workflow_templates")
    listed = next((v for k, v in templates.items() if "style-lora-trainer" in k), None)
    assert listed is not None, f"the pack's workflows are not in /api/workflow_templates: {sorted(templates)}"
    assert sorted(listed) == _workflow_names(), listed

    folder = "browser_smoke"
    _make_dataset(server.base / "input", folder, count=2, size=SIZE)
    ids = ui.eval(BUILD_GRAPH, {"name": "browser_smoke", "nodes": {
        "ckpt": {"type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": server.checkpoint_name}},
        "ds": {"type": "StyleLoRALoadDataset", "widgets": {"folder": folder, "resolution": SIZE},
               "links": {"clip": ["ckpt", 1]}},
        "cap": {"type": "StyleLoRACaptionEditor", "widgets": {"prefix": "smokestyle"}, "links": {"dataset": ["ds", 0]}},
        "shuf": {"type": "StyleLoRAShuffleCaption", "links": {"dataset": ["cap", 0]}},
        "show": {"type": "PreviewAny", "links": {"source": ["shuf", 1]}},
    }})
    prompt = ui.eval("async () => (await app.graphToPrompt()).output")
    assert {v["class_type"] for v in prompt.values()} == {"CheckpointLoaderSimple", "StyleLoRALoadDataset",
                                                         "StyleLoRACaptionEditor", "StyleLoRAShuffleCaption",
                                                         "PreviewAny"}
    assert prompt[str(ids["ds"])]["inputs"]["clip"] == [str(ids["ckpt"]), 1]
    assert prompt[str(ids["cap"])]["inputs"]["dataset"] == [str(ids["ds"]), 0]
    entry = server.wait(_run_from_page(ui), timeout=300)
    assert entry["status"]["status_str"] == "success", error_text(entry)
    # The result came back to the page over its websocket (the frontend keeps it per node).
    shown = ui.wait_for("""(id) => {
      const out = app.nodeOutputs && app.nodeOutputs[String(id)];
      return out && out.text ? out.text.join('\\n') : false;
    }""", ids["show"], timeout=30)
    assert "smokestyle" in shown, shown
    ui.screenshot("00_graph_built_in_page")
    _assert_no_errors_of_ours(ui, t0)


@pytest.mark.parametrize("name", _workflow_names())
def test_example_workflow_loads_and_server_accepts_it(ui, comfy_server, name):
    t0 = time.time()
    server = comfy_server
    path = WORKFLOWS_DIR / f"{name}.json"
    assert path.is_file(), f"{path.relative_to(REPO)} is missing"
    wf = json.loads(path.read_text(encoding="utf-8"))
    assert wf.get("version") == 0.4 and isinstance(wf.get("nodes"), list), \
        f"{path.name} is not in the frontend's UI format 0.4 (version {wf.get('version')!r})"
    # The user's dataset folder exists (a tiny one here), as it would before they open the workflow:
    # the panels read it as soon as the graph is loaded.
    for node in wf["nodes"]:
        if node["type"] == "StyleLoRALoadDataset":
            folder = node["widgets_values"][0]
            assert isinstance(folder, str) and not Path(folder).is_absolute() and ".." not in Path(folder).parts
            if not (server.base / "input" / folder).is_dir():
                _make_dataset(server.base / "input", folder, count=2, size=SIZE)
    result = ui.eval(LOAD_WORKFLOW, {"wf": wf, "name": name})
    assert result["unknown"] == [], f"node types not registered in the page: {result['unknown']}"
    assert result["missing"] == [], f"the frontend reported missing nodes: {result['missing']}"
    assert all(n["registered"] for n in result["nodes"]), result["nodes"]
    assert len(result["nodes"]) == len(wf["nodes"]), (len(result["nodes"]), len(wf["nodes"]))
    assert ui.open_dialogs() == [], f"a dialog is open after loading {name}: {ui.open_dialogs()}"
    # The pack's panels are on its nodes; each caption gallery lists the workflow's dataset folder.
    for node in result["nodes"]:
        if node["type"] == "StyleLoRACaptionEditor":
            assert node["gallery"], f"no caption gallery on node {node['id']}"
            listed = ui.wait_for("""(id) => { const g = app.graph.getNodeById(id).styleLoraGallery;
                return g.error ? {error: g.error} : (g.items.length ? {items: g.items.length} : false); }""",
                                 node["id"], timeout=30)
            assert listed.get("items"), f"caption gallery of node {node['id']}: {listed}"
        if node["type"] == "StyleLoRATrain":
            assert node["chart"], f"no training chart on node {node['id']}"
    # A wider window for the whole-workflow screenshot, then back.
    ui.page.set_viewport_size({"width": 2400, "height": 1350})
    ui.page.wait_for_timeout(300)
    ui.eval("() => window.__styleLoraFit(app.graph.nodes, 1.0, app.graph.groups || app.graph._groups || [])")
    ui.page.wait_for_timeout(400)
    ui.screenshot(f"workflow_{name}")
    ui.page.set_viewport_size(VIEWPORT)

    prompt = result["output"]
    assert prompt, "graphToPrompt produced an empty prompt"
    replaced = []
    lora_files = None  # written once, only for workflows that name LoRA files
    for node_id, node in prompt.items():
        inputs = node["inputs"]
        if "ckpt_name" in inputs:
            replaced.append(f"{node_id}.ckpt_name {inputs['ckpt_name']!r}")
            inputs["ckpt_name"] = server.checkpoint_name
        if "lora_name" in inputs and isinstance(inputs["lora_name"], str):
            lora_files = lora_files or _write_lora_files(server.base / "models" / "loras", COMPARE_LORA)
            if node["class_type"] == "StyleLoRAEpochWeightGrid":
                if inputs["lora_name"]:
                    replaced.append(f"{node_id}.lora_name {inputs['lora_name']!r}")
                    inputs["lora_name"] = COMPARE_LORA
            else:
                replaced.append(f"{node_id}.lora_name {inputs['lora_name']!r}")
                inputs["lora_name"] = lora_files[-1]
    print(f"{name}: {len(prompt)} nodes in the prompt; replaced {replaced}")
    body = {"prompt": prompt, "client_id": "style-lora-browser-e2e",
            "extra_data": {"extra_pnginfo": {"workflow": result["workflow"]}}}
    answer = server.post_json("/prompt", body)  # raises with the server's node_errors on HTTP 400
    assert answer.get("node_errors") in ({}, None), answer["node_errors"]
    outcome = _take_off_queue(server, answer["prompt_id"])
    print(f"{name}: accepted as {answer['prompt_id']}, then taken off the queue ({outcome})")
    _assert_no_errors_of_ours(ui, t0)


# -- caption editor ------------------------------------------------------------------------------

# The caption editor's gallery DOM: thumbnails, caption textareas and its save button, marked with
# data-e2e attributes so Playwright can type and click like a user.
GALLERY_DOM = """(id) => {
  const node = app.graph.getNodeById(id);
  const gallery = node && node.styleLoraGallery;
  const roots = [gallery && (gallery.element || gallery.root || gallery.el),
                 ...(node.widgets || []).map((w) => w.element)].filter(Boolean);
  const root = roots.find((el) => el.querySelector && el.querySelector('textarea'));
  if (!root) return {ready: false, why: 'no gallery element with textareas', widgets: (node.widgets || []).map((w) => w.name)};
  root.setAttribute('data-e2e', 'gallery');
  const imgs = [...root.querySelectorAll('img')];
  const areas = [...root.querySelectorAll('textarea')];
  // A row per image (data-file) holds its caption textarea; mark each by its image's name.
  areas.forEach((a, i) => {
    const row = a.closest('[data-file]');
    a.setAttribute('data-e2e', `caption-${row ? row.getAttribute('data-file') : i}`);
  });
  const save = [...root.querySelectorAll('button')].find((b) => /save/i.test(b.textContent || b.title || ''));
  if (save) save.setAttribute('data-e2e', 'save');
  const box = root.getBoundingClientRect();
  return {
    ready: true, items: gallery ? gallery.items.length : null,
    images: imgs.map((im) => ({src: im.src, complete: im.complete, w: im.naturalWidth, h: im.naturalHeight})),
    captions: areas.map((a) => a.value), save: !!save,
    visible: box.width > 0 && box.height > 0, rect: [box.x, box.y, box.width, box.height],
  };
}"""


def _edits_of(ui: BrowserSession, node_id: int) -> dict:
    """The edits widget's value, and the node's widget values in the workflow the frontend saves."""
    return ui.eval("""async (id) => {
      const node = app.graph.getNodeById(id);
      const w = node.widgets.find((x) => x.name === 'edits');
      const workflow = (await app.graphToPrompt()).workflow;
      const saved = workflow.nodes.find((n) => String(n.id) === String(id));
      return {widget: w.value, saved: saved ? saved.widgets_values : null};
    }""", node_id)


def test_caption_editor_gallery_saves_a_typed_caption(ui, comfy_server):
    t0 = time.time()
    server = comfy_server
    folder = "browser_captions"
    target = _make_dataset(server.base / "input", folder, count=4, size=192)
    before = {p.name: p.read_bytes() for p in sorted(target.glob("*.txt"))}
    wf = json.loads((WORKFLOWS_DIR / "style_lora_captioning_only.json").read_text(encoding="utf-8"))
    loaders = [n for n in wf["nodes"] if n["type"] == "StyleLoRALoadDataset"]
    assert len(loaders) == 1, "the captioning workflow should have one Load Dataset node"
    loaders[0]["widgets_values"][0] = folder  # the folder widget, as a user would have saved it
    result = ui.eval(LOAD_WORKFLOW, {"wf": wf, "name": "browser_captions"})
    assert result["unknown"] == [] and result["missing"] == []
    editor_id = next(n["id"] for n in result["nodes"] if n["type"] == "StyleLoRACaptionEditor")

    # Zoom onto the editor so its DOM widget is shown, then wait for the thumbnails.
    ui.eval("(id) => window.__styleLoraFit([app.graph.getNodeById(id)], 1.0)", editor_id)
    ui.wait_for("(id) => { const g = app.graph.getNodeById(id).styleLoraGallery;"
                " return !!(g && g.items && g.items.length === 4); }", editor_id, timeout=60)
    dom = ui.wait_for(f"""(id) => {{
      const d = ({GALLERY_DOM})(id);
      return d.ready && d.images.length >= 4 && d.images.every((im) => im.complete && im.w > 0) ? d : false;
    }}""", editor_id, timeout=60)
    assert dom["visible"] and dom["save"], dom
    assert all("/style_lora/thumbnail" in im["src"] for im in dom["images"]), dom["images"]
    assert len(dom["captions"]) == 4, dom["captions"]
    assert dom["captions"][1] == before["img1.txt"].decode(), dom["captions"]
    ui.screenshot("caption_editor_loaded")

    new_text = "a bold gouache painting of three round shapes, edited in the browser, thick outlines"
    area = ui.page.locator('[data-e2e="caption-img1.png"]')
    area.scroll_into_view_if_needed()
    area.click()
    ui.page.keyboard.press("Control+A")
    area.press_sequentially(new_text, delay=5)
    assert area.input_value() == new_text
    # Typed, not yet saved: the edit lives in the edits widget, so the saved workflow carries it.
    typed = _edits_of(ui, editor_id)
    assert json.loads(typed["widget"] or "{}").get("overrides", {}).get("img1.png") == new_text, typed
    assert any(isinstance(v, str) and new_text in v for v in typed["saved"]), typed["saved"]
    finals = ui.eval("(id) => app.graph.getNodeById(id).styleLoraGallery.captions", editor_id)
    assert finals.get("img1.png") == new_text, finals  # what training would use (no prefix/suffix here)
    save = ui.page.locator('[data-e2e="save"]')
    assert save.is_enabled(), "the save button stays disabled after an edit"
    save.click()

    caption_file = target / "img1.txt"
    deadline = time.time() + 20
    while time.time() < deadline and caption_file.read_bytes() == before["img1.txt"]:
        time.sleep(0.2)
    assert caption_file.read_text(encoding="utf-8").strip() == new_text
    after = {p.name: p.read_bytes() for p in sorted(target.glob("*.txt"))}
    assert {k: v for k, v in after.items() if k != "img1.txt"} == \
        {k: v for k, v in before.items() if k != "img1.txt"}, "other caption files changed"
    assert sorted(p.name for p in target.iterdir()) == sorted([f"img{i}.{e}" for i in range(4) for e in ("png", "txt")])

    # After the save the gallery shows the file's new text, and the edit stays in the edits widget.
    ui.wait_for(f"""(id) => {{ const d = ({GALLERY_DOM})(id);
        return d.ready && d.captions.length === 4 && d.captions[1] === {json.dumps(new_text)}; }}""",
                editor_id, timeout=20)
    state = _edits_of(ui, editor_id)
    overrides = json.loads(state["widget"] or "{}").get("overrides", {})
    assert overrides.get("img1.png") == new_text, state  # the workflow keeps carrying the edit
    print(f"edits widget after save: {state['widget']!r}")

    # A too-short caption (not saved) gets the guide's warning badge; for the README picture the
    # advice and the tag list are opened too.
    ui.eval("(id) => app.graph.getNodeById(id).styleLoraGallery.setCaption('img3.png', 'green dots')", editor_id)
    badge = ui.wait_for("""() => {
      const row = document.querySelector('[data-e2e="gallery"] [data-file="img3.png"]');
      const b = row && row.querySelector('.slt-badge.slt-warning');
      return b ? b.textContent : false; }""", timeout=20)
    assert badge, "no warning badge on a two-word caption"
    print(f"badge on a two-word caption: {badge!r}")
    ui.eval("""() => { for (const d of document.querySelectorAll('[data-e2e="gallery"] details')) d.open = true; }""")
    ui.eval("""(id) => {
      const node = app.graph.getNodeById(id);
      node.setSize([Math.max(node.size[0], 470), Math.max(node.size[1], 1250)]);
      const root = document.querySelector('[data-e2e="gallery"]');
      for (const el of root ? [root, ...root.querySelectorAll('*')] : []) if (el.scrollTop) el.scrollTop = 0;
      window.__styleLoraFit([node], 1.0);
    }""", editor_id)
    ui.page.wait_for_timeout(500)
    rect = ui.eval(NODE_RECT, editor_id)
    shot = ui.screenshot("caption_editor", clip=_clip(rect))
    copied = copy_to_docs([shot])
    if copied:
        print(f"copied {copied}")
    _assert_no_errors_of_ours(ui, t0)


def _clip(rect: dict, pad: int = 12) -> dict:
    x, y = max(0, rect["x"] - pad), max(0, rect["y"] - pad)
    return {"x": x, "y": y, "width": min(VIEWPORT["width"] - x, rect["width"] + 2 * pad),
            "height": min(VIEWPORT["height"] - y, rect["height"] + 2 * pad)}


# -- the plan before Queue -----------------------------------------------------------------------

PLAN_STATE = """(id) => {
  const node = app.graph.getNodeById(id);
  const c = node && node.styleLoraChart;
  const panel = node && node.styleLoraPanel;
  if (!c || !panel) return {ready: false};
  const button = panel.measureButton.getBoundingClientRect();
  return {ready: !!c.plan, text: c.planText, answer: c.plan, outputs: node.outputs.map((o) => o.name),
          button: {x: button.left + button.width / 2, y: button.top + button.height / 2, w: button.width,
                   label: panel.measureButton.textContent, disabled: panel.measureButton.disabled}};
}"""


def _plan_wait(ui: BrowserSession, train_id: int, contains: str, timeout: float = 60) -> dict:
    return ui.wait_for(f"""(id) => {{ const s = ({PLAN_STATE})(id);
        return s.ready && s.text.includes({json.dumps(contains)}) ? s : false; }}""", train_id, timeout=timeout)


def test_the_plan_shows_in_the_canvas_before_queue_and_measure_runs_the_warm_up(ui, comfy_server):
    t0 = time.time()
    server = comfy_server
    folder, name = "browser_plan", "browser_plan"
    _make_dataset(server.base / "input", folder, count=3, size=SIZE)
    spec = _train_graph(folder, name, server.checkpoint_name, graph_name="browser_plan")
    history_before = len(server.get_json("/history"))
    ids = ui.eval(BUILD_GRAPH, spec)
    train_id, ds_id = ids["train"], ids["ds"]

    # Before anything is queued: 3 images x 1 repeat, batch 1 -> 3 steps per epoch, 6 in 2 epochs.
    state = _plan_wait(ui, train_id, "3 steps per epoch")
    text = state["text"]
    assert "3 images x 1 repeats = 3 per epoch; batch 1 -> 3 steps per epoch, 6 steps in 2 epochs" in text, text
    assert "[!!] 3 images (the guide: 30-100)" in text and "[!!] 2 epochs (the guide: 20, each saved)" in text
    assert f"model: {server.checkpoint_name} (sd15)" in text, text
    assert "disk:" in text and "free now" in text and "Measure runs a short warm-up" in text, text
    answer = state["answer"]
    assert answer["measured"] is False and answer["estimated_peak"] is None and answer["family"] == "sd15"
    assert answer["disk_bytes"] > 2 * 1024 * 1024, answer  # two rank-4 SD1.5 LoRA files, copies and resume state
    assert state["outputs"] == ["run", "loss_plot", "summary", "plan"], state["outputs"]
    assert state["button"]["label"] == "Measure memory & time" and not state["button"]["disabled"], state

    # A widget change anywhere in the chain: the plan follows (repeats 1 -> 2 on Load Dataset).
    ui.eval("""([id, value]) => { const w = app.graph.getNodeById(id).widgets.find((x) => x.name === 'repeats');
        w.value = value; w.callback?.(value); }""", [ds_id, 2])
    state = _plan_wait(ui, train_id, "6 steps per epoch")
    assert "3 images x 2 repeats = 6 per epoch" in state["text"], state["text"]

    # Measure: a real mouse click on the button; the warm-up runs in ComfyUI on the checkpoint.
    ui.eval("(id) => window.__styleLoraFit([app.graph.getNodeById(id)], 1.0)", train_id)
    ui.page.wait_for_timeout(200)
    button = ui.eval(PLAN_STATE, train_id)["button"]
    ui.page.mouse.click(button["x"], button["y"])
    state = _plan_wait(ui, train_id, "s/step (warm-up)", timeout=300)
    text = state["text"]
    answer = state["answer"]
    assert answer["measured"] is True and answer["estimated_peak"] > 0 and answer["seconds_per_step"] > 0, answer
    assert "memory on cpu: about" in text and "measured in the warm-up:" in text, text
    assert "6 steps per epoch" in text and f"model: {server.checkpoint_name}" in text, text
    ui.wait_for(f"(id) => ({PLAN_STATE})(id).button.label === 'Measure again'", train_id, timeout=10)
    ui.page.wait_for_timeout(200)
    shot = ui.screenshot("training_plan", clip=_clip(ui.eval(NODE_RECT, train_id)))
    print(f"measured plan in the canvas:\n{text}")

    # None of it queued a prompt, and the warm-up left no run folder behind.
    running, pending = _queue_state(server)
    assert not running and not pending and len(server.get_json("/history")) == history_before
    runs = server.base / "output" / "style_lora_runs"
    assert not (runs.is_dir() and any(p.name.startswith(name) for p in runs.iterdir()))

    # A reload: the same settings get the measured plan again (the server keeps it).
    _reopen(ui)
    reloaded = ui.eval("""() => {
      const find = (type) => app.graph.nodes.find((n) => n.comfyClass === type);
      const ds = find('StyleLoRALoadDataset'), w = ds.widgets.find((x) => x.name === 'repeats');
      if (w.value !== 2) { w.value = 2; w.callback?.(2); }  // in case the reload restored an older state
      return find('StyleLoRATrain').id;
    }""")
    state = _plan_wait(ui, reloaded, "s/step (warm-up)")
    assert state["answer"]["measured"] is True and state["button"]["label"] == "Measure again", state
    _assert_no_errors_of_ours(ui, t0)
    copy_to_docs([shot])


# -- live training panel and grid ----------------------------------------------------------------

CHART_STATE = """(id) => {
  const node = app.graph.getNodeById(id);
  const c = node && node.styleLoraChart;
  if (!c) return {present: !!node, chart: false};
  return {present: true, chart: true, state: c.state, points: (c.points || []).map((p) => [p.step, p.loss]),
          epochs: (c.epochs || []).map((e) => (typeof e === 'object' ? e.epoch : e))};
}"""


def _train_graph(folder: str, name: str, checkpoint: str, graph_name: str = "browser_training") -> dict:
    return {"name": graph_name, "nodes": {
        "ckpt": {"type": "CheckpointLoaderSimple", "widgets": {"ckpt_name": checkpoint}},
        "ds": {"type": "StyleLoRALoadDataset", "widgets": {
            "folder": folder, "repeats": 1, "resolution": SIZE, "enable_bucket": True, "min_bucket_size": SIZE,
            "max_bucket_size": SIZE, "bucket_step": SIZE}, "links": {"clip": ["ckpt", 1]}},
        "cap": {"type": "StyleLoRACaptionEditor", "widgets": {"prefix": "browserstyle"}, "links": {"dataset": ["ds", 0]}},
        "shuf": {"type": "StyleLoRAShuffleCaption", "widgets": {"keep_tokens": 1}, "links": {"dataset": ["cap", 0]}},
        "train": {"type": "StyleLoRATrain", "widgets": {
            "preset": "custom (use the widgets)", "output_name": name, "rank": 4, "alpha": 2.0,
            "optimizer": "DAdaptAdamW", "learning_rate": 1.0, "lr_scheduler": "constant", "lr_warmup_steps": 0,
            "epochs": 2, "batch_size": 1, "seed": 0, "mixed_precision": "fp32", "gradient_checkpointing": False,
            "cache_latents": True},
            "links": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "dataset": ["shuf", 0]}},
        "plot": {"type": "PreviewImage", "links": {"images": ["train", 1]}},
        "save": {"type": "StyleLoRASaveEpochs", "widgets": {"name": name, "save": "all", "subfolder": name},
                 "links": {"run": ["train", 0]}},
        "grid": {"type": "StyleLoRAEpochWeightGrid", "widgets": {
            "prompts": "red", "negative": "blurry", "weights": "0, 1.0", "epochs_to_show": "all", "seed": 5,
            "images_per_prompt": 1, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal",
            "width": SIZE, "height": SIZE},
            "links": {"model": ["ckpt", 0], "clip": ["ckpt", 1], "vae": ["ckpt", 2], "epochs": ["save", 0]}},
        "grid_img": {"type": "PreviewImage", "links": {"images": ["grid", 0]}, "size": [400, 420]},
    }, "columns": [["ckpt", "ds"], ["cap", "shuf"], ["train"], ["plot", "save"], ["grid", "grid_img"]]}


def test_live_training_chart_survives_reload_and_grid_preview(ui, comfy_server):
    t0 = time.time()
    server = comfy_server
    folder, name = "browser_train", "browser_e2e"
    _make_dataset(server.base / "input", folder, count=2, size=SIZE)
    spec = _train_graph(folder, name, server.checkpoint_name)
    ids = ui.eval(BUILD_GRAPH, spec)
    train_id = ids["train"]
    total = 4  # 2 images x 1 repeat / batch 1 = 2 steps per epoch, 2 epochs
    prompt_id = _run_from_page(ui)

    # While it runs: the chart fills from the style_lora.train_step events.
    seen_running = None
    reloaded = None
    deadline = time.time() + 600
    while time.time() < deadline:
        chart = ui.eval(CHART_STATE, train_id)
        assert chart["present"], "the TrainLoRA node is gone from the page"
        if chart["chart"] and chart["state"] == "running" and chart["points"] and seen_running is None:
            seen_running = chart
            ui.eval("(id) => window.__styleLoraFit([app.graph.getNodeById(id)], 1.0)", train_id)
            ui.page.wait_for_timeout(150)
            ui.screenshot("training_chart_running", clip=_clip(ui.eval(NODE_RECT, train_id)))
            # Reload mid-run: the panel must come back from GET /style_lora/training.
            snapshot = server.get_json(f"/style_lora/training?node={train_id}")
            reload_t = time.time()
            took = _reopen(ui)
            chart = ui.wait_for(f"""(id) => {{ const c = ({CHART_STATE})(id);
                return c.chart && c.points.length >= {len(snapshot['points'])} ? c : false; }}""", train_id, timeout=60)
            reloaded = {"took": took, "before": len(seen_running["points"]), "route": len(snapshot["points"]),
                        "route_state": snapshot["state"], "after": len(chart["points"]), "state": chart["state"],
                        "fetched": [r for r in ui.pack_requests if r["t"] >= reload_t
                                    and f"/style_lora/training?node={train_id}" in r["url"]]}
            print(f"reload mid-run: {reloaded}")
        running, pending = _queue_state(server)
        if not running and not pending:
            break
        time.sleep(0.25)
    entry = server.wait(prompt_id, timeout=60)
    assert entry["status"]["status_str"] == "success", error_text(entry)
    assert seen_running is not None, "the chart never showed points while the training was running"
    assert reloaded is not None and reloaded["route"] >= 1, reloaded
    assert reloaded["route_state"] == "running", f"the reload did not happen mid-run: {reloaded}"
    assert [r["status"] for r in reloaded["fetched"]][:1] == [200], \
        f"after the reload the page did not GET /style_lora/training?node={train_id}: {reloaded}"

    # At the end: every step and both epoch markers, as the server recorded them.
    snapshot = server.get_json(f"/style_lora/training?node={train_id}")
    assert snapshot["state"] == "finished" and snapshot["total_steps"] == total, snapshot
    assert [p["step"] for p in snapshot["points"]] == list(range(1, total + 1)), snapshot["points"]
    assert [e["epoch"] for e in snapshot["epochs"]] == [1, 2], snapshot["epochs"]
    chart = ui.wait_for(f"""(id) => {{ const c = ({CHART_STATE})(id);
        return c.chart && c.state === 'finished' && c.points.length >= {total} && c.epochs.length >= 2 ? c : false;
    }}""", train_id, timeout=60)
    assert [p[0] for p in chart["points"]] == list(range(1, total + 1)), chart["points"]
    assert chart["epochs"] == [1, 2], chart["epochs"]
    for (step, loss), point in zip(chart["points"], snapshot["points"]):
        assert step == point["step"] and abs(loss - point["loss"]) < 1e-6
    ui.eval("(id) => window.__styleLoraFit([app.graph.getNodeById(id)], 1.0)", train_id)
    ui.page.wait_for_timeout(400)
    chart_shot = ui.screenshot("training_chart", clip=_clip(ui.eval(NODE_RECT, train_id)))

    # The grid preview from this real run, shown by the PreviewImage node in the page.
    grid_img = ids["grid_img"]
    images = entry["outputs"][str(grid_img)]["images"]
    assert len(images) == 1
    shown = ui.wait_for("""(id) => {
      const node = app.graph.getNodeById(id);
      const out = app.nodeOutputs && app.nodeOutputs[String(id)];
      const imgs = node.imgs || [];
      return out && out.images && out.images.length && imgs.length && imgs[0].complete && imgs[0].naturalWidth > 0
        ? {file: out.images[0].filename, w: imgs[0].naturalWidth, h: imgs[0].naturalHeight} : false;
    }""", grid_img, timeout=60)
    assert shown["file"] == images[0]["filename"], (shown, images)
    ui.eval("(id) => window.__styleLoraFit([app.graph.getNodeById(id)], 1.5)", grid_img)
    ui.page.wait_for_timeout(400)
    grid_shot = ui.screenshot("grid_preview", clip=_clip(ui.eval(NODE_RECT, grid_img)))
    ui.eval("(columns) => window.__styleLoraRelayout(columns)",
            [[ids[key] for key in column] for column in spec["columns"]])
    ui.page.wait_for_timeout(400)
    ui.screenshot("training_graph_after_run")

    # Save Epochs refreshed the node definitions: a LoraLoader added now (no reload, no R) lists
    # the new files.
    wanted = f"{name}/{name}-000002.safetensors"
    listed = ui.wait_for("""(wanted) => {
      const node = LiteGraph.createNode('LoraLoader');
      const values = node.widgets.find((w) => w.name === 'lora_name').options.values;
      const list = typeof values === 'function' ? values() : values;
      return list.includes(wanted) ? list : false; }""", wanted, timeout=30)
    print(f"LoraLoader lists: {[v for v in listed if name in v]}")

    # After the run: a reload rebuilds the finished chart from the route.
    reload_t = time.time()
    _reopen(ui)
    chart = ui.wait_for(f"""(id) => {{ const c = ({CHART_STATE})(id);
        return c.chart && c.state === 'finished' && c.points.length >= {total} ? c : false; }}""", train_id, timeout=60)
    assert chart["epochs"] == [1, 2], chart
    assert any(f"/style_lora/training?node={train_id}" in r["url"] and r["status"] == 200
               for r in ui.pack_requests if r["t"] >= reload_t), "no GET /style_lora/training after the reload"
    copied = copy_to_docs([chart_shot, grid_shot])
    if copied:
        print(f"copied {copied}")
    _assert_no_errors_of_ours(ui, t0)


# -- the sweet-spot finder: samples strip, annotated grid, a click that picks --------------------

STRIP_STATE = """(id) => {
  const node = app.graph.getNodeById(id);
  const c = node && node.styleLoraChart;
  if (!c) return {chart: false};
  const rows = [...c.strip.querySelectorAll('.slt-sample-row')];
  return {chart: true, state: c.state, validation: (c.validation || []).map((v) => v.epoch),
          samples: (c.samples || []).map((s) => s.epoch), visible: c.strip.offsetParent !== null,
          rows: rows.map((r) => ({label: r.querySelector('.slt-sample-label').textContent,
            weights: [...r.querySelectorAll('.slt-sample-weight')].map((w) => w.textContent),
            thumbs: [...r.querySelectorAll('img.slt-sample-thumb')].map((im) => ({
              src: im.getAttribute('src'), loaded: im.complete && im.naturalWidth > 0}))}))};
}"""

# The grid panel's image and its on-screen rectangle, the layout it shows and its status line.
PICKER_STATE = """(id) => {
  const node = app.graph.getNodeById(id);
  const p = node && node.styleLoraPicker;
  const img = (node.widgets || []).map((w) => w.element).filter(Boolean)
    .map((e) => e.querySelector && e.querySelector('img.slt-grid-image')).find(Boolean);
  if (!p || !img) return {ready: false};
  const r = img.getBoundingClientRect();
  const mark = img.parentElement.querySelector('.slt-grid-mark');
  return {ready: !!p.layout && img.complete && img.naturalWidth > 0, layout: p.layout, status: p.status,
          rect: {left: r.left, top: r.top, width: r.width, height: r.height},
          natural: [img.naturalWidth, img.naturalHeight], mark: mark ? mark.className : null};
}"""

PICK_WIDGETS = """async (id) => {
  const node = app.graph.getNodeById(id);
  const value = (name) => node.widgets.find((w) => w.name === name).value;
  const workflow = (await app.graphToPrompt()).workflow;
  const saved = workflow.nodes.find((n) => String(n.id) === String(id));
  return {rule: value('rule'), epoch: value('epoch'), weight: value('weight'),
          saved: saved ? saved.widgets_values : null};
}"""


def _sweet_spot_graph(folder: str, name: str, checkpoint: str) -> dict:
    spec = _train_graph(folder, name, checkpoint)
    nodes = spec["nodes"]
    nodes["samples"] = {"type": "StyleLoRATrainingSamples", "widgets": {
        "prompts": "a red round shape", "negative": "blurry", "weights": "0.8, 1.0", "every_n_epochs": 1,
        "include_base": True, "seed": 3, "steps": 2, "cfg": 2.0, "sampler_name": "euler", "scheduler": "normal",
        "width": SIZE, "height": SIZE}}
    nodes["train"]["links"]["samples"] = ["samples", 0]
    nodes["grid"]["widgets"].update({"weights": "0.8, 1.0", "order": "epoch"})
    del nodes["grid_img"]  # the grid node shows the grid itself, in its picker panel
    nodes["grid"]["size"] = [560, 900]  # room for the whole grid in its panel
    nodes["pick"] = {"type": "StyleLoRAPickEpoch", "widgets": {"rule": "lowest validation loss", "epoch": 1,
                                                               "weight": 1.0}, "links": {"table": ["grid", 1]}}
    spec["name"] = "browser_sweet_spot"
    spec["columns"] = [["ckpt", "ds", "samples"], ["cap", "shuf"], ["train", "save"], ["grid"], ["plot", "pick"]]
    return spec


def test_sample_strip_annotated_grid_and_a_click_that_picks(ui, comfy_server):
    """Training Samples into Train LoRA: the strip fills in the training panel (base, epoch 1, 2 at
    0.8 and 1.0); the grid panel shows the annotated grid of the run; a real
    mouse click on a cell sets the linked Pick Epoch node (rule, epoch, weight), the workflow saves
    it (also after a reload, as the strip), and running again picks that file."""
    t0 = time.time()
    server = comfy_server
    folder, name = "browser_sweet", "browser_sweet"
    _make_dataset(server.base / "input", folder, count=2, size=SIZE)
    spec = _sweet_spot_graph(folder, name, server.checkpoint_name)
    ids = ui.eval(BUILD_GRAPH, spec)
    train_id, grid_id, pick_id = ids["train"], ids["grid"], ids["pick"]
    entry = server.wait(_run_from_page(ui), timeout=900)
    assert entry["status"]["status_str"] == "success", error_text(entry)

    # The strip: newest first, a row per sampled epoch, a cell per weight, every thumbnail loaded.
    # (The panels grew while it ran: lay the columns out again so no node covers another.)
    relayout = [[ids[key] for key in column] for column in spec["columns"]]
    ui.eval("(columns) => window.__styleLoraRelayout(columns)", relayout)
    ui.eval("(id) => window.__styleLoraFit([app.graph.getNodeById(id)], 1.0)", train_id)
    strip = ui.wait_for(f"""(id) => {{ const s = ({STRIP_STATE})(id);
        return s.chart && s.state === 'finished' && s.rows.length === 3
          && s.rows.every((r) => r.thumbs.length && r.thumbs.every((t) => t.loaded)) ? s : false; }}""",
                        train_id, timeout=60)
    assert strip["visible"], strip
    assert strip["samples"] == [0, 1, 2] and strip["validation"] == [0, 1, 2], strip
    assert [r["label"] for r in strip["rows"]] == ["epoch 2", "epoch 1", "base"], strip["rows"]
    assert [r["weights"] for r in strip["rows"]] == [["w 0.8", "w 1.0"], ["w 0.8", "w 1.0"], ["base"]]
    # Each thumbnail is the image the server sent in its train_sample event (the node's ui output).
    sent = {s["epoch"]: s for s in entry["outputs"][str(train_id)]["style_lora_samples"]}
    for row, epoch in zip(strip["rows"], (2, 1, 0)):
        files = [ref["filename"] for cell in sent[epoch]["cells"] for ref in cell["images"]]
        shown = [t["src"] for t in row["thumbs"]]
        assert len(shown) == len(files) and all(f"filename={f}" in src for src, f in zip(shown, files)), \
            (shown, files)
    ui.page.wait_for_timeout(300)
    strip_shot = ui.screenshot("training_samples", clip=_clip(ui.eval(NODE_RECT, train_id)))

    # The grid panel: the run's annotated grid; under the rule the best epoch's cell is marked.
    ui.eval("(columns) => window.__styleLoraRelayout(columns)", relayout)
    ui.eval("(id) => window.__styleLoraFit([app.graph.getNodeById(id)], 1.0)", grid_id)
    grid = ui.wait_for(f"(id) => {{ const s = ({PICKER_STATE})(id); return s.ready ? s : false; }}", grid_id,
                       timeout=60)
    layout = grid["layout"]
    assert layout["epochs"] == [1, 2] and layout["weights"] == [0.8, 1.0], layout
    assert grid["natural"] == [layout["width"], layout["height"]], grid
    assert layout["best_epoch"] in (1, 2) and "slt-best" in (grid["mark"] or ""), grid
    assert [r["epoch"] for r in layout["table"]["rows"]] == [1, 2]

    # A real click on the cell (epoch other than the best, weight 0.8) in the displayed image, once the image
    # stays where it is (the panels above may still be growing and the canvas redrawing).
    for _ in range(50):
        ui.page.wait_for_timeout(200)
        settled = ui.eval(PICKER_STATE, grid_id)
        if settled["rect"] == grid["rect"]:
            break
        grid = settled
    epoch = 3 - layout["best_epoch"]
    row, col = layout["epochs"].index(epoch), layout["weights"].index(0.8)
    x0, y0, x1, y1 = layout["cells"][row][col]
    scale_x, scale_y = grid["rect"]["width"] / layout["width"], grid["rect"]["height"] / layout["height"]
    click = (grid["rect"]["left"] + (x0 + x1) / 2 * scale_x, grid["rect"]["top"] + (y0 + y1) / 2 * scale_y)
    ui.page.mouse.click(*click)
    deadline = time.time() + 20
    picked = ui.eval(PICK_WIDGETS, pick_id)
    while picked["rule"] != "chosen cell" and time.time() < deadline:  # (evaluate awaits; wait_for does not)
        time.sleep(0.2)
        picked = ui.eval(PICK_WIDGETS, pick_id)
    assert picked["epoch"] == epoch and picked["weight"] == pytest.approx(0.8), picked
    saved = picked["saved"]  # the chosen cell is stored in the workflow
    assert saved[:2] == ["chosen cell", epoch] and saved[2] == pytest.approx(0.8), saved
    after = ui.eval(PICKER_STATE, grid_id)
    assert "slt-chosen" in after["mark"] and f"epoch {epoch}" in after["status"], after
    ui.page.wait_for_timeout(300)
    grid_shot = ui.screenshot("grid_picker", clip=_clip(ui.eval(NODE_RECT, grid_id)))

    # A reload: the strip comes back from the server's history, the pick from the saved workflow. The
    # frontend writes its workflow draft 512 ms after a change (PERSIST_DEBOUNCE_MS, and no flush on unload):
    # a reload sooner loses any change, so wait for the open workflow's own draft to hold the pick (the
    # example workflows' drafts hold "chosen cell" too).
    drafted = _wait_persisted(ui, pick_id, "chosen cell")
    assert drafted[1] == epoch and drafted[2] == pytest.approx(0.8), drafted
    _reopen(ui)
    again = ui.wait_for(f"""(id) => {{ const s = ({STRIP_STATE})(id);
        return s.chart && s.rows.length === 3 ? s : false; }}""", train_id, timeout=60)
    assert [r["label"] for r in again["rows"]] == ["epoch 2", "epoch 1", "base"], "the strip did not survive a reload"
    kept = ui.eval(PICK_WIDGETS, pick_id)
    assert (kept["rule"], kept["epoch"]) == ("chosen cell", epoch) and kept["weight"] == pytest.approx(0.8), kept

    # Run again: only Pick Epoch changed, and it names the clicked epoch's file at 0.8.
    entry = server.wait(_run_from_page(ui), timeout=300)
    assert entry["status"]["status_str"] == "success", error_text(entry)
    info = entry["outputs"][str(pick_id)]["text"][0]
    assert info.startswith(f"Picked epoch {epoch} at weight 0.8: {name}/{name}-{epoch:06d}.safetensors"), info
    ui.eval("(columns) => window.__styleLoraRelayout(columns)", relayout)
    ui.page.wait_for_timeout(400)
    ui.screenshot("sweet_spot_graph_after_run")
    copied = copy_to_docs([strip_shot, grid_shot])
    if copied:
        print(f"copied {copied}")
    _assert_no_errors_of_ours(ui, t0)
