"""SPEC 9, test tokens: scope `messages:test` sends through the simulator inside the real
gateway, never the provider, and touches no limit, counter or bill."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from standardwebhooks.webhooks import Webhook

from .conftest import (
    ClientFactory,
    FakeProvider,
    Receiver,
    auth,
    create_team,
    ledger_mismatches,
    mint,
    problem,
    query,
)

pytestmark = pytest.mark.both_databases
TEST = "messages:test messages:read"


async def test_a_test_send_is_delivered_and_webhooked_without_the_provider_or_usage(
    make_client: ClientFactory, receiver: Receiver, database: str
) -> None:
    # a provider that fails the test if it is called at all, on its own server
    calls: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        calls.append(await request.text())
        return web.Response(status=500, text="a test send reached the provider")

    app = web.Application()
    app.router.add_post("/api/v2/sms/send", refuse)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        client = await make_client(
            provider_url=str(server.make_url("/api/v2/sms/send")), sandbox_dlr_delay=0.05
        )
        made = await create_team(client, "payments", callback_url=receiver.url, daily_limit=1)
        resp = await client.post(
            "/messages",
            json={
                "to": ["0788000001", "0788000013", "0788000099"],
                "text": "Your code is 1234",
                "metadata": {"run": "ci-42"},
            },
            headers=auth(mint("payments", TEST)),
        )
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        assert [(m["test"], m["status"], m["cost"]) for m in body["messages"]] == [
            (True, "sent", 0),
            (True, "failed", 0),
            (True, "sent", 0),
        ]
        assert body["total_cost"] == 0
        # the simulator's reports, then a signed webhook for each of the three
        await receiver.wait_for(3)
        verifier = Webhook(made["webhook_secret"])
        hooks = sorted(
            (h["type"], h["data"]["to"], h["data"]["test"], h["data"]["metadata"]["run"])
            for h in (verifier.verify(raw, headers) for headers, raw in receiver.received)
        )
        assert hooks == [
            ("message.delivered", "250788000001", True, "ci-42"),
            ("message.failed", "250788000013", True, "ci-42"),
            ("message.undelivered", "250788000099", True, "ci-42"),
        ]
        assert calls == []
        # no counter moved: the daily limit of 1 still lets a real send through
        assert query(database, "SELECT COUNT(*) FROM usage WHERE segments > 0") == [(0,)]
        usage = await (await client.get("/usage", headers=auth(mint("payments", TEST)))).json()
        assert usage["day"]["used"] == 0 and usage["month"]["cost"] == 0
        assert usage["day"]["test"] == 3 and usage["month"]["test"] == 3
        assert ledger_mismatches(database) == []
        # and a limit refuses none of them (the limit of 1 is passed by three)
        resp = await client.post(
            "/messages",
            json={"to": ["0788000002", "0788000003"], "text": "again"},
            headers=auth(mint("payments", TEST)),
        )
        assert resp.status == 201
    finally:
        await server.close()
    assert calls == []


async def test_test_sends_are_listed_apart(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client(sandbox_dlr_delay=0.05)
    await create_team(client, "payments")
    real = await client.post(
        "/messages", json={"to": "0788000001", "text": "real"}, headers=auth(mint("payments"))
    )
    assert real.status == 201
    test = await client.post(
        "/messages", json={"to": "0788000002", "text": "test"}, headers=auth(mint("payments", TEST))
    )
    assert test.status == 201
    read = auth(mint("payments", "messages:read"))

    async def listed(query_string: str) -> list[tuple[str, bool]]:
        page = await (await client.get(f"/messages{query_string}", headers=read)).json()
        return [(m["text"], m["test"]) for m in page["data"]]

    assert await listed("?test=true") == [("test", True)]
    assert await listed("?test=false") == [("real", False)]
    assert await listed("") == [("test", True), ("real", False)]
    await problem(await client.get("/messages?test=yes", headers=read), 422, "invalid_parameter")
    assert len(provider.calls) == 1 and provider.calls[0]["message"] == "real"


async def test_a_test_token_cannot_queue_and_the_drop_in_endpoint_takes_it(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    client = await make_client(sandbox_dlr_delay=0.05)
    await create_team(client, "payments")
    token = mint("payments", TEST)
    resp = await client.post(
        "/messages",
        json={"to": "0788000001", "text": "later", "queue": True},
        headers=auth(token),
    )
    await problem(resp, 422, "test_not_queued")
    resp = await client.post(
        "/api/v2/sms/send",
        data={"api_key": token, "recipients": "0788000001,0788000013", "message": "hi"},
    )
    body: dict[str, Any] = await resp.json()
    assert body["status"] == "success" and body["totalcost"] == 0
    assert [m["status"] for m in body["response"]] == ["sent", "failed"]
    async with asyncio.timeout(10):  # the simulator's report arrives in-process
        while query(database, "SELECT status FROM messages WHERE recipient = '250788000001'") != [
            ("delivered",)
        ]:
            await asyncio.sleep(0.05)
    assert provider.calls == []
    # a token with neither scope sends nothing
    resp = await client.post(
        "/messages",
        json={"to": "0788000001", "text": "x"},
        headers=auth(mint("payments", "messages:read")),
    )
    await problem(resp, 403, "insufficient_scope")
