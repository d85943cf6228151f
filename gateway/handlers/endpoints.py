"""Webhook endpoints (SPEC 10): `/webhook-endpoints`, a team's own with `messages:send`, any
team's with `admin` (`?team=` picks one; a new endpoint names its `team`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from aiohttp import web

from ..errors import Conflict, NotFound, ValidationFailed
from ..keys import SETTINGS, STORE, TEAMS, WORKER
from ..sending.validation import callback_guard, check_callback_url, rfc3339
from ..store import endpoints as store
from ..store.audit import Actor
from ..teams.auth import Principal
from ..teams.fields import TEAM_ID
from .common import (
    actor_of,
    bad_param,
    json_response,
    principal,
    query_limit,
    read_json,
    secret_box,
    team_and_caller,
)

FIELDS = frozenset({"url", "events", "description"})
MAX_DESCRIPTION = 200
MAX_URL = 2048
OWN_TEAM_ONLY = "must be the calling team's own (only an admin names another)"


def _problem(field: str, reason: str, code: str = "validation_error") -> ValidationFailed:
    return ValidationFailed(
        f"{field} {reason}", code=code, extra={"errors": [{"field": field, "reason": reason}]}
    )


async def _caller(request: web.Request) -> tuple[str | None, Principal]:
    """The team whose endpoints the caller reaches (None: an admin, every team's)."""
    caller = await principal(request)
    if "admin" in caller.scopes:
        return None, caller
    team, caller = await team_and_caller(request, "messages:send")
    return team.id, caller


async def _known_team(request: web.Request, team_id: Any) -> str:
    if not isinstance(team_id, str) or not TEAM_ID.fullmatch(team_id):
        raise _problem("team", "must be a team's id")
    team = await request.app[TEAMS].get(request.app[STORE], team_id)
    if team is None:
        raise _problem("team", "is not a registered team", code="unknown_team")
    return team_id


def _check(request: web.Request, body: Any, *, creating: bool) -> dict[str, Any]:
    """The endpoint fields of a body, checked; every problem in one 422."""
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object")
    allowed = FIELDS | ({"team"} if creating else {"enabled"})
    errors: list[dict[str, str]] = [
        {"field": k, "reason": "is not a field of a webhook endpoint"}
        for k in sorted(set(body) - allowed)
    ]
    out: dict[str, Any] = {}
    if "url" in body or creating:
        url = body.get("url")
        if not isinstance(url, str) or not url or len(url) > MAX_URL:
            errors.append(
                {
                    "field": "url",
                    "reason": f"must be an http(s) URL of {MAX_URL} characters at most",
                }
            )
        else:
            try:
                out["url"] = check_callback_url(url, callback_guard(request.app[SETTINGS]), "url")
            except ValidationFailed as exc:
                errors.extend(exc.extra["errors"])
    if "events" in body:
        events = body["events"]
        if (
            not isinstance(events, list)
            or not events
            or any(e not in store.EVENT_TYPES for e in events)
            or len(set(events)) != len(events)
        ):
            errors.append(
                {
                    "field": "events",
                    "reason": "must be a list of distinct event types: "
                    + ", ".join(store.EVENT_TYPES),
                }
            )
        else:
            out["events"] = list(events)
    elif creating:
        out["events"] = list(store.EVENT_TYPES)
    if "description" in body:
        description = body["description"]
        if description is not None and (
            not isinstance(description, str) or len(description) > MAX_DESCRIPTION
        ):
            errors.append(
                {
                    "field": "description",
                    "reason": f"must be text of {MAX_DESCRIPTION} characters at most, or null",
                }
            )
        else:
            out["description"] = description
    if "enabled" in body:
        if not isinstance(body["enabled"], bool):
            errors.append({"field": "enabled", "reason": "must be true or false"})
        else:
            out["enabled"] = body["enabled"]
    if errors:
        raise ValidationFailed(
            f"{errors[0]['field']} {errors[0]['reason']}",
            code="invalid_callback_url" if errors[0]["field"] == "url" else "validation_error",
            extra={"errors": errors},
        )
    return out


def _endpoint_id(request: web.Request) -> str:
    endpoint_id = request.match_info["id"]
    if not (endpoint_id.startswith("wep_") and len(endpoint_id) == 30 and endpoint_id.isascii()):
        raise NotFound(f"no webhook endpoint {endpoint_id!r}", code="endpoint_not_found")
    return endpoint_id


def _not_found(endpoint_id: str) -> NotFound:
    return NotFound(f"no webhook endpoint {endpoint_id!r}", code="endpoint_not_found")


def _actor(request: web.Request, caller: Principal) -> Actor:
    return actor_of(request, caller)


async def create(request: web.Request) -> web.Response:
    """`POST /webhook-endpoints`: a new endpoint; its secret is in this answer only."""
    team_id, caller = await _caller(request)
    body = await read_json(request)
    fields = _check(request, body, creating=True)
    if team_id is None:
        team_id = await _known_team(request, body.get("team", caller.subject))
    elif "team" in body and body["team"] != team_id:
        raise _problem("team", OWN_TEAM_ONLY)
    try:
        created = await store.create(
            request.app[STORE],
            secret_box(request),
            team_id,
            fields["url"],
            fields["events"],
            fields.get("description"),
            _actor(request, caller),
        )
    except store.TooManyEndpoints:
        raise Conflict(
            f"team {team_id!r} has {store.MAX_ENDPOINTS} webhook endpoints, the most it may",
            code="too_many_endpoints",
        ) from None
    return json_response(
        created, status=201, headers={"Location": f"/webhook-endpoints/{created['id']}"}
    )


async def list_all(request: web.Request) -> web.Response:
    """`GET /webhook-endpoints`: the caller's endpoints (an admin's: every team's, or `?team=`)."""
    team_id, _ = await _caller(request)
    unknown = sorted(set(request.query) - {"limit", "cursor", "team"})
    if unknown:
        raise bad_param(unknown[0], "is not a parameter of this call")
    if "team" in request.query:
        if team_id is not None:
            if request.query["team"] != team_id:
                raise bad_param("team", OWN_TEAM_ONLY)
        else:
            team_id = await _known_team(request, request.query["team"])
    limit = query_limit(request, 50, 200)
    cursor = request.query.get("cursor")
    if cursor is not None and not (cursor.startswith("wep_") and len(cursor) == 30):
        raise bad_param("cursor", "is not a cursor this API returned")
    rows = await store.page(request.app[STORE], team_id, cursor, limit + 1)
    page = rows[:limit]
    return json_response(
        {"data": page, "next_cursor": page[-1]["id"] if len(rows) > limit else None}
    )


async def get_one(request: web.Request) -> web.Response:
    """`GET /webhook-endpoints/{id}`."""
    team_id, _ = await _caller(request)
    endpoint_id = _endpoint_id(request)
    found = await store.get(request.app[STORE], endpoint_id, team_id)
    if found is None:
        raise _not_found(endpoint_id)
    return json_response(found)


async def update(request: web.Request) -> web.Response:
    """`PATCH /webhook-endpoints/{id}`: url, events, description, or `enabled` (true enables a
    disabled endpoint again; false disables it)."""
    team_id, caller = await _caller(request)
    endpoint_id = _endpoint_id(request)
    changes = _check(request, await read_json(request), creating=False)
    updated = await store.update(
        request.app[STORE], endpoint_id, team_id, changes, _actor(request, caller)
    )
    if updated is None:
        raise _not_found(endpoint_id)
    return json_response(updated)


async def delete(request: web.Request) -> web.Response:
    """`DELETE /webhook-endpoints/{id}`: its waiting deliveries fail; its history stays."""
    team_id, caller = await _caller(request)
    endpoint_id = _endpoint_id(request)
    if not await store.delete(request.app[STORE], endpoint_id, team_id, _actor(request, caller)):
        raise _not_found(endpoint_id)
    return web.Response(status=204)


async def rotate(request: web.Request) -> web.Response:
    """`POST /webhook-endpoints/{id}/rotate-secret`: a new secret (in this answer only); the old
    one keeps signing for GATEWAY_WEBHOOK_SECRET_OVERLAP seconds."""
    team_id, caller = await _caller(request)
    endpoint_id = _endpoint_id(request)
    rotated = await store.rotate(
        request.app[STORE],
        secret_box(request),
        endpoint_id,
        team_id,
        request.app[SETTINGS].webhook_secret_overlap,
        _actor(request, caller),
    )
    if rotated is None:
        raise _not_found(endpoint_id)
    return json_response(rotated)


def _since(body: Any) -> datetime:
    reason = "must be an RFC 3339 time with an offset, e.g. 2026-12-01T08:00:00Z"
    if not isinstance(body, dict) or set(body) - {"since"} or "since" not in body:
        raise _problem("since", "is required (and the only field): " + reason)
    value = rfc3339(body["since"])
    if value is None or value.year < 1970:
        raise _problem("since", reason)
    return value


async def recover(request: web.Request) -> web.Response:
    """`POST /webhook-endpoints/{id}/recover {"since": …}`: every delivery to the endpoint that
    failed since then is queued again, once each, oldest first (a disabled endpoint is enabled)."""
    team_id, caller = await _caller(request)
    endpoint_id = _endpoint_id(request)
    since = _since(await read_json(request))
    queued = await store.recover(
        request.app[STORE], endpoint_id, team_id, since, _actor(request, caller)
    )
    if queued is None:
        raise _not_found(endpoint_id)
    if queued:
        request.app[WORKER].wake()
    return json_response({"endpoint_id": endpoint_id, "queued": queued}, status=202)
