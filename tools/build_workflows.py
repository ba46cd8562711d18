"""Write the example workflows in ``workflows/`` from the nodes' INPUT_TYPES.

    python tools/build_workflows.py            # (re)write workflows/*.json
    python tools/build_workflows.py --check    # exit 1 if a committed file differs from what it would write

The files are in the UI format ComfyUI's frontend (1.49.6) saves: schema 0.4, links as arrays, each
node with its socket inputs/outputs, ``widgets_values`` in widget order and ``widgets_values_named``.
Widget order, socket lists and defaults come from our node classes (``INPUT_TYPES``,
``RETURN_TYPES``) and, for core ComfyUI nodes, from ``tests/data/comfyui_core_nodes.json`` (recorded
from a real ComfyUI's /object_info), so re-running this after a widget change keeps the examples
loadable. A widget this script sets that a node no longer has, or a combo value that is not among the
node's options, stops the build. Output is deterministic: the same inputs give byte-identical files.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS_DIR = ROOT / "workflows"
CORE_NODES_JSON = ROOT / "tests" / "data" / "comfyui_core_nodes.json"
FRONTEND_VERSION = "1.49.6"

# The guide's placeholders: the only values a user has to swap.
SD15_CHECKPOINT = "v1-5-pruned-emaonly.safetensors"
SDXL_CHECKPOINT = "sd_xl_base_1.0.safetensors"
CHOSEN_EPOCH_LORA = "my_style-000012.safetensors"

WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")

# Layout (LiteGraph units). A node's pos is the top-left of its body; its title bar is above it.
TITLE_H = 30          # LiteGraph.NODE_TITLE_HEIGHT
SLOT_H = 20           # one row of input/output sockets
WIDGET_H = 24         # one widget row (20 + 4 margin)
MULTILINE_H = 110     # a multiline text widget
NODE_PAD = 14
GROUP_PAD = 20
GROUP_TITLE_H = 46    # room for a group's title (font size 24)
ITEM_GAP = 30
COLUMN_GAP = 40      # between columns inside a group
GROUP_GAP = 60
NOTE_COLOR, NOTE_BGCOLOR = "#432", "#653"     # the frontend's yellow note colours
# Nodes that show a result text (the pack's canvas_contract has its height) after they have run.
RESULT_TEXT_NODES = ("StyleLoRATrain", "StyleLoRASaveEpochs", "StyleLoRAShuffleCaption")
RESULT_TEXT_MARGIN = 10
BLUE, GREEN, BROWN, PURPLE = "#3f789e", "#8A8", "#b06634", "#a1309b"


# -- node definitions ---------------------------------------------------------------------------


@dataclass
class InputDef:
    name: str
    spec: tuple
    required: bool

    @property
    def options(self) -> dict[str, Any]:
        return self.spec[1] if len(self.spec) > 1 and isinstance(self.spec[1], dict) else {}

    @property
    def type(self) -> str:
        """COMBO for a list of choices, else the type name (INT, MODEL, STYLE_LORA_DATASET, ...)."""
        head = self.spec[0]
        return "COMBO" if isinstance(head, (list, tuple)) else str(head)

    @property
    def choices(self) -> list[Any]:
        head = self.spec[0]
        if isinstance(head, (list, tuple)):
            return list(head)
        return list(self.options.get("options", []))

    @property
    def is_widget(self) -> bool:
        """What the frontend turns into a widget: combos and primitive types not forced to a socket."""
        if self.type == "COMBO":
            return True
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    @property
    def has_control(self) -> bool:
        """The frontend adds a control_after_generate widget after an INT seed (unless it is False)."""
        if self.type != "INT":
            return False
        control = self.options.get("control_after_generate")
        return bool(control) if control is not None else self.name in ("seed", "noise_seed")


@dataclass
class NodeDef:
    name: str
    display_name: str
    inputs: list[InputDef]
    outputs: list[tuple[str, str]]   # (name, type)
    frontend_only: bool = False

    @property
    def sockets(self) -> list[InputDef]:
        return [i for i in self.inputs if not i.is_widget]

    @property
    def widgets(self) -> list[InputDef]:
        return [i for i in self.inputs if i.is_widget]

    def widget_names(self) -> list[str]:
        names = []
        for w in self.widgets:
            names.append(w.name)
            if w.has_control:
                names.append("control_after_generate")
        return names


def _pack_module(name: str) -> Any:
    tools = str(Path(__file__).resolve().parent)
    if tools not in sys.path:
        sys.path.insert(0, tools)
    from pack_loader import PACKAGE_NAME, load_pack

    load_pack()
    return importlib.import_module(f"{PACKAGE_NAME}.{name}")


def _our_node_classes() -> tuple[dict[str, type], dict[str, str]]:
    nodes = _pack_module("nodes")
    return nodes.NODE_CLASS_MAPPINGS, nodes.NODE_DISPLAY_NAME_MAPPINGS


def load_core_definitions(path: Path = CORE_NODES_JSON) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def node_definitions() -> dict[str, NodeDef]:
    """Our nodes (from the classes) and the recorded core nodes, keyed by node type."""
    core = load_core_definitions()
    ksampler = core["KSampler"]["input"]["required"]
    defs: dict[str, NodeDef] = {}
    classes, display = _our_node_classes()
    for name, cls in classes.items():
        spec = cls.INPUT_TYPES()
        inputs = [InputDef(n, tuple(s), True) for n, s in spec.get("required", {}).items()]
        inputs += [InputDef(n, tuple(s), False) for n, s in spec.get("optional", {}).items()]
        for i, inp in enumerate(inputs):
            # Outside ComfyUI the grid's sampler lists are a short fallback; inside they are
            # comfy.samplers' lists, i.e. exactly KSampler's.
            if inp.name in ("sampler_name", "scheduler"):
                inputs[i] = InputDef(inp.name, (ksampler[inp.name][0], *inp.spec[1:]), inp.required)
        outputs = list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))
        defs[name] = NodeDef(name, display.get(name, name), inputs, outputs)
    for name, info in core.items():
        if name.startswith("_"):
            continue
        inputs = []
        for section in ("required", "optional"):
            for n in info.get("input_order", {}).get(section, []):
                inputs.append(InputDef(n, tuple(info["input"][section][n]), section == "required"))
        defs[name] = NodeDef(name, info["display_name"], inputs, list(zip(info["output_name"], info["output"])))
    for name in ("Note", "MarkdownNote"):
        defs[name] = NodeDef(name, core["_frontend_only"][name]["display_name"],
                             [InputDef("text", ("STRING", {"multiline": True}), True)], [], frontend_only=True)
    return defs


# -- graph ----------------------------------------------------------------------------------------


@dataclass
class Node:
    id: int
    type: str
    widgets: list[Any]
    widget_names: list[str]
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    width: int
    height: int
    title: str | None = None
    pos: tuple[int, int] = (0, 0)
    order: int = 0


@dataclass
class Column:
    width: int
    above: list[Node] = field(default_factory=list)   # notes stacked above the main nodes
    items: list[Node] = field(default_factory=list)   # main nodes (and notes) below, top to bottom


@dataclass
class Group:
    title: str
    color: str
    columns: list[Column]
    bounds: tuple[int, int, int, int] = (0, 0, 0, 0)   # x, y, width, height


class Workflow:
    def __init__(self, defs: dict[str, NodeDef]) -> None:
        self.defs = defs
        self.nodes: list[Node] = []
        self.links: list[list[Any]] = []
        self.groups: list[Group] = []

    # nodes and links
    def node(self, type_: str, widgets: dict[str, Any] | None = None, *, width: int = 380,
             height: int | None = None, title: str | None = None) -> Node:
        if type_ not in self.defs:
            raise KeyError(f"unknown node type {type_!r}; add its definition to tests/data/comfyui_core_nodes.json "
                           "(from a real ComfyUI's /object_info) or check the spelling")
        d = self.defs[type_]
        given = dict(widgets or {})
        unknown = sorted(set(given) - {w.name for w in d.widgets})
        if unknown:
            raise KeyError(f"{type_} has no widget(s) {unknown}; its widgets: {[w.name for w in d.widgets]}")
        values: list[Any] = []
        for w in d.widgets:
            value = given[w.name] if w.name in given else _default(w)
            if w.type == "COMBO" and w.choices and value not in w.choices:
                raise ValueError(f"{type_}.{w.name} = {value!r} is not one of {w.choices}")
            values.append(value)
            if w.has_control:
                values.append("fixed")   # examples reproduce: never re-randomise the seed
        # Optional sockets are drawn hollow (shape 7), as the frontend saves them.
        inputs = [{"name": s.name, "type": s.type, **({} if s.required else {"shape": 7}), "link": None}
                  for s in d.sockets]
        outputs = [{"name": n, "type": t, "links": [], "slot_index": i} for i, (n, t) in enumerate(d.outputs)]
        if height is None:
            rows = max(len(inputs), len(outputs))
            multiline = sum(1 for w in d.widgets if w.options.get("multiline"))
            height = rows * SLOT_H + (len(values) - multiline) * WIDGET_H + multiline * MULTILINE_H + NODE_PAD
            # Room for what the canvas extension adds (sizes from js/lib/contract.json, as the JS
            # reads them), so a loaded node needs no resize and grows over nothing.
            contract = _pack_module("integration.canvas_contract")
            panel = contract.PANELS.get(type_, {"min_width": 0, "min_height": 0, "panel_height": 0})
            extra = panel["panel_height"] + 4 if panel["panel_height"] else 0
            height = max(panel["min_height"], height + extra)
            if type_ in RESULT_TEXT_NODES:
                height += contract.RESULT_TEXT_MIN_HEIGHT + RESULT_TEXT_MARGIN
            width = max(width, panel["min_width"])
        n = Node(len(self.nodes) + 1, type_, values, d.widget_names(), inputs, outputs, width, height, title)
        self.nodes.append(n)
        return n

    def note(self, title: str, text: str, width: int) -> Node:
        return self.node("MarkdownNote", {"text": text.strip() + "\n"}, width=width,
                         height=_note_height(text, width), title=title)

    def link(self, src: Node, output: str, dst: Node, input_name: str) -> None:
        out_slot = next((i for i, o in enumerate(src.outputs) if o["name"] == output), None)
        in_slot = next((i for i, o in enumerate(dst.inputs) if o["name"] == input_name), None)
        if out_slot is None or in_slot is None:
            raise KeyError(f"cannot link {src.type}.{output} to {dst.type}.{input_name}: outputs of {src.type} are "
                           f"{[o['name'] for o in src.outputs]}, inputs of {dst.type} {[i['name'] for i in dst.inputs]}")
        out_type, in_type = src.outputs[out_slot]["type"], dst.inputs[in_slot]["type"]
        if in_type not in ("*", out_type):
            raise TypeError(f"cannot link {src.type}.{output} ({out_type}) to {dst.type}.{input_name} ({in_type})")
        if dst.inputs[in_slot]["link"] is not None:
            raise ValueError(f"{dst.type}.{input_name} is already linked")
        link_id = len(self.links) + 1
        self.links.append([link_id, src.id, out_slot, dst.id, in_slot, out_type])
        src.outputs[out_slot]["links"].append(link_id)
        dst.inputs[in_slot]["link"] = link_id

    def group(self, title: str, color: str, *columns: Column) -> None:
        self.groups.append(Group(title, color, list(columns)))

    # layout and serialisation
    def _layout(self) -> None:
        """Groups left to right; inside a group, columns left to right; in a column, its notes on top,
        then its nodes. The main nodes of every column start at the same height."""
        top = 0
        above_h = max((sum(n.height + TITLE_H + ITEM_GAP for n in c.above) for g in self.groups for c in g.columns),
                      default=0)
        x = 0
        for g in self.groups:
            left = x - GROUP_PAD
            for i, c in enumerate(g.columns):
                if i:
                    x += COLUMN_GAP
                width = max(c.width, *(n.width for n in [*c.above, *c.items]))  # never below a node's minimum
                y = top + GROUP_TITLE_H
                for n in c.above:
                    n.width, n.pos = width, (x, y + TITLE_H)
                    y += n.height + TITLE_H + ITEM_GAP
                y = top + GROUP_TITLE_H + above_h
                for n in c.items:
                    n.width, n.pos = width, (x, y + TITLE_H)
                    y += n.height + TITLE_H + ITEM_GAP
                x += width
            g.bounds = (left, top, x + GROUP_PAD - left, 0)
            x += GROUP_PAD + GROUP_GAP + GROUP_PAD
        placed = [n for g in self.groups for c in g.columns for n in [*c.above, *c.items]]
        if sorted(n.id for n in placed) != [n.id for n in self.nodes]:
            counts = {n.id: sum(1 for p in placed if p.id == n.id) for n in self.nodes}
            wrong = [f"{n.id} {n.type} (placed {counts[n.id]}x)" for n in self.nodes if counts[n.id] != 1]
            raise ValueError(f"every node must be placed in exactly one column of one group: {wrong}")
        bottom = max(n.pos[1] + n.height for n in self.nodes) + GROUP_PAD
        for g in self.groups:
            g.bounds = (g.bounds[0], g.bounds[1], g.bounds[2], bottom - g.bounds[1])

    def _execution_order(self) -> None:
        """Kahn's algorithm in node-id order, sources first (as the frontend's computeExecutionOrder)."""
        incoming = {n.id: sum(1 for i in n.inputs if i["link"] is not None) for n in self.nodes}
        by_link = {lk[0]: lk for lk in self.links}
        queue = [n for n in self.nodes if incoming[n.id] == 0]
        by_id = {n.id: n for n in self.nodes}
        order = 0
        while queue:
            n = queue.pop(0)
            n.order = order
            order += 1
            for out in n.outputs:
                for link_id in out["links"]:
                    target = by_id[by_link[link_id][3]]
                    incoming[target.id] -= 1
                    if incoming[target.id] == 0:
                        queue.append(target)
        if order != len(self.nodes):
            stuck = [f"{n.id} {n.type}" for n in self.nodes if incoming[n.id] > 0]
            raise ValueError(f"the workflow has a cycle through {stuck}")

    def to_json(self, name: str) -> dict[str, Any]:
        self._layout()
        self._execution_order()
        nodes = []
        for n in self.nodes:
            d = self.defs[n.type]
            node: dict[str, Any] = {
                "id": n.id,
                "type": n.type,
                "pos": list(n.pos),
                "size": [n.width, n.height],
                "flags": {},
                "order": n.order,
                "mode": 0,
                "inputs": [dict(i) for i in n.inputs],
                "outputs": [dict(o, links=list(o["links"]) or None) for o in n.outputs],
            }
            if n.title:
                node["title"] = n.title
            node["properties"] = {} if d.frontend_only else {"Node name for S&R": n.type}
            node["widgets_values"] = list(n.widgets)
            node["widgets_values_named"] = dict(zip(n.widget_names, n.widgets))
            if d.frontend_only:
                node["color"], node["bgcolor"] = NOTE_COLOR, NOTE_BGCOLOR
            nodes.append(node)
        min_x = min(g.bounds[0] for g in self.groups)
        min_y = min(g.bounds[1] for g in self.groups)
        width = max(g.bounds[0] + g.bounds[2] for g in self.groups) - min_x
        scale = max(0.3, min(1.0, math.floor(1800 / width * 100) / 100))   # the first groups fill the screen
        return {
            "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://github.com/style-lora-trainer/workflows/{name}")),
            "revision": 0,
            "last_node_id": max(n.id for n in self.nodes),
            "last_link_id": max((lk[0] for lk in self.links), default=0),
            "nodes": nodes,
            "links": [list(lk) for lk in self.links],
            "groups": [
                {"id": i + 1, "title": g.title, "bounding": list(g.bounds), "color": g.color, "font_size": 24,
                 "flags": {}}
                for i, g in enumerate(self.groups)
            ],
            "config": {},
            "extra": {"ds": {"scale": scale, "offset": [40 - min_x, 60 - min_y]},
                      "frontendVersion": FRONTEND_VERSION},
            "version": 0.4,
        }


def _default(w: InputDef) -> Any:
    if "default" in w.options:
        return w.options["default"]
    if w.type == "COMBO":
        return w.choices[0] if w.choices else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}[w.type]


def _note_height(text: str, width: int) -> int:
    """A rendered Markdown note's height, with ~25% to spare (measured in frontend 1.49.6: about 4.8 units
    per character and 15 per line of body text)."""
    per_line = max(20, int((width - 30) / 5.0))
    lines = 0.0
    for line in text.strip().splitlines():
        if line.startswith("#"):
            lines += 2.0
        elif not line.strip():
            lines += 0.6
        else:
            lines += math.ceil(len(line) / per_line)
    return int(math.ceil((lines * 16 + 40) / 10) * 10)


# -- the guide's notes -----------------------------------------------------------------------------

NOTE_DATASET = """
## Dataset — 30 to 100 images, ~10 repeats
The guide: **30–100 high-resolution images** that you own, that are licensed for AI training, or that are
in the public domain. Quality over quantity.

