"""The pack's canvas routes on an aiohttp test server (no ComfyUI), for the route tests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest


def serve_routes(go: Callable[[Any], Awaitable[Any]], **add_routes_kwargs: Any) -> Any:
    """``await go(client)`` against a server holding ``add_routes(routes, web, **add_routes_kwargs)``."""
    pytest.importorskip("aiohttp", reason="aiohttp (ComfyUI's server library) is in requirements-dev.txt")
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from style_lora_trainer.canvas_server.routes import add_routes

    async def main() -> Any:
        routes = web.RouteTableDef()
        add_routes(routes, web, **add_routes_kwargs)
        app = web.Application()
        app.add_routes(routes)
        async with TestClient(TestServer(app)) as client:
            return await go(client)

    return asyncio.run(main())
