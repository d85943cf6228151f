"""Operations: liveness, readiness, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..errors import NotReady
from ..keys import METRICS, OFFSET, OPENAPI, STORE
from ..store import queue as store_queue
from ..store.outbox import webhook_counts


async def healthz(request: web.Request) -> web.Response:
    """Alive: the process answers."""
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    """Ready: the database answers, and this host's clock is within ten times
    GATEWAY_MAX_CLOCK_OFFSET of the database's (503 otherwise)."""
    try:
        async with asyncio.timeout(2):
            await request.app[STORE].fetchone("SELECT 1")
    except Exception as exc:  # closed, locked, missing: all mean "not ready"
        raise NotReady(f"the database does not answer ({type(exc).__name__})") from None
    offset = request.app[OFFSET]
    if offset.unready:
        raise NotReady(
            f"this host's clock is {-offset.seconds:+.1f} s from the database's, more than 10 x "
            f"GATEWAY_MAX_CLOCK_OFFSET ({offset.warn_after:g} s): fix the host's time sync"
        )
    return web.json_response({"status": "ready", "clock_offset_seconds": round(offset.seconds, 3)})


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    m = request.app[METRICS]
    counts = await webhook_counts(request.app[STORE])
    m.webhook_backlog.set(counts.get("pending", 0))
    m.webhooks_failed_now.set(counts.get("failed", 0))
    queue = await store_queue.stats(request.app[STORE])
    for status, depth in queue.depth.items():
        m.queue_depth.labels(status).set(depth)
    m.queue_oldest_due_age.set(queue.age() or 0.0)
    return web.Response(
        body=generate_latest(m.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI document describing every route."""
    return web.Response(body=request.app[OPENAPI], content_type="application/yaml")
