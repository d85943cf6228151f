"""The dashboard's message pages: the filtered list, one message, and the webhook outbox."""

from __future__ import annotations

from datetime import datetime

from aiohttp import web

from ..errors import NotFound
from ..keys import SETTINGS, STORE, TIMEZONE, WORKER
from ..platform.ids import lowest_ulid
from ..sending import numbers
from ..store import dashboard as store_dashboard
from ..store import outbox
from ..store.reads import ListFilter
from .session import form_with_csrf, operator, require_session
from .views import PAGE, STATUSES, render_page


@require_session
async def messages(request: web.Request) -> web.Response:
    """Messages across teams, newest first, with the API's filters."""
    app = request.config_dict
    q = request.query
    filters = {
        k: q.get(k, "").strip()
        for k in ("team", "to", "reference", "status", "batch_id", "after", "before", "test")
    }
    error = None
    list_filter = ListFilter(limit=PAGE + 1)
    try:
        list_filter = _list_filter(request, filters, q.get("cursor"))
    except ValueError as exc:
        error = str(exc)
    rows = (
        await store_dashboard.list_messages(app[STORE], filters["team"] or None, list_filter)
        if error is None
        else []
    )
    page = rows[:PAGE]
    more = len(rows) > PAGE
    query = {k: v for k, v in filters.items() if v}
    return await render_page(
        request,
        "messages.html",
        {
            "rows": page,
            "filters": filters,
            "statuses": STATUSES,
            "error": error,
            "next": {**query, "cursor": page[-1][1]["id"]} if more else None,
        },
        status=422 if error else 200,
    )


def _list_filter(request: web.Request, f: dict[str, str], cursor: str | None) -> ListFilter:
    settings = request.config_dict[SETTINGS]
    tz = request.config_dict[TIMEZONE]
    to = None
    if f["to"]:
        to = numbers.normalise(f["to"], settings.default_region, settings.allowed_regions)
    if f["status"] and f["status"] not in STATUSES:
        raise ValueError("status: not a message status")
    bounds: dict[str, str | None] = {}
    for name in ("after", "before"):
        bounds[name] = None
        if f[name]:
            try:
                at = datetime.fromisoformat(f[name])
            except ValueError:
                raise ValueError(f"{name}: must be a date like 2026-11-26") from None
            if at.tzinfo is None:
                at = at.replace(tzinfo=tz)
            try:
                bounds[name] = "msg_" + lowest_ulid(at)
            except (ValueError, OverflowError, OSError):
                raise ValueError(f"{name}: must be a date like 2026-11-26") from None
    if f["test"] not in ("", "true", "false"):
        raise ValueError("test: must be true or false")
    if cursor is not None and not (cursor.startswith("msg_") and len(cursor) == 30):
        raise ValueError("cursor: not one this page made")
    return ListFilter(
        status=f["status"] or None,
        to=to,
        reference=f["reference"] or None,
        batch_id=f["batch_id"] or None,
        min_id=bounds["after"],
        max_id=bounds["before"],
        before_id=cursor,
        limit=PAGE + 1,
        test=None if not f["test"] else f["test"] == "true",
    )


@require_session
async def message(request: web.Request) -> web.Response:
    """One message with its events and webhook deliveries."""
    store = request.config_dict[STORE]
    message_id = request.match_info["id"]
    found = await store_dashboard.find_message(store, message_id)
    if found is None:
        raise NotFound(f"no message {message_id!r}", code="message_not_found")
    team_id, found_message = found
    return await render_page(
        request,
        "message.html",
        {
            "team_id": team_id,
            "m": found_message,
            "hooks": await store_dashboard.message_webhooks(store, message_id),
        },
    )


@require_session
async def webhooks(request: web.Request) -> web.Response:
    """Failed and pending deliveries, with a retry button each."""
    store = request.config_dict[STORE]
    return await render_page(
        request,
        "webhooks.html",
        {
            "failed": await outbox.list_webhooks(store, "failed", 200, None),
            "pending": await outbox.list_webhooks(store, "pending", 200, None),
            "notice": request.query.get("retried"),
        },
    )


async def retry_webhook(request: web.Request) -> web.Response:
    """Queue a delivery again, due now."""
    await form_with_csrf(request)
    app = request.config_dict
    hook_id = request.match_info["id"]
    if await outbox.retry_webhook(app[STORE], hook_id, actor=await operator(request)) is None:
        raise NotFound(f"no webhook {hook_id!r}", code="webhook_not_found")
    app[WORKER].wake()
    location = request.app.router["webhooks"].url_for().with_query(retried=hook_id)
    raise web.HTTPSeeOther(location)
