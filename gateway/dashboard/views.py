"""The dashboard's pages: thin views that read through the API's own store functions."""

from __future__ import annotations

import time
from datetime import datetime, timedelta
from typing import Any

import aiohttp_jinja2
import jwt
from aiohttp import web
from aiohttp_session import new_session

from ..errors import GatewayError, Unauthenticated
from ..keys import AUTH, CLOCK, METRICS, STORE, TIMEZONE
from ..platform.clock import next_month, parse_iso, periods
from ..platform.ids import lowest_ulid
from ..store import alerts as store_alerts
from ..store import dashboard as store_dashboard
from ..store import outbox, rows
from ..store import queue as store_queue
from ..store.usage import day_cost
from ..teams.usage import billing_report, check_month, report_csv
from . import charts
from .session import context, form_with_csrf, require_session, signed_in, start

STATUSES = rows.STATUSES


FINAL = ("delivered", "undelivered", "failed", "expired", "canceled")


PAGE = 50


def render(
    request: web.Request, template: str, values: dict[str, Any], status: int = 200
) -> web.Response:
    return aiohttp_jinja2.render_template(template, request, values, status=status)


async def render_page(
    request: web.Request, template: str, values: dict[str, Any], status: int = 200
) -> web.Response:
    session = await signed_in(request)
    return render(request, template, {**context(session), **values}, status)


async def login_form(request: web.Request) -> web.Response:
    """The sign-in form (an admin token)."""
    if await signed_in(request) is not None:
        raise web.HTTPSeeOther(request.app.router["overview"].url_for())
    return render(request, "login.html", {"error": None})


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
        return render(request, "login.html", {"error": error}, status=401)
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
    return await render_page(
        request,
        "overview.html",
        {
            "today": _summary(await store_dashboard.status_counts(store, _since(day_start))),
            "month": _summary(await store_dashboard.status_counts(store, _since(month_start))),
            "cost_today": cost_today,
            "cost_month": billing_month["totals"]["cost"],
            "test_today": await store_dashboard.test_sends(store, _since(day_start)),
            "test_month": await store_dashboard.test_sends(store, _since(month_start)),
            "day": day,
            "month_name": month,
            "statuses": STATUSES,
            "provider": _provider_stats(request),
            "webhooks": {"pending": hooks.get("pending", 0), "failed": hooks.get("failed", 0)},
            "unmatched": await store_dashboard.unmatched_reports(store),
            "alerts": await store_alerts.fired(store, month, next_month(month)),
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
        return await render_page(
            request, "billing.html", {"report": None, "error": exc.detail}, 422
        )
    return await render_page(request, "billing.html", {"report": report, "error": None})


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
