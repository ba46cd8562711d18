"""What the Train LoRA panel's plan is for, from the widgets the browser sent (``POST /style_lora/plan``).

Each value is checked against its node's ``INPUT_TYPES``; then the nodes' own functions build the dataset
(Load Dataset's ``load``), the config (Train LoRA's ``config_from_widgets``, its preset applied, with Train
Options' ``options``) and the output name, so the plan counts exactly what Queue would train. The node
classes are handed in (the pack's ``NODE_CLASS_MAPPINGS``, from its ``__init__``): this layer does not
import the nodes.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from typing import Any

from ..integration.widget_spec import ROLES, role_widgets
from ..style_lora_engine.config import TrainConfig
from ..style_lora_engine.dataset import Dataset
from ..style_lora_engine.errors import ConfigError
from ..style_lora_engine.lora_file import explain_sanitized_name

MAX_CHECKPOINT_NAME = 1024


@dataclass(frozen=True)
class PlanInputs:
    dataset: Dataset
    config: TrainConfig
    output_name: str
    save_mode: str
    save_n: int
    checkpoint: str | None  # the Load Checkpoint name Train LoRA's MODEL comes from
    key: str  # the settings as one string: a measured plan is shown again only for exactly these


def widget_values(role: str, given: Any, node_classes: dict[str, type]) -> dict[str, Any]:
    """``given`` checked against the node's widgets, the defaults filled in."""
    if given is None:
        given = {}
    if not isinstance(given, dict):
        raise ConfigError(f"'{role}' must be an object of widget values.")
    widgets = role_widgets(role, node_classes)
    unknown = [name for name in given if name not in widgets]
    if unknown:
        raise ConfigError(f"{role} has no widget {str(unknown[0])[:80]!r}; its widgets: {', '.join(widgets)}.")
    return {name: w.coerce(given[name], f"{role}.{name}") if name in given else w.default()
            for name, w in widgets.items()}


class DatasetCache:
    """Load Dataset's last result, reused while the node's own cache key (its widgets and a stat digest of the
    folders, ``IS_CHANGED``) stays the same: the panel asks again on every change of any widget."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: tuple[str, Dataset] | None = None

    def load(self, loader: type, values: dict[str, Any]) -> Dataset:
        signature = loader.IS_CHANGED(**values)  # NaN when unreadable: never reused
        key = json.dumps([values, signature], sort_keys=True) if isinstance(signature, str) else None
        with self._lock:
            if key is not None and self._last is not None and self._last[0] == key:
                return self._last[1]
        dataset = loader().load(**values)[0]
        if key is not None:
            with self._lock:
                self._last = (key, dataset)
        return dataset


def read_plan_inputs(data: dict[str, Any], node_classes: dict[str, type], datasets: DatasetCache) -> PlanInputs:
    checkpoint = data.get("checkpoint")
    if checkpoint is not None and (not isinstance(checkpoint, str) or not checkpoint.strip()
                                   or len(checkpoint) > MAX_CHECKPOINT_NAME or not checkpoint.isprintable()):
        raise ConfigError("'checkpoint' must be a Load Checkpoint name (ckpt_name), or null.")
    load = widget_values("load_dataset", data.get("load_dataset"), node_classes)
    train = widget_values("train_lora", data.get("train_lora"), node_classes)
    given_options = data.get("train_options")
    options = None if given_options is None else widget_values("train_options", given_options, node_classes)
    save = widget_values("save_epochs", data.get("save_epochs"), node_classes)
    key = json.dumps([load, train, options, save, checkpoint], sort_keys=True, default=str)
    built_options = None if options is None else node_classes[ROLES["train_options"]]().options(**options)[0]
    config = node_classes[ROLES["train_lora"]].config_from_widgets(**train, options=built_options)
    name, _note = explain_sanitized_name(train["output_name"], "output_name")
    return PlanInputs(dataset=datasets.load(node_classes[ROLES["load_dataset"]], load), config=config,
                      output_name=name, save_mode=save["save"], save_n=save["n"], checkpoint=checkpoint, key=key)
