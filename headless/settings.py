"""The headless trainer's settings: the widgets of the pack's nodes, by role, from defaults, a shared
workflow file, a TOML/JSON settings file and command-line ``--set role.widget=value``, in that order.

A role is one node of the guide's chain (``load_dataset``, ``caption_editor``, ``shuffle_caption``,
``train_lora``, ``train_options``, ``training_samples``, ``save_epochs``, ``grid``); its settings are
exactly that node's widgets, so a canvas workflow trains the same way headless. Values are checked
against the node's own ``INPUT_TYPES`` (type, range, choices) before anything runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..integration import widget_spec
from ..integration.widget_spec import OPTIONAL_ROLES, ROLES
from ..nodes import NODE_CLASS_MAPPINGS
from ..style_lora_engine.errors import ConfigError

BYPASSED, MUTED = 4, 2  # LiteGraph node modes


def node_widgets(node_type: str) -> list[widget_spec.Widget]:
    return widget_spec.node_widgets(NODE_CLASS_MAPPINGS[node_type])


def role_widgets(role: str) -> dict[str, widget_spec.Widget]:
    return widget_spec.role_widgets(role, NODE_CLASS_MAPPINGS)


@dataclass
class Settings:
    """Widget values by role; ``enabled`` holds the optional roles that will run; ``sources`` says where
    each value came from (for ``--print-settings``)."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    enabled: set[str] = field(default_factory=set)
    sources: dict[str, str] = field(default_factory=dict)

    @classmethod
    def defaults(cls) -> Settings:
        values = {role: {n: w.default() for n, w in role_widgets(role).items()} for role in ROLES}
        return cls(values=values, sources={f"{r}.{n}": "default" for r, v in values.items() for n in v})

    def set(self, role: str, name: str, value: Any, source: str) -> None:
        widgets = role_widgets(role)
        if name not in widgets:
            raise ConfigError(f"{source}: {role} has no widget {name!r}; its widgets: {', '.join(widgets)}.")
        key = f"{role}.{name}"
        self.values[role][name] = widgets[name].coerce(value, source if source.endswith(key) else f"{source}: {key}")
        self.sources[f"{role}.{name}"] = source
        if role in OPTIONAL_ROLES:
            self.enabled.add(role)

    def update(self, sections: dict[str, Any], source: str) -> None:
        for role, section in sections.items():
            if not isinstance(section, dict):
                raise ConfigError(f"{source}: [{role}] must be a table of widget = value.")
            role_widgets(role)  # an unknown section is an error even when empty
            if role in OPTIONAL_ROLES:
                self.enabled.add(role)
            for name, value in section.items():
                self.set(role, name, value, source)

    def apply_assignments(self, assignments: list[str]) -> None:
        """``--set train_lora.rank=16`` (the value parsed as JSON when it can be, else a string)."""
        for item in assignments:
            key, sep, raw = item.partition("=")
            role, dot, name = key.strip().partition(".")
            if not sep or not dot:
                raise ConfigError(f"--set {item!r}: write it as section.widget=value, e.g. train_lora.rank=16.")
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
            widget = role_widgets(role).get(name.strip())
            if widget is not None and widget.kind in ("STRING", "COMBO") and not isinstance(value, str):
                value = raw  # "--set save_epochs.name=2024" is the text 2024
            self.set(role, name.strip(), value, f"--set {key.strip()}")

    def describe(self) -> str:
        lines = []
        for role in ROLES:
            if role in OPTIONAL_ROLES and role not in self.enabled:
                lines.append(f"[{role}]  # off")
                continue
            lines.append(f"[{role}]")
            for name, value in self.values[role].items():
                lines.append(f"{name} = {json.dumps(value, ensure_ascii=False)}  # {self.sources[f'{role}.{name}']}")
        return "\n".join(lines)


