"""GET|POST /dlr/{token}: the provider's delivery reports."""

from __future__ import annotations

import hmac

from aiohttp import web

from ..delivery.reports import Report, receive_report
from ..errors import Forbidden, GatewayError
from ..keys import CLOCK, METRICS, SEND, SETTINGS, STORE, WORKER
from ..platform.clock import iso
from ..provider.client import MAX_ID, clean
from .common import read_form

REQUIRED = ("dnis", "username", "password", "command", "dlvrMsgId", "dlvrMsgStat")


class BadReport(GatewayError):
    status, code, title = 400, "invalid_report", "The delivery report is not valid"


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


async def receive(request: web.Request) -> web.Response:
    """Check the token and the account credentials, then store and apply the report."""
    app = request.app
    batch_id = app[SEND].tokens.verify(request.match_info["token"])
    if batch_id is None:
        raise Forbidden(
            "this delivery report URL was not issued by this gateway", code="invalid_dlr_token"
        )
    params = {k: v for k, v in request.query.items()}
    if request.method == "POST":
        params.update(await read_form(request))
    settings = app[SETTINGS]
    # Both are checked whatever the first gave, so timing tells nothing about which was wrong.
    user_ok = _same(params.get("username", ""), settings.provider_username)
    password_ok = _same(params.get("password", ""), settings.provider_password)
    if not (user_ok and password_ok):
        raise Forbidden(
            "the report's credentials are not the provider account's", code="invalid_credentials"
        )
    missing = [name for name in REQUIRED if not params.get(name, "").strip()]
    if missing:
        raise BadReport(f"missing {', '.join(missing)}")
    if params["command"] != "deliver":
        raise BadReport(f"command {params['command']!r} is not 'deliver'")
    state = params["dlvrMsgStat"].strip().upper()
    if state not in ("D", "U"):
        raise BadReport("dlvrMsgStat must be D (delivered) or U (undelivered)")
    report = Report(batch_id, clean(params["dlvrMsgId"], MAX_ID), clean(params["dnis"]), state)
    outcome = await receive_report(
        app[STORE], report, iso(app[CLOCK]()), app[SETTINGS].webhook_retry_schedule[0]
    )
    status = "delivered" if state == "D" else "undelivered"
    app[METRICS].dlrs.labels(status, outcome).inc()
    if outcome == "applied":
        app[METRICS].messages.labels(status).inc()
        app[WORKER].wake()
    return web.Response(text="OK")
