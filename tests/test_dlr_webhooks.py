"""Delivery reports from the provider, and signed webhooks to the teams' receivers."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from .conftest import (
    PASSWORD,
    USERNAME,
    ClientFactory,
    FakeProvider,
    Receiver,
    auth,
    create_team,
    mint,
    problem,
)
from .conftest import query as read

pytestmark = pytest.mark.both_databases  # every test here runs on SQLite and PostgreSQL

Client = TestClient[web.Request, web.Application]
SEND = auth(mint("payments"))
ADMIN = auth(mint("root", "admin"))
FAST = (0.0, 0.05, 0.05)


async def gateway(
    make_client: ClientFactory, receiver: Receiver | None = None, **changes: Any
) -> tuple[Client, str]:
    """A gateway with team `payments` (callback to the receiver); returns it and the secret."""
    client = await make_client(webhook_retry_schedule=changes.pop("schedule", FAST), **changes)
    team = await create_team(client, "payments", callback_url=receiver.url if receiver else None)
    return client, team["webhook_secret"]


async def send(client: Client, to: Any, **extra: Any) -> dict[str, Any]:
    resp = await client.post("/messages", json={"to": to, "text": "hello", **extra}, headers=SEND)
    body: dict[str, Any] = await resp.json()
    assert resp.status == 201, body
    return body


async def message(client: Client, message_id: str) -> dict[str, Any]:
    body: dict[str, Any] = await (await client.get(f"/messages/{message_id}", headers=SEND)).json()
    return body


async def until(check: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.02)


def verified(secret: str, delivery: tuple[dict[str, str], bytes]) -> dict[str, Any]:
    """Verify a delivery with the Standard Webhooks reference library; return the payload."""
    headers, body = delivery
    payload: dict[str, Any] = Webhook(secret).verify(body, headers)
    return payload


async def test_delivered_report_moves_the_message_and_fires_a_signed_webhook(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client, secret = await gateway(make_client, receiver)
    provider.dlr = "after"
    sent = await send(client, ["0788000001", "0788000099"])
    await receiver.wait_for(2)
    await provider.settle_reports()
    assert provider.reports == [200, 200]
    payloads = sorted(
        (verified(secret, d) for d in receiver.received), key=lambda p: str(p["data"]["to"])
    )
    assert [p["type"] for p in payloads] == ["message.delivered", "message.undelivered"]
    for payload, original in zip(payloads, sent["messages"], strict=True):
        assert payload["data"]["id"] == original["id"]
        assert payload["timestamp"] == payload["data"]["completed_at"]
        stored = await message(client, original["id"])
        assert stored == payload["data"]
        assert [e["status"] for e in stored["events"]] == [
            "sending",
            "sent",
            payload["data"]["status"],
        ]
    for headers, _ in receiver.received:
        assert headers["webhook-id"].startswith("whk_")
        assert headers["webhook-signature"].startswith("v1,")
    with pytest.raises(WebhookVerificationError):
        Webhook("whsec_" + "A" * 44).verify(receiver.received[0][1], receiver.received[0][0])


async def test_failed_recipient_fires_message_failed(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client, secret = await gateway(make_client, receiver)
    sent = await send(client, ["0788000013"])
    await receiver.wait_for(1)
    payload = verified(secret, receiver.received[0])
    assert payload["type"] == "message.failed"
    assert payload["data"]["id"] == sent["messages"][0]["id"]
    assert payload["data"]["error"]["code"] == "provider_rejected"


async def test_message_callback_url_wins_and_no_url_means_no_webhook(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client, _ = await gateway(make_client)  # the team has no callback URL
    provider.dlr = "after"
    await send(client, "0788000001")
    await provider.settle_reports()
    hooks = await (await client.get("/admin/webhooks", headers=ADMIN)).json()
    assert hooks["data"] == []
    await send(client, "0788000002", callback_url=receiver.url)
    await receiver.wait_for(1)
    hooks = await (await client.get("/admin/webhooks", headers=ADMIN)).json()
    assert [h["url"] for h in hooks["data"]] == [receiver.url]


async def test_repeated_report_changes_nothing(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client, _ = await gateway(make_client, receiver)
    sent = await send(client, "0788000001")
    [call] = provider.calls
    provider_id = sent["messages"][0]["provider_message_id"]
    assert await provider.report(call["dlrurl"], "250788000001", provider_id) == 200
    await receiver.wait_for(1)
    before = await message(client, sent["messages"][0]["id"])
    assert await provider.report(call["dlrurl"], "250788000001", provider_id) == 200
    provider.dlr_password = PASSWORD
    await asyncio.sleep(0.2)
    assert len(receiver.received) == 1
    assert await message(client, sent["messages"][0]["id"]) == before


async def test_report_before_the_send_answer_is_applied(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client, secret = await gateway(make_client, receiver)
    provider.dlr = "before"  # the provider reports before it answers the send
    sent = await send(client, "0788000001")
    assert provider.reports == [200]
    stored = await message(client, sent["messages"][0]["id"])
    assert stored["status"] == "delivered"
    await receiver.wait_for(1)
    assert verified(secret, receiver.received[0])["type"] == "message.delivered"


async def test_report_for_an_unknown_message_is_kept_for_admins(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    client, _ = await gateway(make_client)
    await send(client, "0788000001")
    dlrurl = provider.calls[0]["dlrurl"]
    assert await provider.report(dlrurl, "250788000555", "no-such-id") == 200
    pending = await (await client.get("/admin/dlr-reports?status=pending", headers=ADMIN)).json()
    [report] = pending["data"]
    assert (report["provider_message_id"], report["recipient"], report["outcome"]) == (
        "no-such-id",
        "250788000555",
        "pending",
    )


async def test_bad_reports(make_client: ClientFactory, provider: FakeProvider) -> None:
    client, _ = await gateway(make_client)
    sent = await send(client, "0788000001")
    parts = urlsplit(provider.calls[0]["dlrurl"])
    good = {
        "dnis": "250788000001",
        "username": USERNAME,
        "password": PASSWORD,
        "command": "deliver",
        "dlvrMsgId": sent["messages"][0]["provider_message_id"],
        "dlvrMsgStat": "D",
    }
    path = parts.path
    forged = path[: path.rindex(".") + 1] + "A" * 32
    await problem(await client.get(forged, params=good), 403, "invalid_dlr_token")
    other_batch = "/dlr/bat_01ABCDEFGHJKMNPQRSTVWXYZ01." + path.rsplit(".", 1)[1]
    await problem(await client.get(other_batch, params=good), 403, "invalid_dlr_token")
    await problem(
        await client.get(path, params={**good, "password": "guess"}), 403, "invalid_credentials"
    )
    await problem(
        await client.get(path, params={**good, "username": "other"}), 403, "invalid_credentials"
    )
    for missing in ("dnis", "dlvrMsgId", "dlvrMsgStat", "command"):
        params = {k: v for k, v in good.items() if k != missing}
        body = await problem(await client.get(path, params=params), 400, "invalid_report")
        assert missing in body["detail"]
    await problem(
        await client.get(path, params={**good, "command": "submit"}), 400, "invalid_report"
    )
    await problem(
        await client.get(path, params={**good, "dlvrMsgStat": "X"}), 400, "invalid_report"
    )
    assert (await message(client, sent["messages"][0]["id"]))["status"] == "sent"
    resp = await client.post(path, data=good)  # a form body works too
    assert resp.status == 200 and await resp.text() == "OK"
    assert (await message(client, sent["messages"][0]["id"]))["status"] == "delivered"
    assert dict(parse_qsl(parts.query)) == {}  # everything the gateway needs is in the path


async def test_receiver_failing_twice_gets_the_same_webhook_id_three_times(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client, secret = await gateway(make_client, receiver)
    receiver.failures = 2
    provider.dlr = "after"
    await send(client, "0788000001")
    await receiver.wait_for(3)
    ids = {headers["webhook-id"] for headers, _ in receiver.received}
    assert len(ids) == 1
    for delivery in receiver.received:
        assert verified(secret, delivery)["type"] == "message.delivered"

    async def delivered() -> bool:
        hooks = await (await client.get("/admin/webhooks", headers=ADMIN)).json()
        return bool(hooks["data"][0]["status"] == "delivered")

    await until(delivered)
    hook = (await (await client.get("/admin/webhooks", headers=ADMIN)).json())["data"][0]
    assert hook["attempts"] == 3 and hook["delivered_at"]


async def test_exhausted_schedule_marks_failed_and_admin_can_retry(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client, secret = await gateway(make_client, receiver)
    receiver.failures = 3  # the whole schedule: three attempts
    await send(client, "0788000013")

    async def failed() -> list[dict[str, Any]]:
        body = await (await client.get("/admin/webhooks?status=failed", headers=ADMIN)).json()
        return list(body["data"])

    await until(failed)
    [hook] = await failed()
    assert hook["attempts"] == 3 and hook["last_status"] == 500
    assert "HTTP 500" in hook["last_error"]
    resp = await client.post(f"/admin/webhooks/{hook['id']}/retry", headers=ADMIN)
    assert resp.status == 202
    await receiver.wait_for(4)
    assert receiver.received[-1][0]["webhook-id"] == hook["id"]
    verified(secret, receiver.received[-1])
    await problem(
        await client.post("/admin/webhooks/whk_nope/retry", headers=ADMIN), 404, "webhook_not_found"
    )
    for query in ("status=lost", "limit=%C2%B2", "limit=0", "cursor=msg_1"):
        await problem(
            await client.get(f"/admin/webhooks?{query}", headers=ADMIN), 422, "invalid_parameter"
        )
    for query in ("cursor=999999999999999999999999999999", "limit=%C2%B2", "status=done"):
        await problem(
            await client.get(f"/admin/dlr-reports?{query}", headers=ADMIN),
            422,
            "invalid_parameter",
        )


async def test_rotated_secret_signs_later_attempts(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client, old = await gateway(make_client, receiver, schedule=(0.0, 0.3))
    receiver.failures = 1
    await send(client, "0788000013")
    await receiver.wait_for(1)
    rotated = await (
        await client.post("/admin/teams/payments/webhook-secret", headers=ADMIN)
    ).json()
    await receiver.wait_for(2)
    verified(old, receiver.received[0])
    verified(rotated["webhook_secret"], receiver.received[1])


async def test_password_stays_out_of_access_logs(
    make_client: ClientFactory, provider: FakeProvider, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client, _ = await gateway(make_client)
    provider.dlr = "after"
    await send(client, "0788000001")
    await provider.settle_reports()
    await client.get(
        urlsplit(provider.calls[0]["dlrurl"]).path, params={"password": PASSWORD, "username": "x"}
    )
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert any("/dlr/" in line for line in access)
    leaks = [(r.name, r.getMessage()) for r in caplog.records if PASSWORD in r.getMessage()]
    assert leaks == []


async def test_webhook_payload_is_the_message_json(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver
) -> None:
    client, _ = await gateway(make_client, receiver)
    await send(client, "0788000013", reference="order-7")
    await receiver.wait_for(1)
    headers, body = receiver.received[0]
    assert headers["Content-Type"] == "application/json"
    payload = json.loads(body)
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["data"]["reference"] == "order-7"


async def test_a_burst_of_reports_is_applied_as_one_after_another_would_be(
    make_client: ClientFactory, provider: FakeProvider, receiver: Receiver, database: str
) -> None:
    """Reports arriving together (on PostgreSQL taken in one transaction a group): each repeat
    changes nothing, the first report of a message applies and a later one is ignored, an
    unknown id waits; one webhook per message, whatever the interleaving."""
    client, secret = await gateway(make_client, receiver)
    to = [f"0788{n:06d}" for n in range(1000, 1100) if n % 100 != 13][:60]  # (13: refused)
    sent = await send(client, to)
    [call] = provider.calls
    messages = sent["messages"]
    fired: list[tuple[str, str, str]] = []
    for m in messages:
        fired += [(m["to"], m["provider_message_id"], "")] * 2  # the same report twice
    for m in messages[:20]:  # then an undelivered one for a third of them
        fired.append((m["to"], m["provider_message_id"], "U"))
    fired += [("250788000777", f"ghost-{n}", "") for n in range(5)]

    async def report(recipient: str, provider_id: str, state: str) -> int:
        params = {
            "dnis": recipient,
            "username": provider.dlr_username,
            "password": provider.dlr_password,
            "command": "deliver",
            "dlvrMsgId": provider_id,
            "dlvrMsgStat": state or "D",
        }
        async with client.session.get(call["dlrurl"], params=params) as resp:
            return resp.status

    statuses = await asyncio.gather(*(report(*f) for f in fired))
    assert set(statuses) == {200}
    await receiver.wait_for(60)
    await asyncio.sleep(0.3)  # and no more
    hooks = [verified(secret, d) for d in receiver.received]
    assert sorted(h["data"]["id"] for h in hooks) == sorted(m["id"] for m in messages)
    outcomes = dict(
        read(
            database,
            "SELECT COALESCE(outcome, 'pending'), COUNT(*) FROM dlr_reports GROUP BY 1",
        )
    )
    # each D once (its repeat is a duplicate, not stored); a U after a D: kept, ignored;
    # a U that came first wins and its D is ignored: 60 applied, 20 ignored in all
    assert outcomes == {"applied": 60, "ignored": 20, "pending": 5}
    final = dict(read(database, "SELECT status, COUNT(*) FROM messages GROUP BY 1"))
    assert sum(final.values()) == 60 and set(final) <= {"delivered", "undelivered"}
    for m in messages:
        stored = await message(client, m["id"])
        assert [e["status"] for e in stored["events"]][-1] == stored["status"]
        assert len(stored["events"]) == 3  # sending, sent, and one final state