def read_settings_file(path: Path) -> dict[str, Any]:
    """A TOML (``.toml``) or JSON settings file: one table per role."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"Cannot read the settings file {path}: {exc.strerror or exc}.") from exc
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python 3.10
            raise ConfigError(f"{path}: TOML needs Python 3.11 or newer; write the settings as JSON instead.") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path} is not valid TOML: {exc}.") from exc
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path} is not valid JSON ({exc}); use .toml for TOML.") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected tables named after the nodes ({', '.join(ROLES)}).")
    return data


# --------------------------------------------------------------------------- workflow files


@dataclass(frozen=True)
class WorkflowNode:
    id: str
    type: str
    mode: int
    values: dict[str, Any]
    inputs: dict[str, str | None]  # input name -> id of the node it is linked from


def _ui_nodes(data: dict[str, Any], path: Path) -> dict[str, WorkflowNode]:
    """Nodes of a workflow saved by the frontend (``nodes`` + ``links``; subgraphs are not read)."""
    link_source = {}
    for link in data.get("links") or []:
        if isinstance(link, list) and len(link) >= 3:
            link_source[link[0]] = str(link[1])
        elif isinstance(link, dict):
            link_source[link.get("id")] = str(link.get("origin_id"))
    nodes = {}
    for raw in data.get("nodes") or []:
        node_type = raw.get("type")
        if node_type not in NODE_CLASS_MAPPINGS:
            continue
        node_id = str(raw.get("id"))
        saved = raw.get("widgets_values")
        values: dict[str, Any] = {}
        if isinstance(saved, dict):
            values = dict(saved)
        elif isinstance(saved, list):
            position = 0
            for widget in node_widgets(node_type):
                if position < len(saved):
                    values[widget.name] = saved[position]
                position += 2 if widget.has_control else 1
            if position < len(saved):
                raise ConfigError(f"{path}: node {node_id} ({node_type}) has {len(saved)} widget values but this "
                                  f"version of the pack expects {position}: open and save the workflow in ComfyUI "
                                  "with this version of the pack, then retry.")
        inputs = {i.get("name"): link_source.get(i.get("link")) for i in raw.get("inputs") or []}
        nodes[node_id] = WorkflowNode(node_id, node_type, int(raw.get("mode") or 0), values, inputs)
    return nodes


def _api_nodes(data: dict[str, Any]) -> dict[str, WorkflowNode]:
    """Nodes of an API-format prompt (``{id: {class_type, inputs}}``, links as ``[id, slot]``)."""
    nodes = {}
    for node_id, raw in data.items():
        if not isinstance(raw, dict) or raw.get("class_type") not in NODE_CLASS_MAPPINGS:
            continue
        values, inputs = {}, {}
        for name, value in (raw.get("inputs") or {}).items():
            if isinstance(value, list) and len(value) == 2 and isinstance(value[1], int):
                inputs[name] = str(value[0])
            else:
                values[name] = value
        nodes[str(node_id)] = WorkflowNode(str(node_id), raw["class_type"], 0, values, inputs)
    return nodes


def workflow_nodes(path: Path) -> dict[str, WorkflowNode]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the workflow {path}: {exc.strerror or exc}.") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path} is not a workflow file (not JSON: {exc}).") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path} is not a ComfyUI workflow (expected a JSON object).")
    return _ui_nodes(data, path) if "nodes" in data else _api_nodes(data)


def _upstream(nodes: dict[str, WorkflowNode], node: WorkflowNode, socket: str) -> WorkflowNode | None:
    source = node.inputs.get(socket)
    return nodes.get(source) if source is not None else None


def workflow_sections(path: Path, train_node: str | None = None) -> dict[str, dict[str, Any]]:
    """The settings of one Train LoRA node's chain in a workflow, by role.

    From the Train LoRA node (``train_node`` when the workflow has several) the dataset chain is followed
    upstream (Shuffle Caption ← Caption Editor ← Load Dataset, bypassed nodes skipped), its Train Options
    and Training Samples inputs, and downstream the Save Epochs node fed by its run and the grid fed by that.
    """
    nodes = workflow_nodes(path)
    trains = [n for n in nodes.values() if n.type == ROLES["train_lora"] and n.mode != MUTED]
    if train_node is not None:
        trains = [n for n in trains if n.id == str(train_node)]
        if not trains:
            raise ConfigError(f"{path} has no active Train LoRA node with id {train_node}.")
    if not trains:
        raise ConfigError(f"{path} has no Train LoRA (Style LoRA) node: nothing to train.")
    if len(trains) > 1:
        raise ConfigError(f"{path} has {len(trains)} Train LoRA nodes (ids {', '.join(n.id for n in trains)}): "
                          "choose one with --train-node ID.")
    train = trains[0]
    role_of = {node_type: role for role, node_type in ROLES.items()}
    chosen: dict[str, WorkflowNode] = {"train_lora": train}
    node = _upstream(nodes, train, "dataset")
    while node is not None:
        role = role_of.get(node.type)
        if node.mode != BYPASSED and role in ("load_dataset", "caption_editor", "shuffle_caption"):
            chosen.setdefault(role, node)
        if node.type == ROLES["load_dataset"]:
            break
        node = _upstream(nodes, node, "dataset")
    if "load_dataset" not in chosen:
        raise ConfigError(f"{path}: Train LoRA node {train.id} has no Load Dataset upstream of its dataset input.")
    for socket, role in (("options", "train_options"), ("samples", "training_samples")):
        linked = _upstream(nodes, train, socket)
        if linked is not None and linked.mode not in (BYPASSED, MUTED):
            chosen[role] = linked
    for candidate in nodes.values():
        if candidate.type == ROLES["save_epochs"] and candidate.inputs.get("run") == train.id:
            chosen.setdefault("save_epochs", candidate)
    saver = chosen.get("save_epochs")
    for candidate in nodes.values():
        if (saver is not None and candidate.type == ROLES["grid"] and candidate.inputs.get("epochs") == saver.id
                and candidate.mode not in (BYPASSED, MUTED)):
            chosen.setdefault("grid", candidate)
    return {role: dict(node.values) for role, node in chosen.items()}


def build_settings(workflow: Path | None = None, settings_file: Path | None = None,
                   assignments: list[str] | None = None, train_node: str | None = None) -> Settings:
    settings = Settings.defaults()
    if workflow is not None:
        settings.update(workflow_sections(workflow, train_node), f"workflow {Path(workflow).name}")
    if settings_file is not None:
        settings.update(read_settings_file(settings_file), f"file {Path(settings_file).name}")
    settings.apply_assignments(assignments or [])
    return settings