Put them in a folder under `ComfyUI/input/` (here `my_style_dataset`), each image with a same-name
`.txt` caption (`01.png` + `01.txt`).

**repeats {repeats}**: each image is seen {repeats} times per epoch. The guide repeats ~10 times and does not go
lower; 8–20 is the useful range, more risks biased outputs.

**resolution {resolution}** ({arch}); aspect-ratio buckets keep each image near its own shape.

The lint report checks the folder against the guide (image count, sizes, captions). With the CLIP
connected it counts caption tokens with the model's real tokenizer (75 per window).
"""

NOTE_CAPTIONS = """
## Captions — detailed, comma-separated
Rich captions teach the model what is *in* the image, so the LoRA learns the *style*:
- **Subject**: "a crimson-breasted finch perched on a snowy branch", not "bird".
- **Context and backdrop**: "a bustling city market, vibrant with colors".
- **Element distinction**: separate things with commas ("Mickey Mouse, red shorts"), so the model
  can vary or recombine them later.

Write the main subject first: shuffling keeps the first part in place.

Prefix/suffix add text to every caption (a trigger word, or "by Honoré Daumier"); find/replace fixes
words in bulk; per-image overrides live in `edits` (the caption panel fills it in, and the workflow
carries them).

**write_back** off: the edits apply to this run only and your `.txt` files stay as they are. On: the
edited captions are written back to the `.txt` files (atomically, only the files that changed).
"""

NOTE_SHUFFLE = """
## Token shuffling — first part kept
At every training step the comma-separated parts of each caption are shuffled, so parts late in a
caption are not under-learned because of their position.

