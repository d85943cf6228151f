"""Queued and scheduled sends through the real app: the dispatcher, its pace, retries, expiry,
cancellation, and what the queue shows; against a real fake provider that refuses and fails."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.platform.clock import iso

from .conftest import (
    ClientFactory,
    FakeProvider,
    FixedClock,
    Receiver,
    auth,
    create_team,
    free_port,
    ledger_mismatches,
    mint,
    problem,
    query,
)

pytestmark = pytest.mark.both_databases  # every test here runs on SQLite and PostgreSQL

Client = TestClient[web.Request, web.Application]
SEND = auth(mint("payments", "messages:send messages:read"))


async def send(client: Client, to: Any, text: str = "Term results are out", **fields: Any) -> Any:
    return await client.post("/messages", json={"to": to, "text": text, **fields}, headers=SEND)


async def message(client: Client, message_id: str) -> dict[str, Any]:
    resp = await client.get(f"/messages/{message_id}", headers=SEND)
    assert resp.status == 200
    body: dict[str, Any] = await resp.json()
    return body


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 15.0) -> None:
    """Until `check()` holds (the dispatcher works in the background)."""
    async with asyncio.timeout(within):
        while not await check():
            await asyncio.sleep(0.05)


async def statuses(client: Client, ids: list[str]) -> list[str]:
    return [(await message(client, i))["status"] for i in ids]


async def all_in(client: Client, ids: list[str], wanted: set[str]) -> bool:
    return set(await statuses(client, ids)) <= wanted


def sent_recipients(provider: FakeProvider) -> Counter[str]:
    return Counter(r for call in provider.calls for r in call["recipients"].split(","))


async def usage(client: Client) -> dict[str, Any]:
    resp = await client.get("/usage", headers=SEND)
    body: dict[str, Any] = await resp.json()
    return body


async def test_queued_send_is_accepted_then_sent_once(
    client: Client, provider: FakeProvider, database: str
) -> None:
    resp = await send(client, ["0788000001", "0788000002"], queue=True, reference="term-3")
    body = await resp.json()
    assert resp.status == 202, body
    assert [m["status"] for m in body["messages"]] == ["queued", "queued"]
    assert body["total_cost"] == 150 and body["currency"] == "RWF"
    ids = [m["id"] for m in body["messages"]]
    await eventually(lambda: all_in(client, ids, {"sent"}))
    assert sent_recipients(provider) == {"250788000001": 1, "250788000002": 1}
    assert len(provider.calls) == 1  # one batch, one provider-sized call
    assert provider.calls[0]["dlrurl"].startswith(
        str(client.make_url("/dlr/" + body["batch_id"] + "."))
    )
    stored = await message(client, ids[0])
    assert [e["status"] for e in stored["events"]] == ["queued", "sending", "sent"]
    assert stored["cost"] == 75 and stored["provider_message_id"] and stored["error"] is None
    assert (await usage(client))["day"]["used"] == 2
    assert ledger_mismatches(database) == []


async def test_queue_is_split_into_provider_sized_calls(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client(provider_batch_size=2)
    await create_team(client, "payments")
    body = await (await send(client, [f"07880000{i:02d}" for i in range(5)], queue=True)).json()
    ids = [m["id"] for m in body["messages"]]
    await eventually(lambda: all_in(client, ids, {"sent"}))
    assert sorted(len(c["recipients"].split(",")) for c in provider.calls) == [1, 2, 2]
    assert set(sent_recipients(provider).values()) == {1}


async def test_scheduled_send_waits_for_send_at(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    # Due times are the database's clock (SPEC section 7, "One clock"), not the app's: a real
    # send_at a few seconds ahead, in another offset.
    client = await make_client()
    await create_team(client, "payments")
    due = datetime.now(UTC) + timedelta(seconds=3)
    send_at = due.astimezone(timezone(timedelta(hours=2))).isoformat()
    resp = await send(client, "0788000001", send_at=send_at)
    body = await resp.json()
    assert resp.status == 202, body
    (queued,) = body["messages"]
    assert queued["status"] == "scheduled"
    reserved = await usage(client)
    assert (reserved["day"]["used"], reserved["day"]["reserved"]) == (1, 1)
    assert reserved["month"]["reserved_cost"] == 75
    await asyncio.sleep(1.5)  # more than one look at the queue
    assert provider.calls == [] and (await message(client, queued["id"]))["status"] == "scheduled"
    await eventually(lambda: all_in(client, [queued["id"]], {"sent"}))
    assert len(provider.calls) == 1 and datetime.now(UTC) >= due
    after = await usage(client)
    assert (after["day"]["used"], after["day"]["reserved"]) == (1, 0)
    assert ledger_mismatches(database) == []


async def test_scheduled_messages_do_not_hold_up_due_ones(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    clock = FixedClock(datetime(2026, 11, 26, 8, 0, tzinfo=UTC))
    client = await make_client(clock=clock)
    await create_team(client, "payments")
    for i in range(3):
        later = await send(client, f"078800010{i}", send_at="2026-12-20T08:00:00Z")
        assert later.status == 202
    now = await (await send(client, "0788000200", queue=True)).json()
    await eventually(lambda: all_in(client, [now["messages"][0]["id"]], {"sent"}))
    assert list(sent_recipients(provider)) == ["250788000200"]


async def test_queue_fields_are_validated_together(client: Client, database: str) -> None:
    now = datetime.now(UTC)
    resp = await send(
        client,
        ["0788000001", "12"],
        queue="yes",
        send_at="2026-11-26 08:00",
        validity_period=0,
    )
    body = await problem(resp, 422, "invalid_recipient")
    fields = {e["field"] for e in body["errors"]}
    assert {"to[1]", "queue", "send_at", "validity_period"} <= fields
    for fields_, field in (
        ({"send_at": iso(now - timedelta(hours=1))}, "send_at"),
        ({"send_at": iso(now + timedelta(days=36))}, "send_at"),
        ({"send_at": "2026-12-01T08:00:00"}, "send_at"),  # no offset
        ({"queue": True, "validity_period": 86401}, "validity_period"),
        ({"validity_period": 60}, "validity_period"),  # only for queued sends
        ({"queue": False, "send_at": iso(now + timedelta(hours=1))}, "queue"),
        ({"queue": 1}, "queue"),
    ):
        body = await problem(await send(client, "0788000001", **fields_), 422, "validation_error")
        assert [e["field"] for e in body["errors"]] == [field], fields_
    assert query(database, "SELECT COUNT(*) FROM messages") == [(0,)]


async def test_over_quota_queued_send_is_refused_at_once(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments", daily_limit=2)
    assert (await send(client, ["0788000001", "0788000002"], queue=True)).status == 202
    resp = await send(client, "0788000003", send_at=iso(datetime.now(UTC) + timedelta(hours=1)))
    body = await problem(resp, 429, "quota_exceeded")
    assert body["remaining"] == 0 and resp.headers["Retry-After"]
    assert query(database, "SELECT COUNT(*) FROM messages") == [(2,)]


async def test_provider_refusing_keeps_messages_queued_until_it_is_back(
    client: Client, provider: FakeProvider, database: str
) -> None:
    provider.mode = "http429"
    body = await (await send(client, ["0788000001", "0788000002"], queue=True)).json()
    ids = [m["id"] for m in body["messages"]]

    # (the fake provider records a call as it arrives, before its 429 is answered and the
    # dispatcher puts the batch back: wait for the message to be back in the queue)
    async def put_back() -> bool:
        found = await message(client, ids[0])
        return bool(provider.calls) and found["status"] == "queued" and found["error"] is not None

    await eventually(put_back)
    waiting = await message(client, ids[0])
    assert waiting["status"] == "queued"
    assert waiting["error"]["code"] == "provider_unavailable"
    assert [e["status"] for e in waiting["events"]] == ["queued"]
    refused_calls = len(provider.calls)
    provider.mode = "success"
    await eventually(lambda: all_in(client, ids, {"sent"}), within=30)
    assert len(provider.calls) == refused_calls + 1  # once more, when it was back
    (stored,) = [m for m in [await message(client, ids[0])]]
    assert stored["error"] is None
    assert [e["status"] for e in stored["events"]] == ["queued", "sending", "sent"]
    assert ledger_mismatches(database) == []


async def test_connection_refused_is_retried_when_the_provider_comes_up(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    port = free_port()
    client = await make_client(provider_url=f"http://127.0.0.1:{port}/api/v2/sms/send")
    await create_team(client, "payments")
    body = await (await send(client, "0788000001", queue=True)).json()
    message_id = body["messages"][0]["id"]

    async def refused_once() -> bool:
        error = (await message(client, message_id))["error"]
        return error is not None and error["code"] == "provider_unavailable"

    await eventually(refused_once)
    app = web.Application()
    app.router.add_post("/api/v2/sms/send", provider.handle)
    server = TestServer(app, host="127.0.0.1", port=port)
    await server.start_server()
    try:
        await eventually(lambda: all_in(client, [message_id], {"sent"}), within=30)
    finally:
        await server.close()
    assert sent_recipients(provider) == {"250788000001": 1}
    assert ledger_mismatches(database) == []


@pytest.mark.parametrize("mode", ["http500", "html", "drop"])
async def test_a_call_the_provider_may_have_taken_is_not_retried(
    client: Client, provider: FakeProvider, database: str, mode: str
) -> None:
    provider.mode = mode
    body = await (await send(client, ["0788000001", "0788000002"], queue=True)).json()
    ids = [m["id"] for m in body["messages"]]
    await eventually(lambda: all_in(client, ids, {"unknown"}))
    await asyncio.sleep(1.5)  # the dispatcher looked again, and left them alone
    assert len(provider.calls) == 1
    assert await statuses(client, ids) == ["unknown", "unknown"]
    assert (await usage(client))["day"]["used"] == 2  # stays charged, as a direct send's
    assert ledger_mismatches(database) == []


async def test_provider_refusing_the_call_fails_it_refunded(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments", callback_url=receiver.url)
    provider.mode = "error"  # its own "status": "error" with HTTP 200: a refusal, not busy
    body = await (await send(client, "0788000001", queue=True)).json()
    message_id = body["messages"][0]["id"]
    await eventually(lambda: all_in(client, [message_id], {"failed"}))
    assert len(provider.calls) == 1
    assert (await message(client, message_id))["error"]["code"] == "provider_error"
    assert (await usage(client))["day"]["used"] == 0
    await receiver.wait_for(1)
    hook = json.loads(receiver.received[0][1])
    assert hook["type"] == "message.failed"
    assert [e["status"] for e in hook["data"]["events"]] == ["queued", "sending", "failed"]
    assert ledger_mismatches(database) == []


async def test_validity_expiry_refunds_and_fires_the_webhook(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments", callback_url=receiver.url)
    provider.mode = "http503"
    body = await (await send(client, "0788000001", queue=True, validity_period=2)).json()
    message_id = body["messages"][0]["id"]
    await eventually(lambda: all_in(client, [message_id], {"expired"}))
    expired = await message(client, message_id)
    assert expired["cost"] == 0 and expired["error"]["code"] == "expired"
    assert expired["completed_at"] and expired["events"][-1]["status"] == "expired"
    assert (await usage(client))["day"]["used"] == 0
    await receiver.wait_for(1)
    hook = json.loads(receiver.received[0][1])
    assert hook["type"] == "message.expired" and hook["data"]["id"] == message_id
    assert receiver.received[0][0]["webhook-id"]
    assert ledger_mismatches(database) == []


async def test_cancel_a_message_and_a_batch(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver, database: str
) -> None:
    client = await make_client()
    await create_team(client, "payments", callback_url=receiver.url)
    await create_team(client, "alerts")
    later = iso(datetime.now(UTC) + timedelta(hours=3))
    body = await (
        await send(client, ["0788000001", "0788000002", "0788000003"], send_at=later)
    ).json()
    first, *rest = [m["id"] for m in body["messages"]]

    resp = await client.post(f"/messages/{first}/cancel", headers=SEND)
    canceled = await resp.json()
    assert resp.status == 200, canceled
    assert canceled["status"] == "canceled" and canceled["cost"] == 0
    assert canceled["error"]["code"] == "canceled"
    assert (await usage(client))["day"]["reserved"] == 2
    await problem(
        await client.post(f"/messages/{first}/cancel", headers=SEND), 409, "not_cancelable"
    )
    other = auth(mint("alerts", "messages:send"))
    await problem(
        await client.post(f"/messages/{rest[0]}/cancel", headers=other), 404, "message_not_found"
    )
    await problem(
        await client.post(f"/batches/{body['batch_id']}/cancel", headers=other),
        404,
        "batch_not_found",
    )
    read_only = auth(mint("payments", "messages:read"))
    resp = await client.post(f"/messages/{rest[0]}/cancel", headers=read_only)
    assert resp.status == 403

    resp = await client.post(f"/batches/{body['batch_id']}/cancel", headers=SEND)
    batch = await resp.json()
    assert resp.status == 200, batch
    assert batch["canceled"] == 2 and batch["total_cost"] == 0
    assert [m["status"] for m in batch["messages"]] == ["canceled"] * 3
    await problem(
        await client.post(f"/batches/{body['batch_id']}/cancel", headers=SEND),
        409,
        "not_cancelable",
    )
    assert (await usage(client))["day"]["used"] == 0
    await receiver.wait_for(3)
    assert {json.loads(b)["type"] for _, b in receiver.received} == {"message.canceled"}
    assert provider.calls == []
    assert ledger_mismatches(database) == []


async def test_a_sent_message_cannot_be_canceled(client: Client, provider: FakeProvider) -> None:
    direct = await (await send(client, "0788000001")).json()
    message_id = direct["messages"][0]["id"]
    body = await problem(
        await client.post(f"/messages/{message_id}/cancel", headers=SEND), 409, "not_cancelable"
    )
    assert body["message_status"] == "sent"
    await problem(
        await client.post(f"/batches/{direct['batch_id']}/cancel", headers=SEND),
        409,
        "not_cancelable",
    )
    await problem(
        await client.post("/messages/msg_nope/cancel", headers=SEND), 404, "message_not_found"
    )


async def test_pace_holds_the_provider_rate(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    rate = 8
    client = await make_client(provider_max_rate=rate)
    await create_team(client, "payments")
    ids = []
    for i in range(20):  # 20 batches: 20 provider calls
        body = await (await send(client, f"078800{i:02d}00", queue=True)).json()
        ids.append(body["messages"][0]["id"])
    # (waiting on the provider, not polling the gateway: the test shares its event loop)
    await eventually(lambda: asyncio.sleep(0.2, len(provider.times) >= 20), within=30)
    await eventually(lambda: all_in(client, ids, {"sent"}))
    times = sorted(provider.times)
    assert len(times) == 20
    most_in_a_second = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    assert most_in_a_second <= rate
    assert times[-1] - times[0] >= (20 - 1) / rate * 0.95  # paced, not bursty


async def test_direct_sends_do_not_wait_behind_the_queue(
    make_client: ClientFactory, provider: FakeProvider, database: str
) -> None:
    client = await make_client(provider_max_rate=2)
    await create_team(client, "payments")
    for i in range(10):
        assert (await send(client, f"07880004{i:02d}", queue=True)).status == 202
    direct = await send(client, "0788000500")
    assert direct.status == 201
    assert (await direct.json())["messages"][0]["status"] == "sent"
    waiting = query(
        database, "SELECT COUNT(*) FROM messages WHERE status IN ('queued', 'scheduled')"
    )
    assert waiting[0][0] >= 5  # the queue drains at 2 calls a second; the direct send did not wait


async def test_idempotent_queued_send_replays_its_202(
    client: Client, provider: FakeProvider, database: str
) -> None:
    headers = {**SEND, "Idempotency-Key": "term-results-1"}
    body = {"to": "0788000001", "text": "hello", "queue": True}
    first = await client.post("/messages", json=body, headers=headers)
    assert first.status == 202
    again = await client.post("/messages", json=body, headers=headers)
    assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    message_id = (await first.json())["messages"][0]["id"]
    await eventually(lambda: all_in(client, [message_id], {"sent"}))
    assert query(database, "SELECT COUNT(*) FROM messages") == [(1,)]
    assert len(provider.calls) == 1


async def test_queue_shows_in_metrics_and_list(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    provider.mode = "http429"  # once due, the provider refuses: they wait on, `queued`
    due = datetime.now(UTC) + timedelta(seconds=2)
    await send(client, ["0788000001", "0788000002"], send_at=due.isoformat())
    resp = await client.get("/messages?status=scheduled", headers=SEND)
    assert [m["status"] for m in (await resp.json())["data"]] == ["scheduled", "scheduled"]
    text = await (await client.get("/metrics")).text()
    assert 'gateway_queue_depth{status="scheduled"} 2.0' in text
    assert 'gateway_queue_depth{status="queued"} 0.0' in text
    assert "gateway_queue_oldest_due_age_seconds 0.0" in text
    await eventually(lambda: asyncio.sleep(0, bool(provider.calls)))
    await asyncio.sleep(1.0)
    for _ in range(50):  # (a scrape while the dispatcher tries them again sees them sending)
        text = await (await client.get("/metrics")).text()
        if 'gateway_queue_depth{status="queued"} 2.0' in text:
            break
        await asyncio.sleep(0.05)
    assert 'gateway_queue_depth{status="queued"} 2.0' in text
    age = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("gateway_queue_oldest_due_age_seconds ")
    )
    assert age >= (datetime.now(UTC) - due).total_seconds() - 0.5 >= 0.5  # by the database
    retries = next(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("gateway_queue_retries_total ")
    )
    assert retries >= 1
