"""Admin: the webhook outbox and delivery reports no message claimed."""

from __future__ import annotations

from aiohttp import web

from ..errors import NotFound
from ..keys import STORE, WORKER
from ..store import endpoints
from ..store.outbox import list_reports, list_webhooks, retry_webhook
from .common import actor_of, admin, bad_param, json_response, query_limit

WEBHOOK_STATUSES = frozenset({"pending", "delivered", "failed"})


def _limit(request: web.Request) -> int:
    return query_limit(request, 50, 200)


async def list_hooks(request: web.Request) -> web.Response:
    """Webhooks, newest first; `status=failed` shows what needs attention."""
    await admin(request)
    status = request.query.get("status")
    if status is not None and status not in WEBHOOK_STATUSES:
        raise bad_param("status", "must be pending, delivered or failed")
    limit = _limit(request)
    cursor = request.query.get("cursor")
    if cursor is not None and not cursor.startswith("whk_"):
        raise bad_param("cursor", "is not a cursor this API returned")
    rows = await list_webhooks(request.app[STORE], status, limit + 1, cursor)
    page = rows[:limit]
    return json_response(
        {"data": page, "next_cursor": page[-1]["id"] if len(rows) > limit else None}
    )


async def retry_hook(request: web.Request) -> web.Response:
    """Queue a webhook again, now, with a fresh retry schedule."""
    caller = await admin(request)
    hook = await retry_webhook(
        request.app[STORE], request.match_info["id"], actor=actor_of(request, caller)
    )
    if hook is None:
        raise NotFound(f"no webhook {request.match_info['id']!r}", code="webhook_not_found")
    request.app[WORKER].wake()
    return json_response(hook, status=202)


async def list_attempts(request: web.Request) -> web.Response:
    """A delivery's attempts, oldest first: when, the HTTP status or the error, how long, and
    the start of the receiver's answer."""
    await admin(request)
    hook_id = request.match_info["id"]
    logged = await endpoints.attempts(request.app[STORE], hook_id)
    if logged is None:
        raise NotFound(f"no webhook {hook_id!r}", code="webhook_not_found")
    return json_response({"data": logged})


async def list_dlr_reports(request: web.Request) -> web.Response:
    """Delivery reports, newest first; `status=pending` lists those no message has claimed."""
    await admin(request)
    status = request.query.get("status")
    if status not in (None, "pending"):
        raise bad_param("status", "must be pending (or absent for every report)")
    limit = _limit(request)
    cursor = request.query.get("cursor")
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise bad_param("cursor", "is not a cursor this API returned")
    rows = await list_reports(
        request.app[STORE], status == "pending", limit + 1, int(cursor) if cursor else None
    )
    page = rows[:limit]
    return json_response(
        {"data": page, "next_cursor": str(page[-1]["id"]) if len(rows) > limit else None}
    )
