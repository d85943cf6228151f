"""The suppression list (SPEC 9): `/suppressions` for the calling team, `/admin/suppressions`
for every list, and a CSV import."""

from __future__ import annotations

import base64
import binascii

from aiohttp import web

from ..errors import NotFound, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from ..keys import SETTINGS, STORE
from ..sending.suppression import check_number, check_reason, parse_import
from ..store import suppressions as store
from ..store import teams as store_teams
from ..teams.fields import TEAM_ID
from .common import (
    actor_of,
    admin,
    bad_param,
    json_response,
    query_limit,
    read_json,
    team_and_caller,
)

MAX_IMPORT_BYTES = 8 * 1024 * 1024  # 100,000 numbers with a reason column fit well within
PAGE_PARAMS = frozenset({"limit", "cursor", "team"})


def _limit(request: web.Request) -> int:
    return query_limit(request, 100, 1000)


def _cursor(request: web.Request) -> tuple[str, str] | None:
    """The (list, number) key a page continues after."""
    raw = request.query.get("cursor")
    if raw is None:
        return None
    try:
        list_key, _, number = (
            base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode().partition(" ")
        )
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise bad_param("cursor", "is not a cursor this API returned") from None
    if not (number.isascii() and number.isdigit()) or not (
        list_key == store.GLOBAL or TEAM_ID.fullmatch(list_key)
    ):
        raise bad_param("cursor", "is not a cursor this API returned")
    return list_key, number


def _next_cursor(entries: list[store.Entry], limit: int) -> str | None:
    if len(entries) <= limit:
        return None
    list_key, number = store.key_of(entries[limit - 1])
    return base64.urlsafe_b64encode(f"{list_key} {number}".encode()).decode().rstrip("=")


def _unknown_params(request: web.Request, allowed: frozenset[str]) -> None:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise bad_param(unknown[0], "is not a parameter of this call")


async def _reason(request: web.Request) -> str | None:
    """The optional JSON body's reason (a PUT may have no body at all)."""
    if not request.can_read_body:
        return None
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) - {"reason"}:
        raise ValidationFailed(
            'the body must be a JSON object with at most a "reason"',
            extra={"errors": [{"field": "body", "reason": "only reason may be set"}]},
        )
    return check_reason(body.get("reason"))


async def put_own(request: web.Request) -> web.Response:
    """`PUT /suppressions/{number}`: the calling team stops texting a number."""
    team, caller = await team_and_caller(request, "messages:send")
    number = check_number(request.match_info["number"], request.app[SETTINGS])
    reason = await _reason(request)
    entry, new = await store.add(
        request.app[STORE], team.id, number, reason, actor_of(request, caller)
    )
    return json_response(entry.public(), status=201 if new else 200)


async def delete_own(request: web.Request) -> web.Response:
    """`DELETE /suppressions/{number}`: the team may text the number again."""
    team, caller = await team_and_caller(request, "messages:send")
    number = check_number(request.match_info["number"], request.app[SETTINGS])
    if not await store.remove(request.app[STORE], team.id, number, actor_of(request, caller)):
        raise NotFound(f"{number} is not on the team's suppression list", code="not_suppressed")
    return web.Response(status=204)


async def list_own(request: web.Request) -> web.Response:
    """`GET /suppressions`: the calling team's own list, by number."""
    team, _ = await team_and_caller(request, "messages:read")
    _unknown_params(request, PAGE_PARAMS - {"team"})
    limit = _limit(request)
    after = _cursor(request)
    entries = await store.page(request.app[STORE], team.id, after[1] if after else None, limit + 1)
    return json_response(
        {
            "data": [e.public() for e in entries[:limit]],
            "next_cursor": _next_cursor(entries, limit),
        }
    )


async def _list_team(request: web.Request) -> str | None:
    """The admin call's list: `?team=ID` a team's (which must exist), none: the global one."""
    team = request.query.get("team")
    if team is None or team == store.GLOBAL:
        return None
    if not TEAM_ID.fullmatch(team) or await store_teams.find_team(request.app[STORE], team) is None:
        raise NotFound(f"no team {team!r}", code="team_not_found")
    return team


async def put_admin(request: web.Request) -> web.Response:
    """`PUT /admin/suppressions/{number}[?team=ID]`: suppress for one team, or (no team) for
    every team."""
    caller = await admin(request)
    _unknown_params(request, frozenset({"team"}))
    team = await _list_team(request)
    number = check_number(request.match_info["number"], request.app[SETTINGS])
    reason = await _reason(request)
    entry, new = await store.add(
        request.app[STORE], team, number, reason, actor_of(request, caller)
    )
    return json_response(entry.public(), status=201 if new else 200)


async def delete_admin(request: web.Request) -> web.Response:
    """`DELETE /admin/suppressions/{number}[?team=ID]`."""
    caller = await admin(request)
    _unknown_params(request, frozenset({"team"}))
    team = await _list_team(request)
    number = check_number(request.match_info["number"], request.app[SETTINGS])
    if not await store.remove(request.app[STORE], team, number, actor_of(request, caller)):
        raise NotFound(f"{number} is not on that suppression list", code="not_suppressed")
    return web.Response(status=204)


async def list_admin(request: web.Request) -> web.Response:
    """`GET /admin/suppressions`: every list (the global one first, as `*`), or with
    `?team=ID` that team's, or `?team=*` the global one."""
    await admin(request)
    _unknown_params(request, PAGE_PARAMS)
    limit = _limit(request)
    after = _cursor(request)
    if "team" in request.query:
        team = await _list_team(request)
        number = after[1] if after else None
        entries = await store.page(request.app[STORE], team, number, limit + 1)
    else:
        entries = await store.page_all(request.app[STORE], after, limit + 1)
    return json_response(
        {
            "data": [e.public() for e in entries[:limit]],
            "next_cursor": _next_cursor(entries, limit),
        }
    )


async def import_admin(request: web.Request) -> web.Response:
    """`POST /admin/suppressions/import[?team=ID][&reason=...]`: a CSV of up to 100,000
    numbers (text/csv), all or nothing; answered with counts."""
    caller = await admin(request)
    _unknown_params(request, frozenset({"team", "reason"}))
    team = await _list_team(request)
    reason = check_reason(request.query.get("reason"))
    if request.content_type not in ("text/csv", "text/plain"):
        raise UnsupportedMediaType(
            f"the body was sent as {request.content_type}; send the CSV as text/csv",
            headers={"Accept-Post": "text/csv"},
        )
    if (request.content_length or 0) > MAX_IMPORT_BYTES:
        raise PayloadTooLarge(f"an import is at most {MAX_IMPORT_BYTES // (1024 * 1024)} MiB")
    raw = bytearray()
    async for chunk in request.content.iter_any():  # (past the app's 256 KiB body limit)
        raw += chunk
        if len(raw) > MAX_IMPORT_BYTES:
            raise PayloadTooLarge(f"an import is at most {MAX_IMPORT_BYTES // (1024 * 1024)} MiB")
    try:
        text = bytes(raw).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ValidationFailed(
            "the CSV is not UTF-8 text", code="invalid_lines", extra={"errors": []}
        ) from None
    parsed = parse_import(text, request.app[SETTINGS])
    added, already = await store.import_numbers(
        request.app[STORE], team, parsed.numbers, reason, actor_of(request, caller)
    )
    return json_response(
        {
            "team": team,
            "scope": "global" if team is None else "team",
            "lines": parsed.lines,
            "numbers": len(parsed.numbers),
            "added": added,
            "already_suppressed": already,
        }
    )
