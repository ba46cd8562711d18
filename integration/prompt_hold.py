"""Holding ComfyUI's prompt worker back while the canvas's Measure runs its warm-up outside it.

The warm-up trains for a few steps on the models a queued prompt would use (LoRA layers injected, weights
swapped for half-precision copies, other models offloaded). Train LoRA does that inside the prompt worker,
so nothing else runs meanwhile; the warm-up runs on a route's thread, so a prompt queued during it must wait.
The worker takes each prompt with ``PromptQueue.get``: for the duration, that call waits for the hold to end.
Prompts are still accepted (``put`` is untouched), so the server stays responsive.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..style_lora_engine.errors import ConfigError

WAKE_FLAG = "style_lora_hold"  # an unknown flag: the worker's get returns, it reads its flags, and calls get again
ENTER_TIMEOUT_S = 5.0


@contextmanager
def prompts_held_back(queue: Any, timeout: float = ENTER_TIMEOUT_S) -> Iterator[None]:
    """Inside, ``queue``'s worker starts no prompt; it goes on when the block ends, also on an error. Raises
    ``ConfigError`` when the worker does not come to wait within ``timeout`` (it is running a prompt)."""
    entered, released = threading.Event(), threading.Event()
    original = queue.get

    def held_get(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        released.wait()
        return original(*args, **kwargs)

    queue.get = held_get  # the worker looks ``get`` up on each call
    try:
        queue.set_flag(WAKE_FLAG, True)
        if not entered.wait(timeout):
            raise ConfigError("A prompt started running; measure again when the queue is empty (the warm-up "
                              "would share the models and the device with it).")
        yield
    finally:
        queue.__dict__.pop("get", None)
        released.set()
