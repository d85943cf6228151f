"""The dashboard's audit page: the log, newest first, with the API's filters."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import GatewayError
from ..handlers.audit import audit_filter
from ..keys import STORE
from ..store.audit import entries
from .session import require_session
from .views import render_page

PAGE = 50
FIELDS = ("actor", "team", "action", "since", "until")


@require_session
async def audit(request: web.Request) -> web.Response:
    """Entries matching the filter form (empty fields are no filter); "Older" pages on."""
    query = {k: v.strip() for k, v in request.query.items() if v.strip()}
    filters = {name: query.get(name, "") for name in FIELDS}
    try:
        where, _ = audit_filter({**query, "limit": str(PAGE)})
    except GatewayError as exc:
        values: dict[str, Any] = {"entries": [], "filters": filters, "error": exc.detail}
        values["next"] = None
        return await render_page(request, "audit.html", values, status=422)
    rows = await entries(request.config_dict[STORE], where, PAGE + 1)
    page = rows[:PAGE]
    following = None
    if len(rows) > PAGE:
        following = {k: v for k, v in query.items() if k in FIELDS}
        following["cursor"] = str(page[-1]["id"])
    found: dict[str, Any] = {"entries": page, "filters": filters, "error": None, "next": following}
    return await render_page(request, "audit.html", found)
