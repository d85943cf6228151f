"""POST /api/v2/sms/send: the provider's own contract, so existing clients only change the URL."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ..errors import GatewayError, InvalidJSON
from ..keys import SEND, SETTINGS
from ..sending import check_callback_url, send, validate
from .common import read_form, team_for


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
            data = json.loads(await request.read() or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise InvalidJSON("the request body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidJSON("the request body must be a JSON object")
        return data
    return await read_form(request)


def _recipients(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value  # a JSON list is checked like POST /messages' `to`


async def send_compat(request: web.Request) -> web.Response:
    """Authenticate the JWT in `api_key`, send like POST /messages, answer as the provider."""
    try:
        fields = await _fields(request)
        api_key = fields.get("api_key")
        if not isinstance(api_key, str) or not api_key.strip():
            return _error(401, "api_key must carry a team token (JWT)", "unauthenticated")
        team = await team_for(request, "messages:send", token=api_key.strip())
        body: dict[str, Any] = {
            "to": _recipients(fields.get("recipients")),
            "text": fields.get("message"),
        }
        if fields.get("sender"):
            body["sender"] = fields["sender"]
        send_request = validate(body, request.app[SETTINGS])
        client_dlr = None
        dlrurl = fields.get("dlrurl")
        if dlrurl:
            check_callback_url(dlrurl if isinstance(dlrurl, str) else None)
            client_dlr = json.dumps(
                {
                    "url": dlrurl,
                    "username": str(fields.get("username") or ""),
                    "password": str(fields.get("password") or ""),
                }
            )
        answer = await send(request.app[SEND], team.id, send_request, client_dlr=client_dlr)
    except GatewayError as exc:
        # The provider calls bad numbers and bad fields a 400.
        status = 400 if exc.status == 422 else exc.status
        return _error(status, exc.detail, exc.code, exc.headers)
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
