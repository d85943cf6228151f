"""Usage alerts (SPEC 8): the reservation that first carries a team's use across a threshold
queues one signed `usage.threshold_reached` to the team and to the operator; a refusal for a
limit queues one `usage.limit_reached` a period; a refund does not re-arm either; exactly once
across replicas and concurrent sends."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from standardwebhooks.webhooks import Webhook

from gateway.platform.settings import ConfigError, Settings
from gateway.store import make_store
from gateway.store import teams as store_teams

from .conftest import (
    ClientFactory,
    FakeProvider,
    Receiver,
    at_schema,
    auth,
    create_team,
    mint,
    problem,
    query,
    query_write,
    running_receiver,
)
from .test_replicas import two_replicas

pytestmark = pytest.mark.both_databases

Client = TestClient[web.Request, web.Application]
OPERATOR_SECRET = "whsec_" + base64.b64encode(os.urandom(32)).decode()
ADMIN = auth(mint("root", "admin"))
SEND = auth(mint("payments"))


@pytest.fixture
async def operator() -> AsyncIterator[Receiver]:
    """The operator's alert endpoint (GATEWAY_OPERATOR_WEBHOOK_URL)."""
    async with running_receiver() as state:
        yield state


def alerts_at(receiver: Receiver, secret: str) -> list[dict[str, Any]]:
    """The alerts a receiver got, each checked against its Standard Webhooks signature."""
    out = []
    for headers, body in receiver.received:
        event = json.loads(body)
        if not event["type"].startswith("usage."):
            continue
        Webhook(secret).verify(body, headers)  # raises if the signature does not hold
        out.append(event)
    return out


def figures(event: dict[str, Any]) -> tuple[Any, ...]:
    data = event["data"]
    return (event["type"], data["limit_kind"], data["threshold"], data["limit"], data["used"])


async def send(client: Client, n: int = 1) -> int:
    to = [f"07880{i:05d}" for i in range(n)]
    resp = await client.post("/messages", json={"to": to, "text": "one segment"}, headers=SEND)
    return resp.status


async def test_thresholds_and_the_limit_fire_once_each_to_team_and_operator(
    make_client: ClientFactory, receiver: Receiver, operator: Receiver, database: str
) -> None:
    client = await make_client(
        operator_webhook_url=operator.url, operator_webhook_secret=OPERATOR_SECRET
    )
    team = await create_team(
        client, "payments", daily_limit=10, monthly_limit=1000, callback_url=receiver.url
    )
    for _ in range(7):
        assert await send(client) == 201
    assert query(database, "SELECT COUNT(*) FROM usage_alerts") == [(0,)]
    assert await send(client) == 201  # 8 of 10: 80 %
    assert await send(client, 2) == 201  # 10 of 10: 100 %
    for _ in range(3):
        resp = await client.post("/messages", json={"to": "0788000001", "text": "x"}, headers=SEND)
        await problem(resp, 429, "quota_exceeded")
    await receiver.wait_for(3, timeout=15)
    await operator.wait_for(3, timeout=15)
    await asyncio.sleep(0.3)  # nothing more comes
    expected = [
        ("usage.threshold_reached", "daily", 80, 10, 8),
        ("usage.threshold_reached", "daily", 100, 10, 10),
        ("usage.limit_reached", "daily", 100, 10, 10),
    ]
    at_team = alerts_at(receiver, team["webhook_secret"])
    at_operator = alerts_at(operator, OPERATOR_SECRET)
    assert sorted(map(figures, at_team)) == sorted(expected)
    assert sorted(map(figures, at_operator)) == sorted(expected)
    assert {e["data"]["team"] for e in at_team} == {"payments"}
    [day] = {e["data"]["period"] for e in at_team}
    assert len(day) == 10  # YYYY-MM-DD: the team's day in GATEWAY_TIMEZONE
    # the operator's copies are signed with the operator's secret, not the team's
    with pytest.raises(Exception):  # noqa: B017 - any verification error
        Webhook(team["webhook_secret"]).verify(operator.received[0][1], operator.received[0][0])
    page = await (await client.get("/admin/webhooks", headers=ADMIN)).json()
    alert_hooks = [h for h in page["data"] if h["type"].startswith("usage.")]
    assert len(alert_hooks) == 6 and {h["message_id"] for h in alert_hooks} == {None}


async def test_one_send_across_several_thresholds_fires_each_with_the_budget(
    make_client: ClientFactory, receiver: Receiver
) -> None:
    client = await make_client()
    team = await create_team(
        client,
        "payments",
        daily_limit=10,
        monthly_budget=10 * 75,
        alert_thresholds=[50, 80, 100],
        callback_url=receiver.url,
    )
    assert await send(client, 10) == 201
    await receiver.wait_for(6, timeout=15)
    got = sorted(map(figures, alerts_at(receiver, team["webhook_secret"])))
    assert got == sorted(
        [("usage.threshold_reached", "daily", t, 10, 10) for t in (50, 80, 100)]
        + [("usage.threshold_reached", "budget", t, 750, 750) for t in (50, 80, 100)]
    )
    budget = [
        e
        for e in alerts_at(receiver, team["webhook_secret"])
        if e["data"]["limit_kind"] == "budget"
    ]
    assert {len(e["data"]["period"]) for e in budget} == {7}  # YYYY-MM


