"""The example workflows in ``workflows/`` (ComfyUI frontend UI format 0.4), checked without ComfyUI.

Our nodes' definitions come from the node classes (INPUT_TYPES / RETURN_TYPES); the core nodes' from
``tests/data/comfyui_core_nodes.json``, recorded from a real ComfyUI's /object_info. The validator here
is independent of ``tools/build_workflows.py`` (which writes the files) and is itself tested on
broken copies of the workflows.
"""

from __future__ import annotations

import copy
import json
import math
import uuid
from pathlib import Path
from typing import Any

import pytest

from style_lora_trainer.nodes import NODE_CLASS_MAPPINGS
from style_lora_trainer.style_lora_engine.captions import CaptionEdits
from style_lora_trainer.style_lora_engine.config import CUSTOM_PRESET, PRESETS

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "workflows"
CORE = json.loads((Path(__file__).parents[1] / "data" / "comfyui_core_nodes.json").read_text(encoding="utf-8"))

SD15 = "style_lora_full_guide_sd15.json"
SDXL = "style_lora_full_guide_sdxl.json"
LOW_VRAM = "style_lora_low_vram_sd15.json"
CAPTIONING = "style_lora_captioning_only.json"
COMPARE = "style_lora_compare_epochs.json"
EXPECTED = [SD15, SDXL, LOW_VRAM, CAPTIONING, COMPARE]

NOTE_TYPES = ("Note", "MarkdownNote")
FRONTEND_ONLY = tuple(k for k in CORE["_frontend_only"] if not k.startswith("_"))
WIDGET_PRIMITIVES = ("INT", "FLOAT", "STRING", "BOOLEAN")
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
TITLE_H = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's title bar is drawn above its pos


# -- node definitions (ours from the classes, core from the recorded /object_info) ---------------------


def _definitions() -> dict[str, dict[str, Any]]:
    defs: dict[str, dict[str, Any]] = {}
    ks = CORE["KSampler"]["input"]["required"]
    for name, cls in NODE_CLASS_MAPPINGS.items():
        spec = cls.INPUT_TYPES()
        inputs = [(n, tuple(s), True) for n, s in spec["required"].items()]
        inputs += [(n, tuple(s), False) for n, s in spec.get("optional", {}).items()]
        # Outside ComfyUI the grid's sampler/scheduler lists are a fallback; inside they are KSampler's.
        inputs = [(n, (ks[n][0], *s[1:]) if n in ("sampler_name", "scheduler") else s, r) for n, s, r in inputs]
        defs[name] = {"inputs": inputs, "outputs": list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES)), "ours": True}
    for name, info in CORE.items():
        if name.startswith("_"):
            continue
        inputs = [(n, tuple(info["input"][sec][n]), sec == "required")
                  for sec in ("required", "optional") for n in info["input_order"].get(sec, [])]
        defs[name] = {"inputs": inputs, "outputs": list(zip(info["output_name"], info["output"])), "ours": False}
    return defs


DEFS = _definitions()


def _is_widget(spec: tuple) -> bool:
    head = spec[0]
    if isinstance(head, list) or head == "COMBO":
        return True
    opts = spec[1] if len(spec) > 1 else {}
    return head in WIDGET_PRIMITIVES and not opts.get("forceInput", False)


def _has_control(name: str, spec: tuple) -> bool:
    if spec[0] != "INT":
        return False
    control = (spec[1] if len(spec) > 1 else {}).get("control_after_generate")
    return bool(control) if control is not None else name in ("seed", "noise_seed")


def sockets(node_type: str) -> list[tuple[str, str, bool]]:
    return [(n, s[0], r) for n, s, r in DEFS[node_type]["inputs"] if not _is_widget(s)]


def widget_layout(node_type: str) -> list[tuple[str, tuple | None]]:
    """(widget name, input spec) in the frontend's order; None marks a control_after_generate widget."""
    if node_type in NOTE_TYPES:
        return [("text", ("STRING", {"multiline": True}))]
    out: list[tuple[str, tuple | None]] = []
    for n, s, _ in DEFS[node_type]["inputs"]:
        if _is_widget(s):
            out.append((n, s))
            if _has_control(n, s):
                out.append(("control_after_generate", None))
    return out


