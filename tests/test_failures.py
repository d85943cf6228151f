"""No answer invites a resend once the provider may have acted: odd provider answers, a store
write that fails, a write lock held elsewhere while the provider answers."""

from __future__ import annotations

import asyncio
import sqlite3
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.platform.settings import Settings

from .conftest import (
    ClientFactory,
    FakeProvider,
    Receiver,
    auth,
    create_team,
    ledger_mismatches,
    mint,
)

Client = TestClient[web.Request, web.Application]
SEND = auth(mint("payments"))
BODY = {"to": ["0788000001", "0788000002"], "text": "Your code is 4821"}


async def post(client: Client, key: str, body: dict[str, Any] = BODY) -> Any:
    return await client.post("/messages", json=body, headers={**SEND, "Idempotency-Key": key})


def stored(database: str, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(database) as conn:
        return conn.execute(sql).fetchall()


def entry(recipient: str, cost: Any, status: str = "sent") -> dict[str, Any]:
    return {"status": status, "messageid": "m" + recipient, "recipient": recipient, "cost": cost}


ODD_ANSWERS = {
    "response is an object": {"status": "success", "response": {"0": entry("250788000001", 75)}},
    "response missing": {"status": "success", "totalcost": 150},
    "response null": {"status": "success", "response": None},
    "entries not objects": {"status": "success", "response": ["sent", 1, None]},
    "costs as strings": {
        "status": "success",
        "response": [entry("250788000001", "75"), entry("250788000002", " 60.4 ")],
    },
    "negative costs": {
        "status": "success",
        "response": [entry("250788000001", -75), entry("250788000002", -1, "failed")],
    },
    "a huge integer cost": {
        "status": "success",
        "response": [entry("250788000001", 10**30), entry("250788000002", 2**63)],
    },
    "1e300": {
        "status": "success",
        "response": [entry("250788000001", 1e300), entry("250788000002", "1e300", "failed")],
    },
    "cost as an object": {
        "status": "success",
        "response": [entry("250788000001", {"amount": 75}), entry("250788000002", [75])],
    },
    "status is a list": {"status": ["success"], "response": []},
}


@pytest.mark.parametrize("shape", list(ODD_ANSWERS))
async def test_odd_provider_answers_settle_every_message(
    shape: str, make_client: ClientFactory, provider: FakeProvider, settings: Settings
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    provider.body = ODD_ANSWERS[shape]
    first = await post(client, "k1")
    answer = await first.json()
    assert first.status in (201, 504), answer  # the provider may have acted: no "retry"
    messages = answer["messages"]
    assert {m["status"] for m in messages} <= {"sent", "failed", "unknown"}
    for m in messages:
        assert 0 <= m["cost"] <= 75  # an unusable or insane cost is charged as the estimate
    replay = await post(client, "k1")
    assert replay.status == first.status and replay.headers["Idempotent-Replayed"] == "true"
    assert len(provider.calls) == 1
    assert stored(settings.database, "SELECT id FROM messages WHERE status = 'sending'") == []
    assert stored(settings.database, "SELECT key FROM idempotency WHERE state != 'done'") == []
    assert ledger_mismatches(settings.database) == []


async def test_a_store_write_that_fails_after_the_provider_answered(
    make_client: ClientFactory, provider: FakeProvider, settings: Settings
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    with sqlite3.connect(settings.database) as conn:  # the settlement's write will fail
        conn.execute(
            "CREATE TRIGGER refuse_sent BEFORE UPDATE OF status ON messages"
            " WHEN NEW.status = 'sent' BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    first = await post(client, "k2")
    answer = await first.json()
    assert first.status == 504 and answer["code"] == "provider_timeout", answer
    assert {m["status"] for m in answer["messages"]} == {"unknown"}
    replay = await post(client, "k2")
    assert replay.status == 504 and replay.headers["Idempotent-Replayed"] == "true"
    assert len(provider.calls) == 1  # the replay sent nothing
    rows = stored(settings.database, "SELECT status, error_code, cost FROM messages")
    assert rows == [("unknown", "outcome_pending", 75)] * 2  # charged while unknown
    assert ledger_mismatches(settings.database) == []
    with sqlite3.connect(settings.database) as conn:
        conn.execute("DROP TRIGGER refuse_sent")
    async with asyncio.timeout(10):  # the provider's answer catches up
        while stored(settings.database, "SELECT 1 FROM messages WHERE status != 'sent'"):
            await asyncio.sleep(0.05)
    rows = stored(settings.database, "SELECT provider_message_id FROM messages ORDER BY id")
    assert all(r[0] for r in rows)  # so that their delivery reports match
    assert ledger_mismatches(settings.database) == []


async def test_a_lock_held_elsewhere_while_the_provider_answers(
    make_client: ClientFactory, provider: FakeProvider, settings: Settings
) -> None:
    client = await make_client(database_busy_timeout=0.3)
    await create_team(client, "payments")
    provider.delay = 0.5
    sending = asyncio.ensure_future(post(client, "k3"))
    while not provider.calls:  # the provider has the send
        await asyncio.sleep(0.01)
    other = sqlite3.connect(settings.database, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # another process holds the write lock past the timeout
    try:
        first = await sending
        answer = await first.json()
        assert first.status == 504, answer  # not 503: the SMS went out
        assert answer["code"] == "provider_timeout"
        retry = await post(client, "k3")  # still locked: nothing can be looked up or changed
        assert retry.status in (409, 503) and len(provider.calls) == 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    async with asyncio.timeout(10):
        while stored(settings.database, "SELECT 1 FROM messages WHERE status != 'sent'"):
            await asyncio.sleep(0.05)
    replay = await post(client, "k3")
    assert replay.status == 504 and replay.headers["Idempotent-Replayed"] == "true"
    assert len(provider.calls) == 1
    message = (await replay.json())["messages"][0]
    looked_up = await client.get(f"/messages/{message['id']}", headers=SEND)
    found = await looked_up.json()
    assert found["status"] == "sent" and found["provider_message_id"]
    assert ledger_mismatches(settings.database) == []


async def test_a_webhook_whose_attempt_cannot_be_recorded_is_not_sent_again_and_again(
    make_client: ClientFactory, receiver: Receiver, settings: Settings
) -> None:
    client = await make_client()
    await create_team(client, "payments", callback_url=receiver.url)
    with sqlite3.connect(settings.database) as conn:  # recording an attempt fails
        conn.execute(
            "CREATE TRIGGER refuse_record BEFORE UPDATE OF attempts ON webhooks"
            " BEGIN SELECT RAISE(ABORT, 'injected failure'); END"
        )
    resp = await post(client, "k4", {"to": "0788000013", "text": "x"})  # a message.failed hook
    assert resp.status == 201
    await receiver.wait_for(1)
    await asyncio.sleep(2.0)
    assert len(receiver.received) == 1  # the claim holds it: no tight loop against the receiver
    with sqlite3.connect(settings.database) as conn:
        conn.execute("DROP TRIGGER refuse_record")
    async with asyncio.timeout(15):  # the worker's retried write goes in
        while stored(settings.database, "SELECT status FROM webhooks") != [("delivered",)]:
            await asyncio.sleep(0.1)
    assert len(receiver.received) == 1
