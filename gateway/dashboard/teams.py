"""The dashboard's team pages: the list, creating one, its page, changes and secret rotation."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from ..errors import GatewayError, NotFound
from ..keys import CLOCK, SETTINGS, STORE, TEAMS, TIMEZONE
from ..platform.clock import next_month, periods
from ..sending.validation import callback_guard
from ..store import alerts as store_alerts
from ..store import dashboard as store_dashboard
from ..store import endpoints as store_endpoints
from ..store import teams as store_teams
from ..store.audit import AuditFilter, entries
from ..store.usage import period_usage
from ..teams.fields import TEAM_ID, check_team_fields
from . import charts
from .session import form_with_csrf, operator, require_session
from .views import render_page

TEAM_FORM_FIELDS = (
    "name",
    "daily_limit",
    "monthly_limit",
    "monthly_budget",
    "rate_limit_per_second",
    "callback_url",
    "alert_thresholds",
    "senders",
)


async def _team_rows(request: web.Request) -> list[dict[str, Any]]:
    app = request.config_dict
    store = app[STORE]
    day, month = periods(app[CLOCK](), app[TIMEZONE])
    rows = []
    for team in await store_teams.list_teams(store):
        used = await period_usage(store, team.id, [day, month])
        rows.append(
            {
                "team": team,
                "day": used[day].segments,
                "month": used[month].segments,
                "cost": used[month].cost,
                "bars": {
                    "day": charts.bar(used[day].segments, team.daily_limit),
                    "month": charts.bar(used[month].segments, team.monthly_limit),
                    "budget": charts.bar(used[month].cost, team.monthly_budget),
                },
            }
        )
    return rows


@require_session
async def teams(request: web.Request) -> web.Response:
    """Every team with its use against its limits, and the form to create one."""
    return await render_page(
        request, "teams.html", {"rows": await _team_rows(request), "form": {}, "error": None}
    )


def _form_body(fields: dict[str, str], names: tuple[str, ...]) -> tuple[dict[str, Any], str | None]:
    """Form strings to the API's values: empty is null (unlimited); numbers must be numbers."""
    body: dict[str, Any] = {}
    for name in names:
        if name not in fields:
            continue
        raw = fields[name].strip()
        if name in ("daily_limit", "monthly_limit", "monthly_budget"):
            if raw == "":
                body[name] = None
            elif raw.isdigit():
                body[name] = int(raw)
            else:
                return body, f"{name}: must be a whole number, or empty for unlimited"
        elif name == "rate_limit_per_second":
            try:
                body[name] = float(raw) if raw else None
            except ValueError:
                return body, f"{name}: must be a number, or empty for unlimited"
        elif name == "callback_url":
            body[name] = raw or None
        elif name == "alert_thresholds":
            parts = [p for p in raw.replace(",", " ").split() if p]
            if not all(p.isdigit() for p in parts):
                return body, f"{name}: must be whole percents from 1 to 100, like 80, 100"
            body[name] = [int(p) for p in parts]
        elif name == "senders":  # a sender ID may hold a space: commas part them
            body[name] = [p.strip() for p in raw.split(",") if p.strip()]
        else:
            body[name] = raw
    return body, None


async def create_team(request: web.Request) -> web.Response:
    """Create a team from the form; its webhook secret is shown once."""
    fields = await form_with_csrf(request)
    app = request.config_dict
    body, error = _form_body(fields, ("id", *TEAM_FORM_FIELDS))
    if not body.get("name"):
        body.pop("name", None)
    team = None
    if error is None:
        try:
            checked = check_team_fields(body, creating=True, guard=callback_guard(app[SETTINGS]))
            team_id = checked.pop("id")
            team = await store_teams.create_team(
                app[STORE], team_id, checked, app[CLOCK](), actor=await operator(request)
            )
            app[TEAMS].forget(team_id)
        except GatewayError as exc:
            error = exc.detail
    if team is None:
        rows = await _team_rows(request)
        return await render_page(
            request, "teams.html", {"rows": rows, "form": fields, "error": error}, status=422
        )
    return await team_page(request, team.id, secret=team.webhook_secret, notice="Team created.")


