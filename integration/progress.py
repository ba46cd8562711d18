"""ComfyUI's progress bar and its Stop button, as the nodes see them; nothing outside ComfyUI."""

from __future__ import annotations

from typing import Any

from . import comfy_modules

PREVIEW_MAX_SIZE = 512  # ComfyUI's own default for sampler previews


class Progress:
    """ComfyUI's progress bar when available, else nothing."""

    def __init__(self, total: int, node_id: str | None = None) -> None:
        utils = comfy_modules.comfy_module("comfy.utils")
        self._bar = utils.ProgressBar(total, node_id=node_id) if utils else None

    def update_absolute(self, value: int, total: int | None = None, preview: Any = None) -> None:
        """``preview``: a PIL image ComfyUI shows on the node and sends to API clients (its ``b_preview``)."""
        if self._bar is not None:
            if preview is None:
                self._bar.update_absolute(value, total)
            else:
                self._bar.update_absolute(value, total, ("PNG", preview, PREVIEW_MAX_SIZE))


def check_interrupt() -> None:
    """Raise ComfyUI's interrupt exception if the user pressed Stop."""
    mm = comfy_modules.comfy_module("comfy.model_management")
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()


def is_interrupt(exc: BaseException) -> bool:
    """True for the user's Stop (ComfyUI's InterruptProcessingException) or Ctrl-C."""
    if isinstance(exc, KeyboardInterrupt):
        return True
    mm = comfy_modules.comfy_module("comfy.model_management")
    interrupt = getattr(mm, "InterruptProcessingException", None) if mm is not None else None
    return interrupt is not None and isinstance(exc, interrupt)
