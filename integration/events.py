"""Server events to the canvas (names in ``canvas_contract``, payloads in docs/CANVAS.md) and the
node's status text. Outside ComfyUI the same events reach listeners registered in this process (the
headless trainer's progress bar), so it reports exactly what the canvas shows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import comfy_modules
from .canvas_contract import (  # noqa: F401 - re-exported
    EVENT_END,
    EVENT_EPOCH,
    EVENT_SAMPLE,
    EVENT_START,
    EVENT_STEP,
    EVENT_VALIDATION,
)


def _prompt_server() -> Any | None:
    server = comfy_modules.comfy_module("server")
    return getattr(server.PromptServer, "instance", None) if server is not None else None


Listener = Callable[[str, dict], None]
_listeners: list[Listener] = []


def add_listener(listener: Listener) -> Callable[[], None]:
    """Call ``listener(event, payload)`` for every event sent from now on; returns its remover."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener) if listener in _listeners else None


def send_event(event: str, payload: dict) -> None:
    for listener in list(_listeners):
        listener(event, payload)
    instance = _prompt_server()
    if instance is not None:
        instance.send_sync(event, payload)


def send_status_text(text: str, node_id: str | None) -> None:
    instance = _prompt_server()
    sender = getattr(instance, "send_progress_text", None) if instance is not None else None
    if node_id and sender is not None:
        sender(text, node_id)
