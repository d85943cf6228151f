"""POST /api/v2/sms/send: existing provider clients switch by changing only the URL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from .conftest import ClientFactory, FakeProvider, create_team, mint

pytestmark = pytest.mark.both_databases  # every test here runs on SQLite and PostgreSQL

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


@dataclass
class LegacyHandler:
    """A drop-in client's DLR handler (GET, the provider's format): records each report."""

    url: str = ""
    reports: list[dict[str, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.reports.append(dict(request.query))
        self.arrived.set()
        return web.Response(text="OK")


@pytest.fixture
async def legacy() -> AsyncIterator[LegacyHandler]:
    handler = LegacyHandler()
    app = web.Application()
    app.router.add_get("/dlr-handler", handler.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    handler.url = str(server.make_url("/dlr-handler"))
    yield handler
    await server.close()


async def test_dlrs_reach_the_clients_dlrurl_in_the_provider_format(
    make_client: ClientFactory, provider: FakeProvider, legacy: LegacyHandler
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    provider.dlr = "after"
    resp = await client.post(
        "/api/v2/sms/send",
        data=form(recipients="250782589899", dlrurl=legacy.url + "?site=7"),
    )
    body = await resp.json()
    async with asyncio.timeout(5):
        await legacy.arrived.wait()
    [report] = legacy.reports
    assert report == {
        "site": "7",
        "dnis": "250782589899",
        "username": "legacy-user",
        "password": "legacy-pass",
        "command": "deliver",
        "dlvrMsgId": body["response"][0]["messageid"],
        "dlvrMsgStat": "U",
    }


async def test_the_clients_password_is_kept_nowhere_in_clear(
    make_client: ClientFactory,
    provider: FakeProvider,
    settings: Any,
    caplog: Any,
    receiver: Any,
    legacy: LegacyHandler,
) -> None:
    import logging
    from pathlib import Path

    caplog.set_level(logging.DEBUG)
    password = "Legacy-Pa55word-that-must-not-leak"
    client = await make_client()
    await create_team(client, "payments", callback_url=receiver.url)
    provider.dlr = "after"
    resp = await client.post(
        "/api/v2/sms/send",
        data=form(
            password=password,
            recipients="250782589800,250782589813",  # one delivered, one refused
            dlrurl=legacy.url,
        ),
    )
    answer = await resp.text()
    async with asyncio.timeout(5):
        await legacy.arrived.wait()
    assert legacy.reports[0]["password"] == password  # the client still authenticates its DLR
    await receiver.wait_for(2)  # the team's own webhooks too
    admin = {"Authorization": f"Bearer {mint('root', 'admin')}"}
    seen = [answer] + [body.decode() for _, body in receiver.received]
    for path in ("/admin/webhooks", "/admin/dlr-reports"):
        got = await client.get(path, headers=admin)
        seen.append(await got.text())
    listed = await client.get("/messages", headers={"Authorization": f"Bearer {mint('payments')}"})
    seen.append(await listed.text())
    async with asyncio.timeout(5):  # the delivered DLR's sealed password is dropped too
        while True:
            got = await client.get("/admin/webhooks?status=delivered", headers=admin)
            if len((await got.json())["data"]) == 3:
                break
            await asyncio.sleep(0.02)
    await client.close()  # the files as the gateway leaves them
    files = [Path(settings.database), Path(settings.database + "-wal")]
    stored = b"".join(f.read_bytes() for f in files if f.exists())
    assert password.encode() not in stored
    assert all(password not in text for text in seen)
    # Every line the gateway logged (the test's own receivers log with aiohttp's own access
    # logger; the gateway's access lines carry `access`).
    gateway_lines = [
        r.getMessage() for r in caplog.records if r.name != "aiohttp.access" or hasattr(r, "access")
    ]
    assert gateway_lines and not [line for line in gateway_lines if password in line]


async def test_nested_json_is_a_400_not_a_500(make_client: ClientFactory) -> None:
    client = await make_client()
    await create_team(client, "payments")
    deep = b"[" * 2000 + b"]" * 2000
    for body in (deep, b'{"api_key": ' + deep + b"}"):
        resp = await client.post(
            "/api/v2/sms/send", data=body, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 400 and (await resp.json())["status"] == "error"
    resp = await client.post(
        "/messages",
        data=deep,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {mint()}"},
    )
    assert resp.status == 400 and (await resp.json())["code"] == "invalid_json"
