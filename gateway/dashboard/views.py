"""The dashboard's pages: thin views that read through the API's own store functions."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import aiohttp_jinja2
import jwt
from aiohttp import web
from aiohttp_session import new_session

from ..errors import GatewayError, NotFound, Unauthenticated
from ..keys import AUTH, CLOCK, METRICS, SETTINGS, STORE, TEAMS, TIMEZONE, WORKER
from ..platform.clock import parse_iso, periods
from ..platform.ids import lowest_ulid
from ..sending import numbers
from ..sending.validation import callback_guard
from ..store import dashboard as store_dashboard
from ..store import outbox, rows
from ..store import queue as store_queue
from ..store import teams as store_teams
from ..store.reads import ListFilter
from ..store.usage import day_cost, period_usage
from ..teams.fields import TEAM_ID, check_team_fields
from ..teams.usage import billing_report, check_month, report_csv
from . import charts
from .session import context, form_with_csrf, require_session, signed_in, start

STATUSES = rows.STATUSES
FINAL = ("delivered", "undelivered", "failed", "expired", "canceled")
PAGE = 50
TEAM_FORM_FIELDS = (
    "name",
    "daily_limit",
    "monthly_limit",
    "monthly_budget",
    "rate_limit_per_second",
    "callback_url",
)


def _render(
    request: web.Request, template: str, values: dict[str, Any], status: int = 200
) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, values, status=status)


async def _page(
    request: web.Request, template: str, values: dict[str, Any], status: int = 200
) -> web.Response:
    session = await signed_in(request)
    return _render(request, template, {**context(session), **values}, status)


# --- sign-in ------------------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.Response:
    """The sign-in form (an admin token)."""
    if await signed_in(request) is not None:
        raise web.HTTPSeeOther(request.app.router["overview"].url_for())
    return _render(request, "login.html", {"error": None})


async def login(request: web.Request) -> web.Response:
    """Check the token; a valid admin token starts a session that ends with the token."""
    try:
        posted = await request.post()
    except ValueError:
        posted = {}  # type: ignore[assignment]
    token = str(posted.get("token") or "").strip()
    error = None
    try:
        if not token:
            raise Unauthenticated("paste an admin token")
        caller = await request.config_dict[AUTH].verify(token)
        if "admin" not in caller.scopes:
            raise Unauthenticated("this token has no admin scope; issue one with --scope admin")
        expires = float(jwt.decode(token, options={"verify_signature": False})["exp"])
    except GatewayError as exc:
        error = exc.detail
    if error is not None:
        return _render(request, "login.html", {"error": error}, status=401)
    session = await new_session(request)
    start(session, caller.subject, min(expires, time.time() + 7 * 86400))
    raise web.HTTPSeeOther(request.app.router["overview"].url_for())


async def logout(request: web.Request) -> web.Response:
    """End the session on the server."""
    await form_with_csrf(request)
    session = await signed_in(request)
    if session is not None:
        session.invalidate()
    raise web.HTTPSeeOther(request.app.router["login"].url_for())


# --- overview -----------------------------------------------------------------------------------


def _since(at: datetime) -> str:
    return "msg_" + lowest_ulid(at)


def _summary(counts: list[store_dashboard.StatusCount]) -> dict[str, Any]:
    by_status = {c.status: c.messages for c in counts}
    final = sum(by_status.get(s, 0) for s in FINAL)
    return {
        "by_status": by_status,
        "total": sum(by_status.values()),
        "delivered": by_status.get("delivered", 0),
        "final": final,
        "rate": (by_status.get("delivered", 0) / final) if final else None,
    }


def _provider_stats(request: web.Request) -> dict[str, Any]:
    registry = request.config_dict[METRICS].registry
    calls = registry.get_sample_value("gateway_provider_request_duration_seconds_count") or 0.0
    seconds = registry.get_sample_value("gateway_provider_request_duration_seconds_sum") or 0.0
    errors = sum(
        registry.get_sample_value("gateway_provider_errors_total", {"kind": kind}) or 0.0
        for kind in ("error", "unavailable", "timeout")
    )
    return {
        "calls": int(calls),
        "errors": int(errors),
        "error_rate": errors / calls if calls else None,
        "latency_ms": seconds / calls * 1000 if calls else None,
    }


@require_session
async def overview(request: web.Request) -> web.Response:
    """Today and this month across teams."""
    app = request.config_dict
    store, tz, now = app[STORE], app[TIMEZONE], app[CLOCK]()
    local = now.astimezone(tz)
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    month_start = day_start.replace(day=1)
    day, month = periods(now, tz)
    cost_today = await day_cost(store, day)
    billing_month = await billing_report(store, month, tz)
    hours = [(now - timedelta(hours=23 - i)).strftime("%Y-%m-%dT%H") for i in range(24)]
    series: dict[str, list[int]] = {s: [0] * 24 for s in STATUSES}
    index = {h: i for i, h in enumerate(hours)}
    for hour, status, n in await store_dashboard.hourly(store, _since(now - timedelta(hours=24))):
        if hour in index and status in series:
            series[status][index[hour]] += n
    labels = [parse_iso(h + ":00:00Z").astimezone(tz).strftime("%H:00") for h in hours]
    hooks = await outbox.webhook_counts(store)
    queue = await store_queue.stats(store)
    return await _page(
        request,
        "overview.html",
        {
            "today": _summary(await store_dashboard.status_counts(store, _since(day_start))),
            "month": _summary(await store_dashboard.status_counts(store, _since(month_start))),
            "cost_today": cost_today,
            "cost_month": billing_month["totals"]["cost"],
            "day": day,
            "month_name": month,
            "statuses": STATUSES,
            "provider": _provider_stats(request),
            "webhooks": {"pending": hooks.get("pending", 0), "failed": hooks.get("failed", 0)},
            "unmatched": await store_dashboard.unmatched_reports(store),
            "queue": {
                "depth": queue.depth,
                "age": queue.age(),
            },
            "chart": charts.stacked_bars(
                labels,
                {s: v for s, v in series.items() if any(v)} or {"sent": [0] * 24},
                title="Messages created in the last 24 hours, by status",
            ),
        },
    )


# --- teams --------------------------------------------------------------------------------------


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
    return await _page(
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
            team = await store_teams.create_team(app[STORE], team_id, checked, app[CLOCK]())
            app[TEAMS].forget(team_id)
        except GatewayError as exc:
            error = exc.detail
    if team is None:
        rows = await _team_rows(request)
        return await _page(
            request, "teams.html", {"rows": rows, "form": fields, "error": error}, status=422
        )
    return await _team_page(request, team.id, secret=team.webhook_secret, notice="Team created.")


async def _team_page(
    request: web.Request,
    team_id: str,
    *,
    secret: str | None = None,
    notice: str | None = None,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status: int = 200,
) -> web.Response:
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
        "secret": secret,
        "notice": notice,
        "error": error,
        "form": form
        if form is not None
        else {
            name: "" if getattr(team, name) is None else str(getattr(team, name))
            for name in TEAM_FORM_FIELDS
        },
    }
    return await _page(request, "team.html", values, status)


@require_session
async def team(request: web.Request) -> web.Response:
    """One team: use, daily chart, and its forms."""
    return await _team_page(request, request.match_info["id"])


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
            await store_teams.update_team(app[STORE], team_id, checked)
            app[TEAMS].forget(team_id)
        except NotFound:
            raise
        except GatewayError as exc:
            error = exc.detail
    if error is not None:
        return await _team_page(request, team_id, error=error, form=fields, status=422)
    raise web.HTTPSeeOther(request.app.router["team"].url_for(id=team_id))


async def rotate_secret(request: web.Request) -> web.Response:
    """A new webhook secret, shown on this page only."""
    await form_with_csrf(request)
    app = request.config_dict
    team_id = request.match_info["id"]
    if not TEAM_ID.fullmatch(team_id):
        raise NotFound(f"no team {team_id!r}", code="team_not_found")
    rotated = await store_teams.rotate_webhook_secret(app[STORE], team_id)
    app[TEAMS].forget(team_id)
    return await _team_page(
        request, team_id, secret=rotated.webhook_secret, notice="Webhook secret rotated."
    )


# --- messages -----------------------------------------------------------------------------------


@require_session
async def messages(request: web.Request) -> web.Response:
    """Messages across teams, newest first, with the API's filters."""
    app = request.config_dict
    q = request.query
    filters = {
        k: q.get(k, "").strip()
        for k in ("team", "to", "reference", "status", "batch_id", "after", "before")
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
    return await _page(
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
    return await _page(
        request,
        "message.html",
        {
            "team_id": team_id,
            "m": found_message,
            "hooks": await store_dashboard.message_webhooks(store, message_id),
        },
    )


# --- webhooks -----------------------------------------------------------------------------------


@require_session
async def webhooks(request: web.Request) -> web.Response:
    """Failed and pending deliveries, with a retry button each."""
    store = request.config_dict[STORE]
    return await _page(
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
    if await outbox.retry_webhook(app[STORE], hook_id) is None:
        raise NotFound(f"no webhook {hook_id!r}", code="webhook_not_found")
    app[WORKER].wake()
    location = request.app.router["webhooks"].url_for().with_query(retried=hook_id)
    raise web.HTTPSeeOther(location)


# --- billing ------------------------------------------------------------------------------------


async def _billing(request: web.Request) -> dict[str, Any]:
    app = request.config_dict
    month = check_month(request.query.get("month") or None, app[CLOCK](), app[TIMEZONE])
    return await billing_report(app[STORE], month, app[TIMEZONE])


@require_session
async def billing(request: web.Request) -> web.Response:
    """The month's per-team billing table."""
    try:
        report = await _billing(request)
    except GatewayError as exc:
        return await _page(request, "billing.html", {"report": None, "error": exc.detail}, 422)
    return await _page(request, "billing.html", {"report": report, "error": None})


@require_session
async def billing_csv(request: web.Request) -> web.Response:
    """The same CSV as GET /admin/usage with Accept: text/csv."""
    report = await _billing(request)
    return web.Response(
        text=report_csv(report),
        content_type="text/csv",
        charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="sms-usage-{report["month"]}.csv"'},
    )


def localtime(value: str | None, tz: Any) -> str:
    """An ISO UTC time as the gateway's zone shows it."""
    if not value:
        return ""
    try:
        return parse_iso(value).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")
    except ValueError:
        return value
