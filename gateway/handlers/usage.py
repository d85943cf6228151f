"""GET /usage (the calling team) and GET /admin/usage (billing, JSON or CSV)."""

from __future__ import annotations

from aiohttp import web

from ..keys import CLOCK, STORE, TIMEZONE
from ..teams.usage import billing_report, check_month, report_csv, team_usage
from .common import admin, json_response, team_for


async def get_usage(request: web.Request) -> web.Response:
    """The calling team's current day and month."""
    team = await team_for(request, None)
    app = request.app
    return json_response(await team_usage(app[STORE], team, app[CLOCK](), app[TIMEZONE]))


async def get_billing(request: web.Request) -> web.Response:
    """Per-team messages, segments and cost for a month; CSV with `Accept: text/csv`."""
    await admin(request)
    app = request.app
    month = check_month(request.query.get("month"), app[CLOCK](), app[TIMEZONE])
    report = await billing_report(app[STORE], month, app[TIMEZONE])
    if _wants_csv(request.headers.get("Accept", "")):
        return web.Response(
            text=report_csv(report),
            content_type="text/csv",
            charset="utf-8",
            headers={"Content-Disposition": f'attachment; filename="sms-usage-{month}.csv"'},
        )
    return json_response(report)


def _wants_csv(accept: str) -> bool:
    """True when the client prefers text/csv over JSON."""
    types = [part.split(";")[0].strip().lower() for part in accept.split(",")]
    return "text/csv" in types and (
        "application/json" not in types or types.index("text/csv") < types.index("application/json")
    )
