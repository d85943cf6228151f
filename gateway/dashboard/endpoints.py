"""The dashboard's webhook endpoints, on their team's page: add one, enable a disabled one,
recover its failed deliveries since a time, rotate its secret, remove it (each audited)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from ..errors import GatewayError, NotFound
from ..handlers.common import secret_box
from ..keys import SETTINGS, STORE, TIMEZONE, WORKER
from ..sending.validation import callback_guard, check_callback_url
from ..store import endpoints as store
from .session import form_with_csrf, operator
from .teams import team_page

RECOVER_FORMAT = "%Y-%m-%dT%H:%M"  # what an <input type="datetime-local"> sends


async def _endpoint(request: web.Request) -> dict[str, Any]:
    endpoint_id = request.match_info["id"]
    found = await store.get(request.config_dict[STORE], endpoint_id, None)
    if found is None:
        raise NotFound(f"no webhook endpoint {endpoint_id!r}", code="endpoint_not_found")
    return found


async def create(request: web.Request) -> web.Response:
    """Add an endpoint to the team; its secret is shown on the page this once."""
    fields = await form_with_csrf(request)
    app = request.config_dict
    team_id = request.match_info["id"]
    events = [e for e in store.EVENT_TYPES if fields.get(f"event:{e}") == "on"]
    url = fields.get("url", "").strip()
    error = None
    if not events:
        error = "events: choose at least one event type"
    else:
        try:
            checked = check_callback_url(url or None, callback_guard(app[SETTINGS]), "url")
            if checked is None:
                raise GatewayError("url: an http(s) URL is needed")
        except GatewayError as exc:
            error = exc.detail
    if error is not None:
        return await team_page(request, team_id, endpoint_error=error, status=422)
    created = await store.create(
        app[STORE],
        secret_box(request),
        team_id,
        url,
        events,
        fields.get("description", "").strip() or None,
        await operator(request),
    )
    return await team_page(
        request,
        team_id,
        secret=created["secret"],
        secret_of=created["id"],
        notice=f"Webhook endpoint {created['id']} added.",
    )


async def enable(request: web.Request) -> web.Response:
    """Enable a disabled endpoint again."""
    await form_with_csrf(request)
    found = await _endpoint(request)
    await store.update(
        request.config_dict[STORE], found["id"], None, {"enabled": True}, await operator(request)
    )
    return await team_page(request, found["team"], notice=f"Endpoint {found['id']} enabled.")


async def recover(request: web.Request) -> web.Response:
    """Queue again the endpoint's deliveries that failed since the form's time."""
    fields = await form_with_csrf(request)
    found = await _endpoint(request)
    app = request.config_dict
    try:
        since = datetime.strptime(fields.get("since", ""), RECOVER_FORMAT).replace(
            tzinfo=app[TIMEZONE]
        )
    except ValueError:
        return await team_page(
            request, found["team"], endpoint_error="since: a date and time is needed", status=422
        )
    queued = await store.recover(app[STORE], found["id"], None, since, await operator(request))
    if queued:
        app[WORKER].wake()
    return await team_page(
        request, found["team"], notice=f"{queued} failed deliveries to {found['id']} queued again."
    )


async def rotate(request: web.Request) -> web.Response:
    """A new secret for the endpoint; the old one signs too for the overlap."""
    await form_with_csrf(request)
    found = await _endpoint(request)
    app = request.config_dict
    rotated = await store.rotate(
        app[STORE],
        secret_box(request),
        found["id"],
        None,
        app[SETTINGS].webhook_secret_overlap,
        await operator(request),
    )
    assert rotated is not None
    return await team_page(
        request,
        found["team"],
        secret=rotated["secret"],
        secret_of=found["id"],
        notice=f"Secret of {found['id']} rotated; the old one signs too until "
        f"{rotated['previous_secret_valid_until']}.",
    )


async def delete(request: web.Request) -> web.Response:
    """Remove the endpoint."""
    await form_with_csrf(request)
    found = await _endpoint(request)
    await store.delete(request.config_dict[STORE], found["id"], None, await operator(request))
    return await team_page(request, found["team"], notice=f"Endpoint {found['id']} removed.")
