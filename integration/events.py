"""Server events to the canvas (names in ``canvas_contract``, payloads in docs/CANVAS.md) and the
node's status text; nothing outside ComfyUI."""

from __future__ import annotations

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


def send_event(event: str, payload: dict) -> None:
    instance = _prompt_server()
    if instance is not None:
        instance.send_sync(event, payload)


def send_status_text(text: str, node_id: str | None) -> None:
    instance = _prompt_server()
    sender = getattr(instance, "send_progress_text", None) if instance is not None else None
    if node_id and sender is not None:
        sender(text, node_id)