**keep_tokens 1**: the first part stays first, exactly as in the guide's examples:
"caricature of a man with a long beard, by Honoré Daumier, large crowd in the background, lithography, hands clasped in front".

The preview shows what training will see (same seed, same shuffles).
"""

NOTE_SAVE = """
## Save every epoch
**save: all** writes `{name}-000001.safetensors` … `-0000{epochs}.safetensors` into `models/loras`, so every
epoch can be compared in the grid and loaded by any LoRA loader (kohya format).

Files of another run with the same name are never overwritten unless you enable **overwrite**.
"""

NOTE_SAMPLES = """
## Samples and validation loss while it trains
Training Samples renders its prompt at weights 0.8 and 1.0 every 2 epochs (and the base model before
training) with ComfyUI's own KSampler on the epoch file just saved: exactly what LoraLoader + KSampler
will give with that file. They appear in Train LoRA's panel as a strip per epoch.
The panel also plots the **validation loss** after every epoch: a fixed, noise-free measure of how well
the LoRA denoises the validation images (Load Dataset's `validation`: some training images, held-out
ones, or a folder). When it stops falling the LoRA has learnt what it can; when it rises, later epochs
are likely overcooked. It does not judge the style: the grid does.
"""


NOTE_PICK = """
## Pick the sweet spot
Pick Epoch gives the chosen epoch's LoRA applied to the model (as LoraLoader), its file name and strength.
`lowest validation loss` picks by the numbers (ties go to the later epoch); click a cell of the grid to
choose by eye instead (`chosen cell`, stored in this workflow). The guide's rule: prefer an epoch that
looks right at weight 1.0 over one that only works at 0.8 and is overcooked at 1.0. The validation loss
says how well each epoch denoises the validation images, not whether the style looks right.
"""


def _note_grid(source: str, then: str) -> str:
    return f"""
