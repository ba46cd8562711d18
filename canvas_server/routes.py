"""HTTP handlers for the canvas panels (docs/CANVAS.md), added to an aiohttp ``RouteTableDef``.

``canvas_server.register_routes`` passes ComfyUI's ``PromptServer.instance.routes`` and the aiohttp
``web`` module that ComfyUI's server already imported (the pack itself imports no network library);
tests pass their own. File work runs in a worker thread so a large folder never stalls ComfyUI's
event loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ..style_lora_engine.errors import StyleLoRAError
from . import gallery
from .training_history import HISTORY, TrainingHistory

log = logging.getLogger("style_lora_trainer")

PREFIX = "/style_lora"
MAX_BODY_BYTES = 8 * 1024 * 1024


def add_routes(routes: Any, web: Any, *, token_counter: Callable[[], Callable[[str], int] | None] = lambda: None,
               history: TrainingHistory = HISTORY) -> None:
    """Add the pack's routes to ``routes`` (an ``aiohttp.web.RouteTableDef``; ``web`` is ``aiohttp.web``).

    ``token_counter`` is called lazily (loading a tokenizer takes a moment) and may return None, in
    which case token counts are ``null`` and the length badges are left out.
    """
    def error(status: int, message: str) -> Any:
        return web.json_response({"error": message}, status=status)

    def guarded(handler: Callable[[Any], Awaitable[Any]]):
        async def wrapper(request: Any) -> Any:
            try:
                return await handler(request)
            except gallery.CanvasError as exc:
                return error(exc.status, str(exc))
            except StyleLoRAError as exc:
                return error(400, str(exc))
            except Exception as exc:  # noqa: BLE001 - the panel shows the text instead of a bare 500
                log.exception("Style LoRA route %s failed", request.path)
                return error(500, f"{type(exc).__name__}: {exc}")

        return wrapper

    async def body(request: Any) -> dict[str, Any]:
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise gallery.CanvasError(f"The request is larger than {MAX_BODY_BYTES // 2**20} MiB; send fewer "
                                         "captions at a time.", 413)
        try:
            data = json.loads(await request.text())
        except json.JSONDecodeError as exc:
            raise gallery.CanvasError(f"The request body is not JSON: {exc.msg}.") from exc
        if not isinstance(data, dict):
            raise gallery.CanvasError("The request body must be a JSON object.")
        return data

    @routes.get(f"{PREFIX}/dataset")
    @guarded
    async def dataset(request: Any) -> Any:
        q = request.query
        # token_counter() loads the tokenizer on first use: in the worker thread too.
        listing = await asyncio.to_thread(lambda: gallery.dataset_listing(
            q.get("folder"), q.get("caption_extension", ".txt"), token_counter()))
        return web.json_response(listing)

    @routes.get(f"{PREFIX}/thumbnail")
    @guarded
    async def thumbnail(request: Any) -> Any:
        q = request.query
        data = await asyncio.to_thread(gallery.thumbnail_jpeg, q.get("folder"), q.get("file"), q.get("size", 160))
        return web.Response(body=data, content_type="image/jpeg", headers={"Cache-Control": "no-cache"})

    @routes.post(f"{PREFIX}/captions")
    @guarded
    async def captions(request: Any) -> Any:
        data = await body(request)
        result = await asyncio.to_thread(gallery.write_caption_files, data.get("folder"),
                                         data.get("caption_extension", ".txt"), data.get("captions"))
        return web.json_response(result)

    @routes.post(f"{PREFIX}/lint")
    @guarded
    async def lint(request: Any) -> Any:
        data = await body(request)
        result = await asyncio.to_thread(lambda: gallery.lint_captions(data.get("captions"), token_counter()))
        return web.json_response(result)

    @routes.post(f"{PREFIX}/shuffle_preview")
    @guarded
    async def shuffle_preview(request: Any) -> Any:
        data = await body(request)
        return web.json_response(await asyncio.to_thread(gallery.shuffle_preview, data))

    @routes.get(f"{PREFIX}/training")
    @guarded
    async def training(request: Any) -> Any:
        node = request.query.get("node", "")
        if not node:
            raise gallery.CanvasError("The request needs 'node': the TrainLoRA node's id.")
        return web.json_response(history.snapshot(node))
