"""POST /api/v2/sms/send: the provider's own contract, so existing clients only change the URL."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import InvalidJSON, ValidationFailed, domain_error
from ..keys import SEND, SETTINGS
from ..platform.jsonio import loads
from ..sending.validation import (
    callback_guard,
    check_callback_url,
    for_team,
    refuse_unstorable,
    unstorable_fields,
    validate,
)
from ..sending.workflow import send
from .common import read_form, sending_team


def _error(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        {"status": "error", "message": message, "code": code}, status=status, headers=headers
    )


async def _fields(request: web.Request) -> dict[str, Any]:
    """The request's fields, from a form or a JSON body."""
    if request.content_type == "application/json":
        try:
            data = loads(await request.read() or b"{}")
        except (ValueError, RecursionError):  # (orjson refuses nesting past 1,024 levels)
            raise InvalidJSON("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidJSON("the request body must be a JSON object")
        refuse_unstorable(unstorable_fields(data))
        return data
    return await read_form(request)


def _recipients(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value  # a JSON list is checked like POST /messages' `to`


def _client_dlr(request: web.Request, url: str, fields: dict[str, Any]) -> str:
    """Where and how the client wants its DLRs; its password only sealed (see secretbox)."""
    box = request.app[SEND].box
    assert box is not None, "the app always has a secret box"
    return json.dumps(
        {
            "url": url,
            "username": str(fields.get("username") or ""),
            "password_sealed": box.seal(str(fields.get("password") or ""), "client_dlr"),
        }
    )


async def send_compat(request: web.Request) -> web.Response:
    """Authenticate the JWT in `api_key`, send like POST /messages, answer as the provider."""
    try:
        fields = await _fields(request)
        api_key = fields.get("api_key")
        if not isinstance(api_key, str) or not api_key.strip():
            return _error(401, "api_key must carry a team token (JWT)", "unauthenticated")
        team, test = await sending_team(request, api_key.strip())
        body: dict[str, Any] = {
            "to": _recipients(fields.get("recipients")),
            "text": fields.get("message"),
        }
        if fields.get("sender"):
            body["sender"] = fields["sender"]
        settings = request.app[SETTINGS]
        send_request = for_team(validate(body, settings), team.senders, settings.provider_sender)
        client_dlr = None
        dlrurl = fields.get("dlrurl")
        if dlrurl:
            if not isinstance(dlrurl, str):
                raise ValidationFailed("dlrurl: must be a URL", code="invalid_callback_url")
            check_callback_url(dlrurl, callback_guard(request.app[SETTINGS]), "dlrurl")
            client_dlr = _client_dlr(request, dlrurl, fields)
        answer = await send(
            request.app[SEND], team.id, send_request, client_dlr=client_dlr, test=test
        )
    except Exception as exc:
        error = domain_error(exc)
        if error is None:
            raise
        # The provider calls bad numbers and bad fields a 400.
        status = 400 if error.status == 422 else error.status
        return _error(status, error.detail, error.code, error.headers)
    if answer.status != 201:
        problem = json.loads(answer.body)
        return _error(answer.status, problem["detail"], problem["code"], answer.headers)
    result = json.loads(answer.body)
    return web.json_response(
        {
            "status": "success",
            "totalmessages": len(result["messages"]),
            "totalcost": result["total_cost"],
            "unit": "RWF",
            "response": [
                {
                    "status": m["status"],
                    "messageid": m["id"],
                    "recipient": m["to"],
                    "cost": m["cost"],
                    "message": (m["error"] or {}).get("detail") or m["status"],
                }
                for m in result["messages"]
            ],
        }
    )