def named_widgets(node: dict) -> dict[str, Any]:
    names = [n for n, _ in widget_layout(node["type"])]
    assert len(names) == len(node["widgets_values"]), (node["type"], names, node["widgets_values"])
    return dict(zip(names, node["widgets_values"]))


# -- the validator -----------------------------------------------------------------------------------


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _vec2(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_num(x) for x in v)


def _check_value(where: str, name: str, spec: tuple | None, value: Any) -> list[str]:
    if spec is None:
        return [] if value in CONTROL_VALUES else [f"{where}: control_after_generate {value!r} not in {CONTROL_VALUES}"]
    head, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(head, list) or head == "COMBO":
        choices = head if isinstance(head, list) else opts.get("options", [])
        if not choices:  # a model-file list (empty in the recorded ComfyUI): any file name
            ok = isinstance(value, str) and value.endswith(MODEL_FILE_SUFFIXES)
            return [] if ok else [f"{where}: {name} = {value!r} is not a model file name"]
        return [] if value in choices else [f"{where}: {name} = {value!r} is not one of the options {choices}"]
    if head == "BOOLEAN":
        return [] if isinstance(value, bool) else [f"{where}: {name} = {value!r} is not a BOOLEAN"]
    if head == "STRING":
        return [] if isinstance(value, str) else [f"{where}: {name} = {value!r} is not a STRING"]
    if head == "INT" and not (isinstance(value, int) and not isinstance(value, bool)):
        return [f"{where}: {name} = {value!r} is not an INT"]
    if head == "FLOAT" and not _num(value):
        return [f"{where}: {name} = {value!r} is not a FLOAT"]
    errors = []
    if "min" in opts and value < opts["min"]:
        errors.append(f"{where}: {name} = {value!r} is below min {opts['min']}")
    if "max" in opts and value > opts["max"]:
        errors.append(f"{where}: {name} = {value!r} is above max {opts['max']}")
    step = opts.get("step", 1)
    if head == "INT" and step > 1 and (value - opts.get("min", 0)) % step:
        errors.append(f"{where}: {name} = {value!r} is not on its step {step}")
    return errors


def _check_semantics(where: str, node: dict, values: dict[str, Any], linked: set[str]) -> list[str]:
    """Checks a node's widgets cannot express: what the node itself would refuse or silently override."""
    errors = []
    t = node["type"]
    if t == "StyleLoRACaptionEditor":
        try:
            CaptionEdits.from_json(values["edits"])
        except Exception as exc:  # noqa: BLE001 - any refusal is the finding
            errors.append(f"{where}: edits is refused by CaptionEdits.from_json: {exc}")
    if t == "StyleLoRATrain" and values["preset"] != CUSTOM_PRESET:
        for key, want in PRESETS[values["preset"]].overrides.items():
            if values[key] != want:
                errors.append(f"{where}: preset {values['preset']!r} trains with {key}={want!r} but the widget "
                              f"shows {values[key]!r}")
    if t == "StyleLoRAEpochWeightGrid" and "epochs" not in linked and not values["lora_name"].strip():
        errors.append(f"{where}: the grid has neither an epochs link nor a lora_name")
    return errors


