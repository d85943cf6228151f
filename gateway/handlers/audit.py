"""Admin: the audit log (SPEC 8), newest first, in keyset pages."""

from __future__ import annotations

from aiohttp import web

from ..errors import ValidationFailed
from ..keys import STORE
from ..platform.clock import time_bound
from ..sending.validation import refuse_unstorable, unstorable_fields
from ..store.audit import AuditFilter, entries
from .common import admin, json_response

FILTERS = ("actor", "team", "action", "since", "until", "limit", "cursor")


def _bad(name: str, reason: str) -> ValidationFailed:
    return ValidationFailed(
        f"{name}: {reason}",
        code="invalid_parameter",
        extra={"errors": [{"field": name, "reason": reason}]},
    )


def audit_filter(query: dict[str, str]) -> tuple[AuditFilter, int]:
    """The filter and page size a query asks for; 422 for a value that is none."""
    refuse_unstorable(unstorable_fields(query))
    unknown = sorted(set(query) - set(FILTERS))
    if unknown:
        raise _bad(unknown[0], f"is not a filter (use {', '.join(FILTERS)})")
    bounds: dict[str, str | None] = {}
    for name in ("since", "until"):
        raw = query.get(name)
        bounds[name] = None if raw is None else time_bound(raw)
        if raw is not None and bounds[name] is None:
            raise _bad(name, "must be an ISO 8601 date or time, like 2026-12-01T08:00:00Z")
    raw_limit = query.get("limit", "50")
    if not (raw_limit.isascii() and raw_limit.isdigit()) or not 1 <= int(raw_limit) <= 200:
        raise _bad("limit", "must be an integer from 1 to 200")
    cursor = query.get("cursor")
    if cursor is not None and not (cursor.isascii() and cursor.isdigit() and len(cursor) <= 18):
        raise _bad("cursor", "is not a cursor this API returned")
    for name in ("actor", "team", "action"):
        if name in query and not 1 <= len(query[name]) <= 200:
            raise _bad(name, "must be 1 to 200 characters")
    where = AuditFilter(
        actor=query.get("actor"),
        team=query.get("team"),
        action=query.get("action"),
        since=bounds["since"],
        until=bounds["until"],
        before_seq=int(cursor) if cursor else None,
    )
    return where, int(raw_limit)


async def list_audit(request: web.Request) -> web.Response:
    """`GET /admin/audit`: entries newest first; `next_cursor` continues the page."""
    await admin(request)
    where, limit = audit_filter(dict(request.query))
    rows = await entries(request.app[STORE], where, limit + 1)
    page = rows[:limit]
    return json_response(
        {"data": page, "next_cursor": str(page[-1]["id"]) if len(rows) > limit else None}
    )
