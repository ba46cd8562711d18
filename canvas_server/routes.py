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
from .plan import CanvasPlanner
from .training_history import HISTORY, TrainingHistory

log = logging.getLogger("style_lora_trainer")

PREFIX = "/style_lora"
MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_ERROR_CHARS = 2000  # messages quote what was sent; a megabyte of it helps nobody
MAX_NODE_ID_CHARS = 64  # ComfyUI's ids are "12", or "12:5" inside a subgraph


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def decode_json_object(raw: bytes) -> dict[str, Any]:
    """A request body as a JSON object; anything else is a ``CanvasError`` (400) saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise gallery.CanvasError(f"The request body is not UTF-8 text (byte 0x{raw[exc.start]:02x} at position "
                                  f"{exc.start}); send JSON encoded as UTF-8.") from exc
    try:
        # NaN and Infinity are Python's extension, not JSON: refused here rather than deep in a handler.
        data = json.loads(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError as exc:
        raise gallery.CanvasError(f"The request body is not JSON: {exc.msg} (line {exc.lineno}, column "
                                  f"{exc.colno}).") from exc
    except ValueError as exc:  # NaN, or a number of thousands of digits (the rest of the text is Python's)
        reason = str(exc).split(":")[0]
        raise gallery.CanvasError(f"The request body is not JSON this server accepts: {reason}. Send plain "
                                  "numbers.") from exc
    except RecursionError as exc:
        raise gallery.CanvasError("The request body is nested too deeply to read; send a flat JSON object.") from exc
    if not isinstance(data, dict):
        raise gallery.CanvasError("The request body must be a JSON object.")
    return data


def _node_id(value: str) -> str:
    if not value:
        raise gallery.CanvasError("The request needs 'node': the TrainLoRA node's id.")
    if len(value) > MAX_NODE_ID_CHARS or not value.isprintable():
        raise gallery.CanvasError(f"'node' {value[:40]!r} is not a node id; give the TrainLoRA node's id, e.g. '12'.")
    return value


def add_routes(routes: Any, web: Any, *, token_counter: Callable[[], Callable[[str], int] | None] = lambda: None,
               history: TrainingHistory = HISTORY, planner: CanvasPlanner | None = None) -> None:
    """Add the pack's routes to ``routes`` (an ``aiohttp.web.RouteTableDef``; ``web`` is ``aiohttp.web``).

    ``planner`` answers the Train LoRA panel's plan (``POST /style_lora/plan``; left out without one).

    ``token_counter`` is called lazily (loading a tokenizer takes a moment) and may return None, in
    which case token counts are ``null`` and the length badges are left out.
    """
    too_large = getattr(web, "HTTPRequestEntityTooLarge", ())  # aiohttp's own body limit (client_max_size)

    def error(status: int, message: str) -> Any:
        if len(message) > MAX_ERROR_CHARS:
            message = message[:MAX_ERROR_CHARS] + "…"
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
        big = gallery.CanvasError(f"The request is larger than the server accepts (at most "
                                  f"{MAX_BODY_BYTES // 2**20} MiB); send fewer captions at a time.", 413)
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise big
        try:
            raw = await request.read()  # bytes: request.text() raises a bare UnicodeDecodeError
        except too_large as exc:
            raise big from exc
        if len(raw) > MAX_BODY_BYTES:  # a chunked body has no Content-Length
            raise big
        return decode_json_object(raw)

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
        return web.json_response(history.snapshot(_node_id(request.query.get("node", ""))))

    if planner is None:
        return

    @routes.post(f"{PREFIX}/plan")
    @guarded
    async def plan(request: Any) -> Any:
        data = await body(request)
        work = planner.measure if data.get("measure") is True else planner.plan
        return web.json_response(await asyncio.to_thread(work, data))