def validate(wf: Any) -> list[str]:
    """Every problem found in a UI-format workflow, as readable lines (empty: valid)."""
    if not isinstance(wf, dict):
        return ["the workflow is not a JSON object"]
    errors: list[str] = []
    top = {"id": str, "revision": int, "last_node_id": int, "last_link_id": int, "nodes": list, "links": list,
           "groups": list, "config": dict, "extra": dict}
    for key, typ in top.items():
        if not isinstance(wf.get(key), typ) or isinstance(wf.get(key), bool):
            errors.append(f"top level: {key} must be {typ.__name__}, got {wf.get(key)!r:.60}")
    if wf.get("version") != 0.4:
        errors.append(f"top level: version must be 0.4, got {wf.get('version')!r}")
    if errors:
        return errors
    try:
        uuid.UUID(wf["id"])
    except ValueError:
        errors.append(f"top level: id {wf['id']!r} is not a UUID")
    ds = wf["extra"].get("ds")
    if not (isinstance(ds, dict) and _num(ds.get("scale")) and ds["scale"] > 0 and _vec2(ds.get("offset"))):
        errors.append(f"extra.ds must be {{scale, offset: [x, y]}}, got {ds!r}")
    for g in wf["groups"]:
        b = g.get("bounding") if isinstance(g, dict) else None
        if not (isinstance(g, dict) and isinstance(g.get("title"), str) and isinstance(b, list) and len(b) == 4
                and all(_num(x) for x in b) and b[2] > 0 and b[3] > 0):
            errors.append(f"group {g!r:.80} needs a title and a bounding [x, y, w, h]")

    # nodes
    nodes: dict[int, dict] = {}
    for n in wf["nodes"]:
        where = f"node {n.get('id')!r} ({n.get('type')})" if isinstance(n, dict) else f"node {n!r:.40}"
        shape = {"id": int, "type": str, "flags": dict, "order": int, "mode": int, "inputs": list, "outputs": list,
                 "properties": dict}
        bad = [k for k, typ in shape.items() if not isinstance(n.get(k), typ) or isinstance(n.get(k), bool)]
        if bad or not _vec2(n.get("pos")) or not _vec2(n.get("size")):
            errors.append(f"{where}: missing or mistyped {bad or 'pos/size'}")
            continue
        if n["id"] in nodes:
            errors.append(f"{where}: duplicate node id")
        nodes[n["id"]] = n
        if n["mode"] != 0:
            errors.append(f"{where}: mode {n['mode']} (0 = always)")
        if min(n["size"]) <= 0:
            errors.append(f"{where}: size {n['size']} must be positive")
        if n["type"] not in DEFS and n["type"] not in FRONTEND_ONLY:
            errors.append(f"{where}: unknown node type (not ours, not a recorded core node, not frontend-only)")
    if nodes and wf["last_node_id"] < max(nodes):
        errors.append(f"top level: last_node_id {wf['last_node_id']} < largest node id {max(nodes)}")
    if sorted(n["order"] for n in nodes.values()) != list(range(len(nodes))):
        errors.append("node orders are not 0..N-1")

    # links, both ends
    links: dict[int, list] = {}
    for lk in wf["links"]:
        if not (isinstance(lk, list) and len(lk) == 6 and all(isinstance(x, int) and not isinstance(x, bool)
                                                              for x in lk[:5]) and isinstance(lk[5], str)):
            errors.append(f"link {lk!r}: must be [id, origin_id, origin_slot, target_id, target_slot, type]")
            continue
        link_id, origin, oslot, target, tslot, ltype = lk
        where = f"link {link_id}"
        if link_id in links:
            errors.append(f"{where}: duplicate link id")
        links[link_id] = lk
        if origin not in nodes or target not in nodes:
            errors.append(f"{where}: origin {origin} or target {target} is not a node")
            continue
        src, dst = nodes[origin], nodes[target]
        if not (0 <= oslot < len(src["outputs"])) or not (0 <= tslot < len(dst["inputs"])):
            errors.append(f"{where}: slot out of range ({origin}:{oslot} -> {target}:{tslot})")
            continue
        out, inp = src["outputs"][oslot], dst["inputs"][tslot]
        if link_id not in (out.get("links") or []):
            errors.append(f"{where}: missing from node {origin} outputs[{oslot}].links")
        if inp.get("link") != link_id:
            errors.append(f"{where}: node {target} inputs[{tslot}].link is {inp.get('link')!r}")
        if ltype != out.get("type"):
            errors.append(f"{where}: type {ltype} differs from its origin output {src['type']}.{out.get('name')} "
                          f"({out.get('type')})")
        if inp.get("type") not in ("*", ltype):
            errors.append(f"{where}: {ltype} into {dst['type']}.{inp.get('name')}, which takes {inp.get('type')}")
        if src["order"] >= dst["order"]:
            errors.append(f"{where}: origin order {src['order']} is not before target order {dst['order']}")
    if links and wf["last_link_id"] < max(links):
        errors.append(f"top level: last_link_id {wf['last_link_id']} < largest link id {max(links)}")
    for n in nodes.values():
        for slot, inp in enumerate(n["inputs"]):
            lk = links.get(inp.get("link")) if inp.get("link") is not None else None
            if inp.get("link") is not None and (lk is None or lk[3] != n["id"] or lk[4] != slot):
                errors.append(f"node {n['id']} inputs[{slot}] names link {inp.get('link')}, which does not end there")
        for slot, out in enumerate(n["outputs"]):
            for link_id in out.get("links") or []:
                lk = links.get(link_id)
                if lk is None or lk[1] != n["id"] or lk[2] != slot:
                    errors.append(f"node {n['id']} outputs[{slot}] names link {link_id}, which does not start there")

    # each node against its definition
    for n in nodes.values():
        where = f"node {n['id']} ({n['type']})"
        values = n.get("widgets_values", [])
        if not isinstance(values, list):
            errors.append(f"{where}: widgets_values must be a list")
            continue
        if n["type"] in FRONTEND_ONLY:
            if n["type"] in NOTE_TYPES and not (len(values) == 1 and isinstance(values[0], str)):
                errors.append(f"{where}: a note's widgets_values must be [text], got {values!r:.60}")
            if n["type"] in NOTE_TYPES and (n["inputs"] or n["outputs"]):
                errors.append(f"{where}: a note has no inputs or outputs")
            continue
        if n["type"] not in DEFS:
            continue
        if n["properties"].get("Node name for S&R") != n["type"]:
            errors.append(f"{where}: properties['Node name for S&R'] must be {n['type']!r}")
        want_in = [(name, typ) for name, typ, _ in sockets(n["type"])]
        have_in = [(i.get("name"), i.get("type")) for i in n["inputs"]]
        if have_in != want_in:
            errors.append(f"{where}: inputs {have_in} differ from the definition's sockets {want_in}")
        want_out = [(name, typ) for name, typ in DEFS[n["type"]]["outputs"]]
        have_out = [(o.get("name"), o.get("type")) for o in n["outputs"]]
        if have_out != want_out:
            errors.append(f"{where}: outputs {have_out} differ from the definition {want_out}")
        linked = {i.get("name") for i in n["inputs"] if i.get("link") is not None}
        for name, _, required in sockets(n["type"]):
            if required and name not in linked:
                errors.append(f"{where}: required input {name!r} is not linked")
        layout = widget_layout(n["type"])
        if len(values) != len(layout):
            errors.append(f"{where}: {len(values)} widgets_values for {len(layout)} widgets "
                          f"{[name for name, _ in layout]}")
            continue
        for (name, spec), value in zip(layout, values):
            errors += _check_value(where, name, spec, value)
        named = n.get("widgets_values_named")
        if named is not None and named != {name: v for (name, _), v in zip(layout, values)}:
            errors.append(f"{where}: widgets_values_named disagrees with widgets_values")
        errors += _check_semantics(where, n, {name: v for (name, _), v in zip(layout, values)}, linked)
    return errors