async def team_page(
    request: web.Request,
    team_id: str,
    *,
    secret: str | None = None,
    secret_of: str | None = None,
    notice: str | None = None,
    error: str | None = None,
    endpoint_error: str | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
    """A team's page; `secret`: a new secret to show once (the team's, or endpoint
    `secret_of`'s)."""
    app = request.config_dict
    store, tz = app[STORE], app[TIMEZONE]
    if not TEAM_ID.fullmatch(team_id):
        raise NotFound(f"no team {team_id!r}", code="team_not_found")
    team = await store_teams.get_team(store, team_id)
    now = app[CLOCK]()
    day, month = periods(now, tz)
    used = await period_usage(store, team.id, [day, month])
    daily = await store_dashboard.daily_usage(store, team.id, month)
    first = datetime.strptime(month + "-01", "%Y-%m-%d")
    days = []
    while first.strftime("%Y-%m") == month:
        days.append(first.strftime("%Y-%m-%d"))
        first += timedelta(days=1)
    values = {
        "team": team,
        "day": day,
        "month": month,
        "used": used,
        "bars": {
            "day": charts.bar(used[day].segments, team.daily_limit),
            "month": charts.bar(used[month].segments, team.monthly_limit),
            "budget": charts.bar(used[month].cost, team.monthly_budget),
        },
        "daily": [(d, daily.get(d, (0, 0))) for d in days],
        "chart": charts.stacked_bars(
            [d[-2:] for d in days],
            {"used": [daily.get(d, (0, 0))[0] for d in days]},
            title=f"Segments used each day of {month}",
        ),
        "alerts": await store_alerts.fired(store, month, next_month(month), team.id),
        "history": await entries(store, AuditFilter(team=team.id), 20),
        "secret": secret,
        "secret_of": secret_of,
        "endpoints": await store_endpoints.page(
            store, team.id, None, store_endpoints.MAX_ENDPOINTS
        ),
        "event_types": store_endpoints.EVENT_TYPES,
        "reasons": {
            "gone": "it answered 410 Gone",
            "failing": "every attempt failed for too long",
            "operator": "disabled by hand",
            None: "disabled",
        },
        "since": (now - timedelta(days=1)).astimezone(tz).strftime("%Y-%m-%dT%H:%M"),
        "endpoint_error": endpoint_error,
        "notice": notice,
        "error": error,
        "form": form
        if form is not None
        else {name: _form_value(getattr(team, name)) for name in TEAM_FORM_FIELDS},
    }
    return await render_page(request, "team.html", values, status)


def _form_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, tuple):
        return ", ".join(map(str, value))
    return str(value)


@require_session
async def team(request: web.Request) -> web.Response:
    """One team: use, daily chart, and its forms."""
    return await team_page(request, request.match_info["id"])


async def update_team(request: web.Request) -> web.Response:
    """Save the team form (field names as in the API; empty means unlimited)."""
    fields = await form_with_csrf(request)
    app = request.config_dict
    team_id = request.match_info["id"]
    body, error = _form_body(fields, TEAM_FORM_FIELDS)
    if "active" in fields:
        if fields["active"] not in ("true", "false"):
            error = "active: must be true or false"
        body["active"] = fields["active"] == "true"
    if error is None:
        try:
            checked = check_team_fields(body, creating=False, guard=callback_guard(app[SETTINGS]))
            await store_teams.update_team(
                app[STORE], team_id, checked, actor=await operator(request)
            )
            app[TEAMS].forget(team_id)
        except NotFound:
            raise
        except GatewayError as exc:
            error = exc.detail
    if error is not None:
        return await team_page(request, team_id, error=error, form=fields, status=422)
    raise web.HTTPSeeOther(request.app.router["team"].url_for(id=team_id))


async def rotate_secret(request: web.Request) -> web.Response:
    """A new webhook secret, shown on this page only."""
    await form_with_csrf(request)
    app = request.config_dict
    team_id = request.match_info["id"]
    if not TEAM_ID.fullmatch(team_id):
        raise NotFound(f"no team {team_id!r}", code="team_not_found")
    rotated = await store_teams.rotate_webhook_secret(
        app[STORE], team_id, actor=await operator(request)
    )
    app[TEAMS].forget(team_id)
    return await team_page(
        request, team_id, secret=rotated.webhook_secret, notice="Webhook secret rotated."
    )