## Find the sweet spot
Rows: every epoch {source}; columns: LoRA weight **0.6, 0.8, 1.0**; the same prompts and seed in every
cell. Use prompts that are *not* in your dataset (add your trigger word if you used one) to see whether
the style generalises.

The sweet spot usually lies at weights **0.8–1.0**. **Prefer the epoch that looks right at 1.0.** An
epoch that only looks right at 0.8 and over-fits at 1.0 generalises worse, or loses the style's
character when weakened.

{then}
"""


GRID_PROMPTS = "a lighthouse on a cliff at dusk\na portrait of an old fisherman in a knitted sweater"
GRID_NEGATIVE = "lowres, blurry, watermark, text"


def _note_train(arch: str, rank: int, alpha: int, preset: str, batch: int, checkpointing: bool) -> str:
    vram = ("The guide: SD1.5 needs smaller values, around 32 / 16, and trains on little VRAM (see the "
            "low-VRAM workflow for small cards)." if arch == "SD1.5" else
            "For SDXL the guide suggests rank 64 / alpha 32 when VRAM is limited (alpha need not be half the "
            "rank). Gradient checkpointing (on, from the preset) saves activation memory at some speed.")
    return f"""
## Train — {arch}, U-Net only
Preset **{preset}** sets the values shown below (choose "custom" to use your own).

