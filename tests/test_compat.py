"""POST /api/v2/sms/send: existing provider clients switch by changing only the URL."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from .conftest import ClientFactory, FakeProvider, create_team, mint

Client = TestClient[web.Request, web.Application]


def form(**fields: str) -> dict[str, str]:
    return {
        "api_key": mint("payments"),
        "username": "legacy-user",
        "password": "legacy-pass",
        "recipients": "250782589800,0782589801",
        "message": "Hello from BulkSMS!",
        **fields,
    }


async def test_form_send_answers_in_the_provider_format(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    resp = await client.post("/api/v2/sms/send", data=form())
    body = await resp.json()
    assert resp.status == 200, body
    assert body["status"] == "success" and body["unit"] == "RWF"
    assert body["totalmessages"] == 2 and body["totalcost"] == 150
    assert [r["recipient"] for r in body["response"]] == ["250782589800", "250782589801"]
    assert all(
        r["status"] == "sent" and r["messageid"].startswith("msg_") for r in body["response"]
    )
    # The provider got the gateway's credentials, not the legacy ones.
    assert provider.calls[0]["username"] != "legacy-user"
    stored = await client.get(
        f"/messages/{body['response'][0]['messageid']}",
        headers={"Authorization": f"Bearer {mint('payments')}"},
    )
    assert (await stored.json())["text"] == "Hello from BulkSMS!"


async def test_json_body_works_too(make_client: ClientFactory, provider: FakeProvider) -> None:
    client = await make_client()
    await create_team(client, "payments")
    resp = await client.post("/api/v2/sms/send", json=form(recipients="250782589800"))
    assert resp.status == 200
    assert (await resp.json())["totalmessages"] == 1


async def test_errors_come_in_the_provider_shape(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client()
    await create_team(client, "payments", daily_limit=1)

    async def error(data: dict[str, str], status: int, code: str) -> dict[str, Any]:
        resp = await client.post("/api/v2/sms/send", data=data)
        body: dict[str, Any] = await resp.json()
        assert resp.status == status, body
        assert body["status"] == "error" and body["message"] and body["code"] == code
        return body

    await error(form(api_key=""), 401, "unauthenticated")
    await error(form(api_key="not-a-jwt"), 401, "unauthenticated")
    await error(form(api_key=mint("ghost")), 403, "unknown_team")
    await error(form(api_key=mint("payments", "messages:read")), 403, "insufficient_scope")
    await error(form(recipients="12345"), 400, "invalid_recipient")
    await error(form(message=""), 400, "invalid_text")
    await error(form(dlrurl="ftp://nope"), 400, "invalid_callback_url")
    await error(form(), 429, "quota_exceeded")
    assert provider.calls == []
    provider.mode = "error"
    body = await error(form(recipients="250782589800"), 502, "provider_error")
    assert "Insufficient balance" in body["message"]


async def test_dlrs_reach_the_clients_dlrurl_in_the_provider_format(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    reports: list[dict[str, str]] = []
    arrived = asyncio.Event()

    async def legacy_dlr_handler(request: web.Request) -> web.Response:
        reports.append(dict(request.query))
        arrived.set()
        return web.Response(text="OK")

    app = web.Application()
    app.router.add_get("/dlr-handler", legacy_dlr_handler)
    legacy = TestServer(app, host="127.0.0.1")
    await legacy.start_server()
    try:
        client = await make_client()
        await create_team(client, "payments")
        provider.dlr = "after"
        resp = await client.post(
            "/api/v2/sms/send",
            data=form(
                recipients="250782589899", dlrurl=str(legacy.make_url("/dlr-handler?site=7"))
            ),
        )
        body = await resp.json()
        async with asyncio.timeout(5):
            await arrived.wait()
        [report] = reports
        assert report == {
            "site": "7",
            "dnis": "250782589899",
            "username": "legacy-user",
            "password": "legacy-pass",
            "command": "deliver",
            "dlvrMsgId": body["response"][0]["messageid"],
            "dlvrMsgStat": "U",
        }
    finally:
        await legacy.close()
