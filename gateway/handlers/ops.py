"""Operations: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..clock import iso
from ..errors import NotReady
from ..keys import CLOCK, METRICS, OPENAPI, STORE
from ..store import queue as store_queue
from ..store.outbox import webhook_counts


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the database answers (503 otherwise)."""
    try:
        async with asyncio.timeout(2):
            await request.app[STORE].fetchone("SELECT 1")
    except Exception as exc:  # closed, locked, missing: all mean "not ready"
        raise NotReady(f"the database does not answer ({type(exc).__name__})") from None
    return web.json_response({"status": "ready"})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    m = request.app[METRICS]
    counts = await webhook_counts(request.app[STORE])
    m.webhook_backlog.set(counts.get("pending", 0))
    m.webhooks_failed_now.set(counts.get("failed", 0))
    now = request.app[CLOCK]()
    queue = await store_queue.stats(request.app[STORE], iso(now))
    for status, depth in queue.depth.items():
        m.queue_depth.labels(status).set(depth)
    m.queue_oldest_due_age.set(queue.age(now) or 0.0)
    return web.Response(
        body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document describing every route."""
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")
