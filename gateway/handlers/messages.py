"""POST /messages, GET /messages, GET /messages/{id}."""

from __future__ import annotations

import base64
import binascii
from datetime import timedelta

from aiohttp import web

from ..errors import NotFound, ValidationFailed
from ..keys import CLOCK, OFFSET, SEND, SETTINGS, STORE
from ..platform.clock import parse_iso
from ..platform.ids import lowest_ulid
from ..sending import numbers
from ..sending.cancel import cancel_batch, cancel_message
from ..sending.validation import check_idempotency_key, for_team, request_hash, validate
from ..sending.workflow import send
from ..store import reads as store_reads
from ..store import rows
from .common import json_response, read_json, sending_team, team_for

STATUSES = frozenset(rows.STATUSES)
LIST_PARAMS = frozenset(
    {
        "status",
        "to",
        "reference",
        "batch_id",
        "created_after",
        "created_before",
        "limit",
        "cursor",
        "test",
    }
)


async def create_message(request: web.Request) -> web.Response:
    """Send one text to 1-1000 recipients."""
    team, test = await sending_team(request)
    key = check_idempotency_key(request.headers.get("Idempotency-Key"))
    body = await read_json(request)
    # send_at's bounds by this host's clock moved to the database's (its measured offset)
    now = request.app[CLOCK]() + timedelta(seconds=request.app[OFFSET].seconds)
    settings = request.app[SETTINGS]
    send_request = for_team(validate(body, settings, now), team.senders, settings.provider_sender)
    answer = await send(
        request.app[SEND],
        team.id,
        send_request,
        idempotency_key=key,
        body_hash=request_hash(body) if key else "",
        test=test,
    )
    return web.Response(
        body=answer.body,
        status=answer.status,
        content_type=answer.content_type,
        headers={**answer.headers, "Idempotent-Replayed": "true"}
        if answer.replayed
        else answer.headers,
    )


async def get_message(request: web.Request) -> web.Response:
    """One of the calling team's messages."""
    team = await team_for(request, "messages:read")
    message_id = request.match_info["id"]
    found = await store_reads.get_message(request.app[STORE], team.id, message_id)
    if found is None:
        raise NotFound(f"no message {message_id!r}", code="message_not_found")
    return json_response(found)


async def cancel_one(request: web.Request) -> web.Response:
    """Cancel one of the team's messages that has not been handed to the provider."""
    team = await team_for(request, "messages:send")
    return json_response(await cancel_message(request.app[SEND], team.id, request.match_info["id"]))


async def cancel_many(request: web.Request) -> web.Response:
    """Cancel what of one of the team's batches has not been handed to the provider."""
    team = await team_for(request, "messages:send")
    return json_response(
        await cancel_batch(request.app[SEND], team.id, request.match_info["batch_id"])
    )


def _bad_param(name: str, reason: str) -> ValidationFailed:
    return ValidationFailed(
        f"{name}: {reason}",
        code="invalid_parameter",
        extra={"errors": [{"field": name, "reason": reason}]},
    )


def encode_cursor(message_id: str) -> str:
    """An opaque cursor for the page after `message_id`."""
    return base64.urlsafe_b64encode(message_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The message id inside a cursor; 422 if it is not one of ours."""
    try:
        value = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _bad_param("cursor", "is not a cursor this API returned") from None
    if not value.startswith("msg_") or len(value) != 30:
        raise _bad_param("cursor", "is not a cursor this API returned")
    return value


def _parse_filter(request: web.Request) -> store_reads.ListFilter:
    query = request.query
    unknown = sorted(set(query) - LIST_PARAMS)
    if unknown:
        raise _bad_param(unknown[0], "is not a filter of this list")
    status = query.get("status")
    if status is not None and status not in STATUSES:
        raise _bad_param("status", f"must be one of {', '.join(sorted(STATUSES))}")
    to = query.get("to")
    if to is not None:
        settings = request.app[SETTINGS]
        try:
            to = numbers.normalise(to, settings.default_region, settings.allowed_regions)
        except ValueError as exc:
            raise _bad_param("to", str(exc)) from None
    bounds: dict[str, str | None] = {}
    for name in ("created_after", "created_before"):
        raw = query.get(name)
        if raw is None:
            bounds[name] = None
            continue
        try:
            bounds[name] = "msg_" + lowest_ulid(parse_iso(raw))
        except (ValueError, OverflowError, OSError):
            raise _bad_param(name, "must be an RFC 3339 timestamp") from None
    raw_limit = query.get("limit", "50")
    try:
        limit = int(raw_limit)
    except ValueError:
        raise _bad_param("limit", "must be an integer from 1 to 200") from None
    if not 1 <= limit <= 200:
        raise _bad_param("limit", "must be an integer from 1 to 200")
    cursor = query.get("cursor")
    test = query.get("test")
    if test is not None and test not in ("true", "false"):
        raise _bad_param("test", "must be true or false")
    return store_reads.ListFilter(
        test=None if test is None else test == "true",
        status=status,
        to=to,
        reference=query.get("reference"),
        batch_id=query.get("batch_id"),
        min_id=bounds["created_after"],
        max_id=bounds["created_before"],
        before_id=decode_cursor(cursor) if cursor else None,
        limit=limit + 1,
    )


async def list_messages(request: web.Request) -> web.Response:
    """The calling team's messages, newest first, a page at a time."""
    team = await team_for(request, "messages:read")
    page_filter = _parse_filter(request)
    rows = await store_reads.list_messages(request.app[STORE], team.id, page_filter)
    page = rows[: page_filter.limit - 1]
    more = len(rows) > len(page)
    return json_response(
        {
            "data": page,
            "next_cursor": encode_cursor(page[-1]["id"]) if more else None,
        }
    )
