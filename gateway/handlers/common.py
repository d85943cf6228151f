"""What every handler shares: JSON in and out, and who is calling."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from ..errors import (
    Forbidden,
    InvalidBody,
    InvalidJSON,
    RateLimited,
    UnsupportedMediaType,
    ValidationFailed,
)
from ..keys import AUTH, METRICS, RATES, SEND, STORE, TEAMS
from ..platform.jsonio import dumps, loads
from ..platform.logs import request_id
from ..platform.secretbox import SecretBox
from ..sending.validation import refuse_unstorable, unstorable_fields
from ..store.audit import Actor
from ..store.teams import Team
from ..teams.auth import Principal, bearer_token, require_scope
from ..teams.ratelimit import retry_after


def secret_box(request: web.Request) -> SecretBox:
    """The process's box (GATEWAY_SECRET_KEY), which seals the endpoints' secrets; from the
    dashboard's sub-application too."""
    box = request.config_dict[SEND].box
    assert box is not None, "every app opens the box at start"
    return box


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """A JSON answer."""
    return web.Response(
        body=dumps(data),
        status=status,
        content_type="application/json",
        headers=headers,
    )


async def read_json(request: web.Request) -> Any:
    """The request body as JSON: 415 if it was sent as another media type (a form post),
    400 invalid_json if it is not JSON."""
    media = request.content_type
    # No Content-Type at all reads as application/octet-stream: parsed as JSON all the same.
    if media not in ("application/json", "application/octet-stream") and not media.endswith(
        "+json"
    ):
        raise UnsupportedMediaType(
            f"the body was sent as {media}; send it as JSON, with Content-Type: application/json",
            headers={"Accept-Post": "application/json"},
        )
    raw = await request.read()
    if not raw.strip():
        raise InvalidJSON("the request body is empty; a JSON object is expected")
    try:
        body = loads(raw)
    except ValueError as exc:
        raise InvalidJSON(f"the request body is not valid JSON: {exc}") from None
    refuse_unstorable(unstorable_fields(body))
    return body


async def read_form(request: web.Request) -> dict[str, str]:
    """The text fields of a form body; 400 if it cannot be read as one."""
    try:
        posted = await request.post()
    except (ValueError, UnicodeDecodeError, AssertionError) as exc:
        raise InvalidBody(f"the form body cannot be read: {exc}") from None
    fields = {k: v for k, v in posted.items() if isinstance(v, str)}
    refuse_unstorable(unstorable_fields(fields))
    return fields


async def principal(request: web.Request, token: str | None = None) -> Principal:
    """The verified caller, from `token` or the Authorization header (401 otherwise)."""
    return await request.app[AUTH].verify(token or bearer_token(request))


async def team_for(
    request: web.Request, scope: str | None, token: str | None = None, *, sending: bool = False
) -> Team:
    """The calling team, active, holding `scope` if one is named (401/403 otherwise).
    `sending`: for a send, whose reservation checks the team again in the database."""
    caller = await principal(request, token)
    return await _team_of(request, caller, scope, sending)


async def team_and_caller(request: web.Request, scope: str) -> tuple[Team, Principal]:
    """team_for, with the verified caller (for an audited change)."""
    caller = await principal(request)
    return await _team_of(request, caller, scope, False), caller


async def sending_team(request: web.Request, token: str | None = None) -> tuple[Team, bool]:
    """The team a send is for, and whether it is a test send: a token whose scope holds
    `messages:test` sends through the simulator (never the provider), whatever else it holds;
    otherwise the scope must hold `messages:send`."""
    caller = await principal(request, token)
    test = TEST_SCOPE in caller.scopes
    team = await _team_of(request, caller, None if test else "messages:send", True)
    return team, test


TEST_SCOPE = "messages:test"


async def _team_of(
    request: web.Request, caller: Principal, scope: str | None, sending: bool
) -> Team:
    team = await request.app[TEAMS].get(request.app[STORE], caller.subject, rechecked=sending)
    if team is None:
        raise Forbidden(
            f"team {caller.subject!r} is not registered on this gateway", code="unknown_team"
        )
    if not team.active:
        raise Forbidden(f"team {caller.subject!r} is disabled", code="team_disabled")
    if scope is not None:
        require_scope(caller, scope)
    wait = request.app[RATES].take(team.id, team.rate_limit_per_second)
    if wait:
        request.app[METRICS].rate_limited.labels(team.id).inc()
        raise RateLimited(
            f"team {team.id!r} may make {team.rate_limit_per_second:g} requests a second",
            headers={"Retry-After": retry_after(wait)},
        )
    return team


async def admin(request: web.Request) -> Principal:
    """A caller with the `admin` scope; its subject need not be a team."""
    caller = await principal(request)
    require_scope(caller, "admin")
    return caller


def actor_of(request: web.Request, caller: Principal, source: str = "api") -> Actor:
    """Who makes a change through this request, for its audit entry."""
    return Actor(caller.subject, source, request.remote, request_id.get())


def bad_param(name: str, reason: str) -> ValidationFailed:
    """The 422 for a query parameter."""
    return ValidationFailed(
        f"{name}: {reason}",
        code="invalid_parameter",
        extra={"errors": [{"field": name, "reason": reason}]},
    )


def query_limit(request: web.Request, default: int, most: int) -> int:
    """`?limit=`: a whole number from 1 to `most` (ASCII digits only), else the 422."""
    raw = request.query.get("limit", str(default))
    if not (raw.isascii() and raw.isdigit()) or not 1 <= int(raw) <= most:
        raise bad_param("limit", f"must be an integer from 1 to {most}")
    return int(raw)