async def test_a_refund_does_not_re_arm_a_threshold(
    make_client: ClientFactory, receiver: Receiver, provider: FakeProvider, database: str
) -> None:
    client = await make_client()
    team = await create_team(client, "payments", daily_limit=10, callback_url=receiver.url)
    for _ in range(7):
        assert await send(client) == 201
    provider.mode = "error"  # the crossing send fails at the provider: refunded
    assert await send(client) != 201
    assert query(database, "SELECT segments FROM usage WHERE length(period) = 10") == [(7,)]
    provider.mode = "success"
    assert await send(client) == 201  # 8 of 10 again
    await receiver.wait_for(2, timeout=15)  # the failed message's webhook, and the alert
    await asyncio.sleep(0.5)
    eighty = [
        e for e in alerts_at(receiver, team["webhook_secret"]) if e["data"]["threshold"] == 80
    ]
    assert len(eighty) == 1
    assert query(database, "SELECT COUNT(*) FROM usage_alerts") == [(1,)]


async def test_thresholds_are_a_team_field(make_client: ClientFactory) -> None:
    client = await make_client()
    created = await create_team(client, "payments")
    assert created["alert_thresholds"] == [80, 100]
    for bad in ([0], [101], [80, 80], "80", [True], [50.5], list(range(1, 12)), None):
        resp = await client.patch(
            "/admin/teams/payments", json={"alert_thresholds": bad}, headers=ADMIN
        )
        await problem(resp, 422, "validation_error")
    resp = await client.patch(
        "/admin/teams/payments", json={"alert_thresholds": [100, 25]}, headers=ADMIN
    )
    assert (await resp.json())["alert_thresholds"] == [25, 100]
    resp = await client.patch("/admin/teams/payments", json={"alert_thresholds": []}, headers=ADMIN)
    assert (await resp.json())["alert_thresholds"] == []


def test_an_operator_url_needs_its_secret() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_OPERATOR_WEBHOOK_SECRET"):
        Settings(database=":memory:", operator_webhook_url="http://127.0.0.1:9/hooks").validate()
    with pytest.raises(ConfigError, match="GATEWAY_OPERATOR_WEBHOOK_SECRET"):
        Settings(
            database=":memory:",
            operator_webhook_url="http://127.0.0.1:9/hooks",
            operator_webhook_secret="whsec_short",
        ).validate()


async def test_a_thousand_concurrent_sends_on_two_replicas_fire_each_alert_once(
    database: str, provider: FakeProvider, receiver: Receiver, operator: Receiver
) -> None:
    env = {"operator_webhook_url": operator.url, "operator_webhook_secret": OPERATOR_SECRET}
    provider.failed_suffix = "none"  # every send delivered: none refunded
    connector = aiohttp.TCPConnector(limit=64)
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        two_replicas(database, provider, **env) as (a, b, _),
    ):
        async with http.post(
            f"{a}/admin/teams",
            json={"id": "payments", "daily_limit": 500, "callback_url": receiver.url},
            headers=ADMIN,
        ) as resp:
            secret = (await resp.json())["webhook_secret"]

        async def one(i: int) -> int:
            body = {"to": f"07881{i:05d}", "text": "one segment"}
            async with http.post(f"{(a, b)[i % 2]}/messages", json=body, headers=SEND) as resp:
                return resp.status

        statuses = Counter(await asyncio.gather(*(one(i) for i in range(1000))))
        assert statuses == {201: 500, 429: 500}
        await receiver.wait_for(3, timeout=20)
        await operator.wait_for(3, timeout=20)
        await asyncio.sleep(1.0)  # and no more
    expected = sorted(
        [
            ("usage.threshold_reached", "daily", 80, 500, 400),
            ("usage.threshold_reached", "daily", 100, 500, 500),
            ("usage.limit_reached", "daily", 100, 500, 500),
        ]
    )
    assert sorted(map(figures, alerts_at(receiver, secret))) == expected
    assert sorted(map(figures, alerts_at(operator, OPERATOR_SECRET))) == expected
    assert len(receiver.received) == 3 and len(operator.received) == 3


async def test_the_upgrade_keeps_every_webhook_and_arms_the_default_thresholds(
    database: str,
) -> None:
    await at_schema(database, 14)
    inserts = [
        "INSERT INTO teams (id, name, webhook_secret, created_at, daily_limit)"
        " VALUES ('t', 'T', 'whsec_x', '2026-12-01T00:00:00.000Z', 10)",
        "INSERT INTO messages (id, batch_id, team_id, recipient, text, status, segments,"
        " encoding, charged_segments, cost, day, month, created_at, events)"
        " VALUES ('msg_1', 'bat_1', 't', '250788000001', 'x', 'delivered', 1, 'gsm7', 1, 75,"
        " '2026-12-01', '2026-12', '2026-12-01T00:00:00.000Z', '[]')",
        "INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status, attempts,"
        " next_attempt_at, created_at, kind, trace) VALUES ('whk_1', 'msg_1', 't',"
        " 'message.delivered', 'http://x/h', '{\"a\":1}', 'pending', 2,"
        " '2026-12-01T00:00:05.000Z', '2026-12-01T00:00:00.000Z', 'webhook', 'tp')",
    ]
    for sql in inserts:
        query_write(database, sql)
    store = make_store(database)
    await store.open()
    try:
        team = await store_teams.get_team(store, "t")
        assert team.alert_thresholds == (80, 100)
        rows = await store.fetchall("SELECT * FROM webhooks")
        assert [
            (r["id"], r["message_id"], r["status"], r["attempts"], r["payload"], r["trace"])
            for r in rows
        ] == [("whk_1", "msg_1", "pending", 2, '{"a":1}', "tp")]
        await store.run(  # an alert's webhook needs no message now
            "INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,"
            " created_at) VALUES ('whk_2', NULL, 't', 'usage.limit_reached', 'http://x', '{}',"
            " 'pending', 'x')"
        )
    finally:
        await store.close()