# -- loading -----------------------------------------------------------------------------------------


def load(name: str) -> dict:
    return json.loads((WORKFLOWS / name).read_text(encoding="utf-8"))


def nodes_of(wf: dict, node_type: str) -> list[dict]:
    return [n for n in wf["nodes"] if n["type"] == node_type]


def the(wf: dict, node_type: str) -> dict:
    found = nodes_of(wf, node_type)
    assert len(found) == 1, f"expected one {node_type}, found {len(found)}"
    return found[0]


def settings(wf: dict, node_type: str) -> dict[str, Any]:
    return named_widgets(the(wf, node_type))


def note_text(wf: dict) -> str:
    return "\n".join(n["widgets_values"][0] for n in wf["nodes"] if n["type"] in NOTE_TYPES)


def upstream(wf: dict, node: dict, input_name: str) -> tuple[dict, int]:
    link_id = next(i["link"] for i in node["inputs"] if i["name"] == input_name)
    lk = next(lk for lk in wf["links"] if lk[0] == link_id)
    return next(n for n in wf["nodes"] if n["id"] == lk[1]), lk[2]


# -- the files -----------------------------------------------------------------------------------------


def test_the_five_workflows_are_there_and_nothing_else():
    assert sorted(p.name for p in WORKFLOWS.glob("*.json")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", EXPECTED)
def test_workflow_is_valid(name):
    text = (WORKFLOWS / name).read_text(encoding="utf-8")
    wf = json.loads(text)
    assert text == json.dumps(wf, indent=2, ensure_ascii=False) + "\n", "not pretty-printed with indent 2"
    assert validate(wf) == []


@pytest.mark.parametrize("name", EXPECTED)
def test_workflow_has_notes_groups_and_a_clean_layout(name):
    wf = load(name)
    assert any(n["type"] in NOTE_TYPES for n in wf["nodes"]), "no Note explains the guide"
    assert len(wf["groups"]) >= 3
    rects = {n["id"]: (n["pos"][0], n["pos"][1] - TITLE_H, n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in wf["nodes"]}
    ids = sorted(rects)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            ra, rb = rects[a], rects[b]
            overlap = ra[0] < rb[2] and rb[0] < ra[2] and ra[1] < rb[3] and rb[1] < ra[3]
            assert not overlap, f"nodes {a} and {b} overlap"
    boxes = [(g["bounding"][0], g["bounding"][1], g["bounding"][0] + g["bounding"][2],
              g["bounding"][1] + g["bounding"][3]) for g in wf["groups"]]
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            assert not (a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]), "groups overlap"
    for node_id, r in rects.items():
        inside = [b for b in boxes if b[0] <= r[0] and b[1] <= r[1] and r[2] <= b[2] and r[3] <= b[3]]
        assert len(inside) == 1, f"node {node_id} is not framed by exactly one group"
    # Left to right: every link goes right (or stays in its column).
    by_id = {n["id"]: n for n in wf["nodes"]}
    for lk in wf["links"]:
        assert by_id[lk[1]]["pos"][0] <= by_id[lk[3]]["pos"][0], f"link {lk} goes leftwards"


def test_recorded_core_nodes_are_exactly_the_ones_used():
    src = CORE["_source"]
    assert (src["comfyui_version"], src["comfyui_commit"], src["frontend_version"]) == ("0.33.0", "783545f6",
                                                                                       "1.49.6")
    used = {n["type"] for name in EXPECTED for n in load(name)["nodes"]}
    recorded = {k for k in CORE if not k.startswith("_")}
    assert recorded == used - set(NODE_CLASS_MAPPINGS) - set(FRONTEND_ONLY)
    for info in (CORE[k] for k in recorded):
        assert set(info) == {"input", "input_order", "output", "output_name", "name", "display_name", "output_node"}
    for note in NOTE_TYPES:
        assert [w["name"] for w in CORE["_frontend_only"][note]["widgets"]] == ["text"]


def test_only_the_checkpoints_and_the_lora_file_are_placeholders():
    files = {}
    for name in EXPECTED:
        wf = load(name)
        for n in wf["nodes"]:
            if n["type"] in ("CheckpointLoaderSimple", "LoraLoader"):
                for value in named_widgets(n).values():
                    if isinstance(value, str) and value.endswith(".safetensors"):
                        files.setdefault(name, []).append(value)
    assert files == {
        SD15: ["v1-5-pruned-emaonly.safetensors"],
        SDXL: ["sd_xl_base_1.0.safetensors"],
        LOW_VRAM: ["v1-5-pruned-emaonly.safetensors"],
        CAPTIONING: ["v1-5-pruned-emaonly.safetensors"],
        COMPARE: ["v1-5-pruned-emaonly.safetensors", "my_style-000012.safetensors"],
    }


# -- the guide's settings --------------------------------------------------------------------------


def _check_pipeline(wf: dict) -> None:
    """Checkpoint → dataset → captions → shuffle → train → save → grid → preview, all wired."""
    ckpt = the(wf, "CheckpointLoaderSimple")
    train, save, grid = the(wf, "StyleLoRATrain"), the(wf, "StyleLoRASaveEpochs"), the(wf, "StyleLoRAEpochWeightGrid")
    assert upstream(wf, train, "dataset")[0]["type"] == "StyleLoRAShuffleCaption"
    assert upstream(wf, the(wf, "StyleLoRAShuffleCaption"), "dataset")[0]["type"] == "StyleLoRACaptionEditor"
    assert upstream(wf, the(wf, "StyleLoRACaptionEditor"), "dataset")[0]["type"] == "StyleLoRALoadDataset"
    assert upstream(wf, the(wf, "StyleLoRALoadDataset"), "clip") == (ckpt, 1)
    for node in (train, grid):
        assert [upstream(wf, node, s) for s in ("model", "clip", "vae")] == [(ckpt, 0), (ckpt, 1), (ckpt, 2)]
    assert upstream(wf, save, "run")[0] is train
    assert upstream(wf, grid, "epochs")[0] is save
    previews = [upstream(wf, p, "images") for p in nodes_of(wf, "PreviewImage")]
    assert (grid, 0) in previews and (train, 1) in previews, "grid and loss_plot must each reach a PreviewImage"
    assert settings(wf, "StyleLoRASaveEpochs")["save"] == "all"
    assert settings(wf, "StyleLoRASaveEpochs")["name"] == settings(wf, "StyleLoRATrain")["output_name"]
    shuffle = settings(wf, "StyleLoRAShuffleCaption")
    assert shuffle["enabled"] is True and shuffle["keep_tokens"] == 1 and shuffle["separator"] == ","
    t = settings(wf, "StyleLoRATrain")
    assert t["epochs"] == 20 and t["lr_scheduler"] == "constant"
    weights = [float(w) for w in settings(wf, "StyleLoRAEpochWeightGrid")["weights"].split(",")]
    assert 0.8 in weights and 1.0 in weights
    assert settings(wf, "StyleLoRAEpochWeightGrid")["epochs_to_show"] == "all"
    assert settings(wf, "StyleLoRALoadDataset")["repeats"] == 10


def test_full_guide_sd15_follows_the_guide():
    wf = load(SD15)
    _check_pipeline(wf)
    t = settings(wf, "StyleLoRATrain")
    assert (t["rank"], t["alpha"], t["optimizer"], t["learning_rate"]) == (32, 16.0, "DAdaptAdamW", 1.0)
    assert t["preset"] in PRESETS and PRESETS[t["preset"]].overrides["rank"] == 32
    assert settings(wf, "StyleLoRALoadDataset")["resolution"] == 512
    assert settings(wf, "StyleLoRAEpochWeightGrid")["weights"] == "0.6, 0.8, 1.0"
    text = note_text(wf)
    for phrase in ("30–100", "repeats 10", "keep_tokens 1", "learning rate 1.0", "Rank 32 / alpha 16", "U-Net only",
                   "20 epochs", "save: all", "0.8–1.0", "Prefer the epoch that looks right at 1.0",
                   "Context and backdrop", "Element distinction"):
        assert phrase in text, phrase


def test_full_guide_sdxl_follows_the_guide():
    wf = load(SDXL)
    _check_pipeline(wf)
    t = settings(wf, "StyleLoRATrain")
    assert (t["rank"], t["alpha"], t["optimizer"], t["learning_rate"]) == (64, 32.0, "DAdaptAdamW", 1.0)
    assert settings(wf, "StyleLoRALoadDataset")["resolution"] == 1024
    g = settings(wf, "StyleLoRAEpochWeightGrid")
    assert (g["width"], g["height"]) == (1024, 1024)
    assert "Rank 64 / alpha 32" in note_text(wf)


def test_low_vram_uses_adamw8bit_and_gradient_checkpointing():
    wf = load(LOW_VRAM)
    _check_pipeline(wf)
    t = settings(wf, "StyleLoRATrain")
    assert t["optimizer"] == "AdamW8bit" and t["gradient_checkpointing"] is True and t["batch_size"] == 1
    assert t["rank"] < 32 and t["alpha"] < 16
    assert t["learning_rate"] == PRESETS["SD1.5 low VRAM"].overrides["learning_rate"] == 1e-4
    assert settings(wf, "StyleLoRALoadDataset")["resolution"] == 512
    assert "bitsandbytes" in note_text(wf)


def test_captioning_only_shows_every_text_output():
    wf = load(CAPTIONING)
    assert not nodes_of(wf, "StyleLoRATrain") and not nodes_of(wf, "StyleLoRASaveEpochs")
    assert settings(wf, "StyleLoRACaptionEditor")["write_back"] is False
    assert settings(wf, "StyleLoRAShuffleCaption")["keep_tokens"] == 1
    shown = {(src["type"], slot) for src, slot in (upstream(wf, p, "source") for p in nodes_of(wf, "PreviewAny"))}
    assert shown == {("StyleLoRALoadDataset", 1), ("StyleLoRACaptionEditor", 1), ("StyleLoRAShuffleCaption", 1)}
    assert upstream(wf, the(wf, "StyleLoRALoadDataset"), "clip")[0]["type"] == "CheckpointLoaderSimple"
    assert "write_back" in note_text(wf)


def test_compare_epochs_grids_saved_files_and_uses_the_chosen_one():
    wf = load(COMPARE)
    grid_node = the(wf, "StyleLoRAEpochWeightGrid")
    assert next(i for i in grid_node["inputs"] if i["name"] == "epochs")["link"] is None
    grid = named_widgets(grid_node)
    assert grid["lora_name"] == "my_style" and grid["weights"] == "0.6, 0.8, 1.0"
    lora = settings(wf, "LoraLoader")
    assert lora == {"lora_name": "my_style-000012.safetensors", "strength_model": 1.0, "strength_clip": 1.0}
    sampler = settings(wf, "KSampler")
    assert sampler["control_after_generate"] == "fixed"
    # The KSampler repeats the grid's sampling, so the chosen cell at weight 1.0 is reproduced.
    for key in ("seed", "steps", "cfg", "sampler_name", "scheduler"):
        assert sampler[key] == grid[key], key
    latent = settings(wf, "EmptyLatentImage")
    assert (latent["width"], latent["height"]) == (grid["width"], grid["height"])
    ksampler = the(wf, "KSampler")
    assert upstream(wf, ksampler, "model")[0]["type"] == "LoraLoader"
    positive, _ = upstream(wf, ksampler, "positive")
    assert upstream(wf, positive, "clip")[0]["type"] == "LoraLoader"
    assert named_widgets(positive)["text"] == grid["prompts"].splitlines()[0]
    assert upstream(wf, the(wf, "SaveImage"), "images")[0]["type"] == "VAEDecode"
    assert (the(wf, "StyleLoRAEpochWeightGrid"), 0) == upstream(wf, the(wf, "PreviewImage"), "images")


# -- the generator -------------------------------------------------------------------------------------


def test_generator_reproduces_the_committed_files(tmp_path):
    import build_workflows  # tools/ is on sys.path (conftest)

    build_workflows.write_all(tmp_path / "a")
    build_workflows.write_all(tmp_path / "b")
    for name in EXPECTED:
        built = (tmp_path / "a" / name).read_bytes()
        assert built == (tmp_path / "b" / name).read_bytes(), f"{name}: two builds differ"
        assert built == (WORKFLOWS / name).read_bytes(), (
            f"workflows/{name} is out of date with the nodes: run `python tools/build_workflows.py`")
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(EXPECTED)


def test_generator_refuses_unknown_widgets_and_bad_choices():
    import build_workflows

    wf = build_workflows.Workflow(build_workflows.node_definitions())
    with pytest.raises(KeyError, match="no widget"):
        wf.node("StyleLoRATrain", {"learning_rate_typo": 1.0})
    with pytest.raises(ValueError, match="not one of"):
        wf.node("StyleLoRATrain", {"optimizer": "SGD"})


# -- the validator catches what it should -----------------------------------------------------------


def _node(wf: dict, node_type: str) -> dict:
    return next(n for n in wf["nodes"] if n["type"] == node_type)


def _set_widget(wf: dict, node_type: str, name: str, value: Any) -> None:
    node = _node(wf, node_type)
    index = [n for n, _ in widget_layout(node_type)].index(name)
    node["widgets_values"][index] = value
    node.pop("widgets_values_named", None)


def _wrong_link_type(wf):
    wf["links"][0][5] = "IMAGE"


def _rewire_clip_into_model(wf):
    """Feed the checkpoint's CLIP into TrainLoRA's model input, consistently at both ends."""
    ckpt, train = _node(wf, "CheckpointLoaderSimple"), _node(wf, "StyleLoRATrain")
    link_id = next(i["link"] for i in train["inputs"] if i["name"] == "model")
    lk = next(lk for lk in wf["links"] if lk[0] == link_id)
    ckpt["outputs"][0]["links"].remove(link_id)
    ckpt["outputs"][1]["links"].append(link_id)
    lk[2], lk[5] = 1, "CLIP"


def _unknown_node_type(wf):
    _node(wf, "StyleLoRASaveEpochs")["type"] = "StyleLoRASaveEpochsV2"


def _repeats_out_of_range(wf):
    _set_widget(wf, "StyleLoRALoadDataset", "repeats", 1000)


def _one_widget_value_too_many(wf):
    _node(wf, "StyleLoRAShuffleCaption")["widgets_values"].append(0)


def _one_widget_value_missing(wf):
    _node(wf, "KSampler")["widgets_values"].remove("fixed")


def _optimizer_not_an_option(wf):
    _set_widget(wf, "StyleLoRATrain", "optimizer", "SGD")


def _boolean_as_text(wf):
    _set_widget(wf, "StyleLoRATrain", "cache_latents", "true")


def _float_as_text(wf):
    _set_widget(wf, "StyleLoRATrain", "learning_rate", "1.0")


def _preset_disagrees_with_rank(wf):
    _set_widget(wf, "StyleLoRATrain", "rank", 8)


def _bad_caption_edits(wf):
    _set_widget(wf, "StyleLoRACaptionEditor", "edits", '{"prefx": "oops"}')


def _required_input_unlinked(wf):
    train = _node(wf, "StyleLoRATrain")
    vae = next(i for i in train["inputs"] if i["name"] == "vae")
    link_id, vae["link"] = vae["link"], None
    wf["links"] = [lk for lk in wf["links"] if lk[0] != link_id]
    for n in wf["nodes"]:
        for out in n["outputs"]:
            if out["links"] and link_id in out["links"]:
                out["links"].remove(link_id)


def _link_missing_at_origin(wf):
    lk = wf["links"][-1]
    origin = next(n for n in wf["nodes"] if n["id"] == lk[1])
    origin["outputs"][lk[2]]["links"].remove(lk[0])


def _duplicate_node_id(wf):
    wf["nodes"][1]["id"] = wf["nodes"][0]["id"]


def _stale_last_link_id(wf):
    wf["last_link_id"] = 1


def _named_values_disagree(wf):
    _node(wf, "StyleLoRATrain")["widgets_values_named"]["epochs"] = 19


def _sampler_not_an_option(wf):
    _set_widget(wf, "StyleLoRAEpochWeightGrid", "sampler_name", "dpmpp_9m")


def _wrong_schema_version(wf):
    wf["version"] = 1


MUTATIONS = [
    (_wrong_link_type, "differs from its origin output"),
    (_rewire_clip_into_model, "CLIP into StyleLoRATrain.model, which takes MODEL"),
    (_unknown_node_type, "unknown node type"),
    (_repeats_out_of_range, "repeats = 1000 is above max 100"),
    (_one_widget_value_too_many, "6 widgets_values for 5 widgets"),
    (_one_widget_value_missing, "6 widgets_values for 7 widgets"),
    (_optimizer_not_an_option, "optimizer = 'SGD' is not one of the options"),
    (_boolean_as_text, "cache_latents = 'true' is not a BOOLEAN"),
    (_float_as_text, "learning_rate = '1.0' is not a FLOAT"),
    (_preset_disagrees_with_rank, "trains with rank=32 but the widget shows 8"),
    (_bad_caption_edits, "refused by CaptionEdits.from_json"),
    (_required_input_unlinked, "required input 'vae' is not linked"),
    (_link_missing_at_origin, "missing from node"),
    (_duplicate_node_id, "duplicate node id"),
    (_stale_last_link_id, "last_link_id 1 < largest link id"),
    (_named_values_disagree, "widgets_values_named disagrees"),
    (_sampler_not_an_option, "sampler_name = 'dpmpp_9m' is not one of the options"),
    (_wrong_schema_version, "version must be 0.4"),
]


@pytest.mark.parametrize("mutate,expected", MUTATIONS, ids=[m.__name__.strip("_") for m, _ in MUTATIONS])
def test_validator_reports_a_broken_workflow(mutate, expected):
    name = COMPARE if mutate in (_one_widget_value_missing,) else SD15
    wf = load(name)
    assert validate(wf) == []
    broken = copy.deepcopy(wf)
    mutate(broken)
    errors = validate(broken)
    assert any(expected in e for e in errors), errors
