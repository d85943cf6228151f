"""Operations: liveness and the OpenAPI document."""

from __future__ import annotations

from aiohttp import web

from ..keys import OPENAPI


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document describing every route."""
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")
