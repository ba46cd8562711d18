"""A node's widgets as ComfyUI reads them from ``INPUT_TYPES``: name, kind, range and choices, and a value
checked against them. Shared by the canvas plan (``canvas_server.plan_inputs``) and the headless trainer's
settings, so a value either accepts is a value the node itself takes. The node classes are handed in (this
layer does not import the nodes); ``ROLES`` names the pack's node of each step of the guide's chain."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..style_lora_engine.errors import ConfigError

ROLES: dict[str, str] = {
    "load_dataset": "StyleLoRALoadDataset",
    "caption_editor": "StyleLoRACaptionEditor",
    "shuffle_caption": "StyleLoRAShuffleCaption",
    "train_lora": "StyleLoRATrain",
    "train_options": "StyleLoRATrainOptions",
    "training_samples": "StyleLoRATrainingSamples",
    "save_epochs": "StyleLoRASaveEpochs",
    "grid": "StyleLoRAEpochWeightGrid",
}
# Roles that run only when asked for (a node in the workflow, a section in the file, or a --set).
OPTIONAL_ROLES = ("train_options", "training_samples", "grid")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN")


@dataclass(frozen=True)
class Widget:
    name: str
    kind: str  # INT, FLOAT, STRING, BOOLEAN or COMBO
    options: dict[str, Any]
    choices: tuple[Any, ...] = ()

    @property
    def has_control(self) -> bool:
        """The frontend saves a control_after_generate value after an INT seed unless it is off."""
        control = self.options.get("control_after_generate")
        return self.kind == "INT" and (bool(control) if control is not None else self.name in ("seed", "noise_seed"))

    def default(self) -> Any:
        if "default" in self.options:
            return self.options["default"]
        return self.choices[0] if self.choices else None

    def coerce(self, value: Any, where: str) -> Any:
        """``value`` as this widget takes it, or a ConfigError naming ``where`` and the allowed values."""
        try:
            if self.kind == "COMBO":
                if value not in self.choices:
                    raise ValueError(f"one of {list(self.choices)}")
                return value
            if self.kind == "BOOLEAN":
                if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    return value.lower() in ("true", "1", "yes", "on")
                if isinstance(value, bool):
                    return value
                raise ValueError("true or false")
            if self.kind == "STRING":
                if not isinstance(value, str):
                    raise ValueError("a string")
                return value
            number = int(value) if self.kind == "INT" else float(value)
            if isinstance(value, bool) or (self.kind == "INT" and isinstance(value, float) and value != number):
                raise ValueError("a whole number" if self.kind == "INT" else "a number")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where} = {value!r}: expected {exc}.") from None
        low, high = self.options.get("min"), self.options.get("max")
        if (low is not None and number < low) or (high is not None and number > high):
            raise ConfigError(f"{where} = {value!r}: must be between {low} and {high}.")
        return number


def node_widgets(node_class: type) -> list[Widget]:
    """A node's widgets in the order the frontend saves them (required, then optional inputs)."""
    spec = node_class.INPUT_TYPES()
    widgets = []
    for group in ("required", "optional"):
        for name, entry in spec.get(group, {}).items():
            head = entry[0]
            options = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            if isinstance(head, (list, tuple)):
                widgets.append(Widget(name, "COMBO", options, tuple(head)))
            elif head in WIDGET_TYPES and not options.get("forceInput", False):
                widgets.append(Widget(name, str(head), options))
    return widgets


def role_widgets(role: str, node_classes: dict[str, type]) -> dict[str, Widget]:
    """The widgets of the pack's node for ``role`` (a key of ``ROLES``), from ``node_classes`` (its
    ``NODE_CLASS_MAPPINGS``)."""
    if role not in ROLES:
        raise ConfigError(f"Unknown settings section {role!r}: use one of {', '.join(ROLES)}.")
    return {w.name: w for w in node_widgets(node_classes[ROLES[role]])}