**DAdapt-AdamW at learning rate 1.0**: D-Adaptation estimates the step size itself (the "d" in the
loss plot's d·lr); the learning rate is a multiplier on it, so 1.0 means "use the adapted step". The guide
prefers it over Adafactor because it works well with token shuffling. Constant schedule.

**Rank {rank} / alpha {alpha}**: rank is the LoRA's capacity (detail, VRAM, file size); alpha scales the
update (alpha/rank = {alpha / rank:g}). {vram}

**U-Net only**: the text encoder is left as it is, keeping its prompt accuracy and creative range.

**20 epochs**, each saved as its own file as soon as it finishes. Stop keeps the finished epochs; queueing
the same settings again resumes. Batch size {batch}; gradient checkpointing {"on" if checkpointing else "off"}.

The loss plot shows the loss per step, the epoch boundaries and d·lr.
"""


def _overview(title: str, checkpoint: str, body: str) -> str:
    return f"""
# {title}
{body.strip()}

**To run it:** set the checkpoint in *Load Checkpoint* (placeholder `{checkpoint}`) and put your
dataset in `ComfyUI/input/my_style_dataset`. Everything else follows the guide.
"""


# -- the workflows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuideRun:
    arch: str
    checkpoint: str
    resolution: int
    max_bucket: int
    preset: str
    rank: int
    alpha: float
    optimizer: str
    learning_rate: float
    batch_size: int
    gradient_checkpointing: bool
    name: str
    grid_size: int
    grid_steps: int


def _dataset_node(wf: Workflow, resolution: int, max_bucket: int) -> Node:
    return wf.node("StyleLoRALoadDataset", {
        "folder": "my_style_dataset", "caption_extension": ".txt", "repeats": 10, "resolution": resolution,
        "enable_bucket": True, "min_bucket_size": 256, "max_bucket_size": max_bucket, "bucket_step": 64,
        "bucket_no_upscale": False, "skip_unreadable": False})


def _caption_editor_node(wf: Workflow) -> Node:
    return wf.node("StyleLoRACaptionEditor", {"prefix": "", "suffix": "", "find": "", "replace": "",
                                               "write_back": False, "edits": "{}"})


def _shuffle_node(wf: Workflow, preview_count: int) -> Node:
    return wf.node("StyleLoRAShuffleCaption", {"enabled": True, "separator": ",", "keep_tokens": 1, "seed": 0,
                                              "preview_count": preview_count})


def _grid_node(wf: Workflow, steps: int, size: int, lora_name: str) -> Node:
    return wf.node("StyleLoRAEpochWeightGrid", {
        "prompts": GRID_PROMPTS, "negative": GRID_NEGATIVE, "weights": "0.6, 0.8, 1.0", "epochs_to_show": "all",
        "seed": 0, "images_per_prompt": 1, "steps": steps, "cfg": 7.0, "sampler_name": "dpmpp_2m",
        "scheduler": "karras", "width": size, "height": size, "lora_name": lora_name}, width=460)


def _training_workflow(defs: dict[str, NodeDef], run: GuideRun, overview: str, train_note: str) -> Workflow:
    wf = Workflow(defs)
    ckpt = wf.node("CheckpointLoaderSimple", {"ckpt_name": run.checkpoint})
    intro = wf.note("Read me", overview, 380)
    model_note = wf.note("Guide: base model", f"""
## Base model
Any {run.arch} checkpoint. Its MODEL, CLIP and VAE feed the dataset check (exact token counts), the
training and the grid. Train on the model you will generate with.
""", 380)

    dataset = _dataset_node(wf, run.resolution, run.max_bucket)
    lint = wf.node("PreviewAny", height=260, title="Lint report")
    dataset_note = wf.note("Guide: dataset", NOTE_DATASET.format(repeats=10, resolution=run.resolution,
                                                                 arch=run.arch), 380)

    captions = _caption_editor_node(wf)
    captions_note = wf.note("Guide: captions", NOTE_CAPTIONS, 560)

    # The node shows its example shuffles itself (before a run in its panel, after it as text).
    shuffle = _shuffle_node(wf, 3)
    shuffle_note = wf.note("Guide: token shuffling", NOTE_SHUFFLE, 420)

    train = wf.node("StyleLoRATrain", {
        "preset": run.preset, "output_name": run.name, "rank": run.rank, "alpha": run.alpha,
        "optimizer": run.optimizer, "learning_rate": run.learning_rate, "lr_scheduler": "constant",
        "lr_warmup_steps": 0, "epochs": 20, "batch_size": run.batch_size, "seed": 0, "mixed_precision": "auto",
        "gradient_checkpointing": run.gradient_checkpointing, "cache_latents": True, "training_comment": ""},
        width=460)
    loss = wf.node("PreviewImage", width=460, height=420, title="Loss plot")
    train_note_node = wf.note("Guide: training", train_note, 460)
    samples = wf.node("StyleLoRATrainingSamples", {
        "prompts": GRID_PROMPTS.splitlines()[0], "negative": GRID_NEGATIVE, "weights": "0.8, 1.0",
        "every_n_epochs": 2, "include_base": True, "seed": 0, "steps": run.grid_steps, "cfg": 7.0,
        "sampler_name": "dpmpp_2m", "scheduler": "karras", "width": run.grid_size, "height": run.grid_size},
        width=460)
    samples_note = wf.note("Guide: watching it learn", NOTE_SAMPLES, 460)

    save = wf.node("StyleLoRASaveEpochs", {"name": run.name, "save": "all", "n": 1, "subfolder": "",
                                           "overwrite": False}, width=340)
    save_note = wf.note("Guide: every epoch saved", NOTE_SAVE.format(name=run.name, epochs=20), 340)

    grid = _grid_node(wf, run.grid_steps, run.grid_size, "")
    grid_preview = wf.node("PreviewImage", width=460, height=560, title="Epoch × weight grid")
    grid_note = wf.note("Guide: the sweet spot", _note_grid(
        "(from Save Epochs)", "Then use that epoch's file like any LoRA: see `style_lora_compare_epochs.json`."), 460)

    wf.link(ckpt, "CLIP", dataset, "clip")
    wf.link(dataset, "lint_report", lint, "source")
    wf.link(dataset, "dataset", captions, "dataset")
    wf.link(captions, "dataset", shuffle, "dataset")
    wf.link(ckpt, "MODEL", train, "model")
    wf.link(ckpt, "CLIP", train, "clip")
    wf.link(ckpt, "VAE", train, "vae")
    wf.link(shuffle, "dataset", train, "dataset")
    wf.link(train, "loss_plot", loss, "images")
    wf.link(samples, "samples", train, "samples")
    wf.link(train, "run", save, "run")
    wf.link(ckpt, "MODEL", grid, "model")
    wf.link(ckpt, "CLIP", grid, "clip")
    wf.link(ckpt, "VAE", grid, "vae")
    wf.link(save, "epochs", grid, "epochs")
    wf.link(grid, "grid", grid_preview, "images")
    pick = wf.node("StyleLoRAPickEpoch", {"rule": "lowest validation loss", "epoch": 1, "weight": 1.0,
                                          "lora_name": ""}, width=460)
    pick_note = wf.note("Guide: pick the epoch", NOTE_PICK, 460)
    wf.link(grid, "table", pick, "table")
    wf.link(ckpt, "MODEL", pick, "model")
    wf.link(ckpt, "CLIP", pick, "clip")

    wf.group("1 · Base model", BLUE, Column(380, [intro], [ckpt, model_note]))
    wf.group("2 · Dataset", GREEN, Column(380, [dataset_note], [dataset, lint]))
    wf.group("3 · Captions", GREEN, Column(560, [captions_note], [captions]))
    wf.group("4 · Token shuffling", GREEN, Column(420, [shuffle_note], [shuffle]))
    wf.group("5 · Train LoRA", BROWN, Column(460, [train_note_node, samples_note], [samples, train, loss]))
    wf.group("6 · Save epochs", BROWN, Column(340, [save_note], [save]))
    wf.group("7 · Epoch × weight grid", PURPLE, Column(460, [grid_note], [grid, grid_preview]))
    wf.group("8 · Pick", PURPLE, Column(460, [pick_note], [pick]))
    return wf


SD15 = GuideRun("SD1.5", SD15_CHECKPOINT, 512, 1024, "SD1.5 (guide: rank 32 / alpha 16)", 32, 16.0, "DAdaptAdamW",
                1.0, 2, False, "my_style", 512, 20)
SDXL = GuideRun("SDXL", SDXL_CHECKPOINT, 1024, 2048, "SDXL (guide: rank 64 / alpha 32)", 64, 32.0, "DAdaptAdamW",
                1.0, 2, True, "my_style_sdxl", 1024, 25)
LOW_VRAM = GuideRun("SD1.5", SD15_CHECKPOINT, 512, 1024, "SD1.5 low VRAM", 16, 8.0, "AdamW8bit", 1e-4, 1, True,
                    "my_style_lowvram", 512, 20)


def full_guide(defs: dict[str, NodeDef], run: GuideRun) -> Workflow:
    overview = _overview(f"Style LoRA, the whole guide ({run.arch})", run.checkpoint, f"""
Dataset → captions → token shuffling → training (rank {run.rank} / alpha {run.alpha:g}, DAdapt-AdamW at 1.0,
20 epochs, U-Net only) → every epoch saved → epoch × weight grid to pick the sweet spot.
Each step has a note with the guide's reasoning.
""")
    note = _note_train(run.arch, run.rank, int(run.alpha), run.preset, run.batch_size, run.gradient_checkpointing)
    return _training_workflow(defs, run, overview, note)


def low_vram(defs: dict[str, NodeDef]) -> Workflow:
    run = LOW_VRAM
    overview = _overview("Style LoRA on a small GPU (SD1.5)", run.checkpoint, """
The guide's pipeline for cards with ~4–6 GB: AdamW8bit, rank 16 / alpha 8, gradient checkpointing,
batch size 1, latents cached. Use the full-guide workflow (DAdapt-AdamW) when it fits: the guide prefers it.
""")
    note = f"""
## Train — low VRAM, U-Net only
Preset **{run.preset}** sets the values shown below.

**AdamW8bit** keeps the optimizer state in 8 bits (needs the `bitsandbytes` package, NVIDIA GPUs).
It is not adaptive: its learning rate is the real step size, so **1e-4** (the pack's low-VRAM preset),
not DAdapt's 1.0. Constant schedule.

**Rank 16 / alpha 8**: the guide lowers rank and alpha when VRAM is short (alpha/rank stays 0.5).

**Gradient checkpointing on**: recomputes activations instead of storing them; slower, much less memory.
**Batch size 1**: the guide does not recommend lowering the batch size, but it is the option when
VRAM forces it. **cache_latents** on: the VAE is not needed during training.

**U-Net only**, **20 epochs**, every epoch saved; Stop keeps finished epochs, queueing again resumes.
"""
    return _training_workflow(defs, run, overview, note)


def captioning_only(defs: dict[str, NodeDef]) -> Workflow:
    wf = Workflow(defs)
    ckpt = wf.node("CheckpointLoaderSimple", {"ckpt_name": SD15_CHECKPOINT})
    intro = wf.note("Read me", f"""
# Prepare a dataset (no training)
Check the images, edit the captions and preview the token shuffling before you train.
Queue it as often as you like: nothing is trained and, with write_back off, no file is changed.

The Load Checkpoint is optional: its CLIP only makes the lint report count caption tokens with the
model's real tokenizer. Set the checkpoint you will train on (placeholder
`{SD15_CHECKPOINT}`), or delete the node.
""", 380)

    dataset = _dataset_node(wf, 512, 1024)
    lint = wf.node("PreviewAny", height=320, title="Lint report")
    dataset_note = wf.note("Guide: dataset", NOTE_DATASET.format(repeats=10, resolution=512, arch="SD1.5"), 380)

    captions = _caption_editor_node(wf)
    captions_text = wf.node("PreviewAny", height=320, title="Edited captions")
    captions_note = wf.note("Guide: captions", NOTE_CAPTIONS, 560)

    shuffle = _shuffle_node(wf, 5)
    # ShuffleCaption is not an output node: without something using its output it would not run.
    preview = wf.node("PreviewAny", height=320, title="Shuffle preview")
    shuffle_note = wf.note("Guide: token shuffling", NOTE_SHUFFLE, 420)

    wf.link(ckpt, "CLIP", dataset, "clip")
    wf.link(dataset, "lint_report", lint, "source")
    wf.link(dataset, "dataset", captions, "dataset")
    wf.link(captions, "captions", captions_text, "source")
    wf.link(captions, "dataset", shuffle, "dataset")
    wf.link(shuffle, "preview", preview, "source")

    wf.group("1 · Tokenizer (optional)", BLUE, Column(380, [intro], [ckpt]))
    wf.group("2 · Dataset", GREEN, Column(380, [dataset_note], [dataset, lint]))
    wf.group("3 · Captions", GREEN, Column(560, [captions_note], [captions, captions_text]))
    wf.group("4 · Token shuffling", GREEN, Column(420, [shuffle_note], [shuffle, preview]))
    return wf


def compare_epochs(defs: dict[str, NodeDef]) -> Workflow:
    wf = Workflow(defs)
    ckpt = wf.node("CheckpointLoaderSimple", {"ckpt_name": SD15_CHECKPOINT})
    intro = wf.note("Read me", f"""
# Compare saved epochs, then use the best one
For epochs saved earlier (by *Save Epochs* or any kohya trainer): files named
`my_style-000001.safetensors` … in `models/loras`.

**To run it:** set the checkpoint the LoRA was trained on (placeholder `{SD15_CHECKPOINT}`), the saved
name in the grid's `lora_name` (`my_style`) and, once you have picked an epoch, its file in *Load LoRA*
(placeholder `{CHOSEN_EPOCH_LORA}`).
""", 380)

    grid = _grid_node(wf, 20, 512, "my_style")
    grid_preview = wf.node("PreviewImage", width=460, height=560, title="Epoch × weight grid")
    grid_note = wf.note("Guide: the sweet spot", _note_grid(
        "found from `lora_name` (no `epochs` link)",
        "`epochs_to_show` narrows the rows, e.g. `10-20`. Then load the chosen file on the right."), 460)

    lora = wf.node("LoraLoader", {"lora_name": CHOSEN_EPOCH_LORA, "strength_model": 1.0, "strength_clip": 1.0})
    positive = wf.node("CLIPTextEncode", {"text": "a lighthouse on a cliff at dusk"}, title="Positive prompt")
    negative = wf.node("CLIPTextEncode", {"text": GRID_NEGATIVE}, title="Negative prompt")
    latent = wf.node("EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1})
    use_note = wf.note("Guide: use the chosen epoch", """
## Use the chosen epoch
Load the epoch you picked with a normal LoRA loader at **strength 1.0**, the weight the guide wants a
good epoch to work at (the file is kohya format, so A1111 and other tools load it too).

Same seed (0, fixed), steps, CFG, sampler and size as the grid: the first prompt reproduces that
epoch's cell at weight 1.0. Then change the prompt and the seed.
""", 380)

    sampler = wf.node("KSampler", {"seed": 0, "steps": 20, "cfg": 7.0, "sampler_name": "dpmpp_2m",
                                   "scheduler": "karras", "denoise": 1.0}, width=340)
    decode = wf.node("VAEDecode", width=340)
    save = wf.node("SaveImage", {"filename_prefix": "style_lora/my_style-000012"}, width=460, height=520)

    wf.link(ckpt, "MODEL", grid, "model")
    wf.link(ckpt, "CLIP", grid, "clip")
    wf.link(ckpt, "VAE", grid, "vae")
    wf.link(grid, "grid", grid_preview, "images")
    wf.link(ckpt, "MODEL", lora, "model")
    wf.link(ckpt, "CLIP", lora, "clip")
    wf.link(lora, "CLIP", positive, "clip")
    wf.link(lora, "CLIP", negative, "clip")
    wf.link(lora, "MODEL", sampler, "model")
    wf.link(positive, "CONDITIONING", sampler, "positive")
    wf.link(negative, "CONDITIONING", sampler, "negative")
    wf.link(latent, "LATENT", sampler, "latent_image")
    wf.link(sampler, "LATENT", decode, "samples")
    wf.link(ckpt, "VAE", decode, "vae")
    wf.link(decode, "IMAGE", save, "images")

    wf.group("1 · Base model", BLUE, Column(380, [intro], [ckpt]))
    wf.group("2 · Epoch × weight grid", PURPLE, Column(460, [grid_note], [grid, grid_preview]))
    wf.group("3 · Use the chosen epoch", BROWN, Column(380, [use_note], [lora, positive, negative, latent]),
             Column(340, [], [sampler, decode]), Column(460, [], [save]))
    return wf


BUILDERS = {
    "style_lora_full_guide_sd15.json": lambda defs: full_guide(defs, SD15),
    "style_lora_full_guide_sdxl.json": lambda defs: full_guide(defs, SDXL),
    "style_lora_low_vram_sd15.json": low_vram,
    "style_lora_captioning_only.json": captioning_only,
    "style_lora_compare_epochs.json": compare_epochs,
}


def build_all() -> dict[str, dict[str, Any]]:
    defs = node_definitions()
    return {name: build(defs).to_json(name) for name, build in BUILDERS.items()}


def render(workflow: dict[str, Any]) -> str:
    return json.dumps(workflow, indent=2, ensure_ascii=False) + "\n"


def write_all(out_dir: Path = WORKFLOWS_DIR) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, workflow in build_all().items():
        path = out_dir / name
        path.write_text(render(workflow), encoding="utf-8", newline="\n")
        paths.append(path)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=WORKFLOWS_DIR, help="folder to write (default: workflows/)")
    parser.add_argument("--check", action="store_true", help="compare with the files in --out instead of writing")
    args = parser.parse_args(argv)
    if args.check:
        stale = [name for name, wf in build_all().items()
                 if not (args.out / name).is_file() or (args.out / name).read_text(encoding="utf-8") != render(wf)]
        for name in stale:
            print(f"out of date: {args.out / name} (run python tools/build_workflows.py)")
        return 1 if stale else 0
    for path in write_all(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
