"""Quotas and accounting: reservation, settlement, periods, races, usage views, billing."""

from __future__ import annotations

import asyncio
import csv
import io
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from gateway.keys import STORE
from gateway.platform.clock import iso
from gateway.platform.settings import Settings

from .conftest import (
    ClientFactory,
    FakeProvider,
    FixedClock,
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
SEND = auth(mint("payments"))
ADMIN = auth(mint("root", "admin"))


async def usage(client: Client, token: dict[str, str] = SEND) -> dict[str, Any]:
    resp = await client.get("/usage", headers=token)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def send(client: Client, to: Any, text: str = "x", **headers: str) -> Any:
    return await client.post(
        "/messages", json={"to": to, "text": text}, headers={**SEND, **headers}
    )


async def test_race_on_the_daily_limit(
    make_client: ClientFactory, provider: FakeProvider, settings: Settings
) -> None:
    client = await make_client()
    await create_team(client, "payments", daily_limit=10)
    provider.delay = 0.02  # keep the sends overlapping
    provider.failed_suffix = "none"  # (0788000013 would be refused and refunded: an 11th fits)
    answers = await asyncio.gather(*(send(client, f"0788{n:06d}") for n in range(100)))
    statuses = Counter(r.status for r in answers)
    assert statuses == {201: 10, 429: 90}
    assert len(provider.calls) == 10
    day = (await usage(client))["day"]
    assert (day["used"], day["remaining"], day["limit"]) == (10, 0, 10)
    assert ledger_mismatches(settings.database) == []


async def test_race_on_the_budget(
    make_client: ClientFactory, provider: FakeProvider, settings: Settings
) -> None:
    client = await make_client()
    await create_team(client, "payments", monthly_budget=750)
    provider.delay = 0.02
    provider.failed_suffix = "none"  # every send is charged, whichever ten go first
    answers = await asyncio.gather(*(send(client, f"0788{n:06d}") for n in range(100)))
    assert Counter(r.status for r in answers) == {201: 10, 429: 90}
    refused = next(r for r in answers if r.status == 429)
    body = await problem(refused, 429, "quota_exceeded")
    assert body["quota"] == "monthly_budget" and body["limit"] == 750
    assert len(provider.calls) == 10
    month = (await usage(client))["month"]
    assert (month["cost"], month["budget_remaining"]) == (750, 0)
    assert ledger_mismatches(settings.database) == []


async def test_segments_times_recipients_count(make_client: ClientFactory) -> None:
    client = await make_client()
    await create_team(client, "payments", monthly_limit=7)
    resp = await send(
        client, ["0788000001", "0788000002", "0788000003"], "a" * 200
    )  # 3 recipients x 2 segments
    assert resp.status == 201
    body = await problem(await send(client, ["0788000004", "0788000005"]), 429, "quota_exceeded")
    assert (body["quota"], body["used"], body["remaining"], body["requested"]) == (
        "monthly_limit",
        6,
        1,
        2,
    )
    assert (await send(client, "0788000004")).status == 201
    assert (await usage(client))["month"]["used"] == 7


async def test_settlement_follows_the_provider(
    make_client: ClientFactory, provider: FakeProvider, settings: Settings
) -> None:
    client = await make_client()
    await create_team(client, "payments", monthly_budget=10_000)
    provider.cost = 60  # cheaper than the 75 estimate
    await send(client, ["0788000001", "0788000002"])
    assert (await usage(client))["month"]["cost"] == 120
    provider.charge_failed = True
    await send(client, ["0788000003", "0788000013"])  # the failed one is charged 60 too
    month = (await usage(client))["month"]
    assert (month["cost"], month["used"]) == (240, 4)
    provider.charge_failed = False
    await send(client, ["0788000004", "0788000113"])  # the failed one is refunded
    month = (await usage(client))["month"]
    assert (month["cost"], month["used"]) == (300, 5)
    assert ledger_mismatches(settings.database) == []


async def test_refunds_and_unknown_charges(
    make_client: ClientFactory, provider: FakeProvider, settings: Settings
) -> None:
    client = await make_client()
    await create_team(client, "payments", daily_limit=2)
    provider.mode = "error"
    for _ in range(3):
        await problem(await send(client, "0788000001"), 502, "provider_error")
    assert (await usage(client))["day"]["used"] == 0
    provider.mode = "html"
    await problem(await send(client, "0788000001"), 504, "provider_timeout")
    day = (await usage(client))["day"]
    assert (day["used"], day["remaining"]) == (1, 1)  # unknown outcome: stays charged
    refused = await make_client(provider_url=f"http://127.0.0.1:{free_port()}/api/v2/sms/send")
    await problem(await send(refused, "0788000001"), 503, "provider_unavailable")
    assert (await usage(client))["day"]["used"] == 1
    assert ledger_mismatches(settings.database) == []


async def test_usage_shape_and_unlimited(make_client: ClientFactory) -> None:
    at = datetime(2026, 11, 24, 8, 0, tzinfo=UTC)
    client = await make_client(clock=FixedClock(at))
    await create_team(
        client, "payments", daily_limit=1000, monthly_limit=20000, monthly_budget=500000
    )
    await create_team(client, "alerts")
    await send(client, ["0788000001", "0788000002"])
    assert await usage(client) == {
        "team": "payments",
        "timezone": "Africa/Kigali",
        "currency": "RWF",
        "day": {
            "period": "2026-11-24",
            "limit": 1000,
            "used": 2,
            "remaining": 998,
            "reserved": 0,
            "test": 0,
        },
        "month": {
            "period": "2026-11",
            "limit": 20000,
            "used": 2,
            "remaining": 19998,
            "budget": 500000,
            "cost": 150,
            "budget_remaining": 499850,
            "reserved": 0,
            "reserved_cost": 0,
            "test": 0,
        },
    }
    alerts = await usage(client, auth(mint("alerts", "messages:read")))
    assert alerts["day"] == {
        "period": "2026-11-24",
        "limit": None,
        "used": 0,
        "remaining": None,
        "reserved": 0,
        "test": 0,
    }
    assert alerts["month"]["budget_remaining"] is None and alerts["month"]["cost"] == 0
    await problem(await client.get("/usage", headers=auth(mint("ghost"))), 403, "unknown_team")


async def test_days_and_months_begin_in_kigali(
    make_client: ClientFactory, provider: FakeProvider, settings: Settings
) -> None:
    clock = FixedClock(datetime(2026, 11, 30, 21, 59, 59, 500_000, tzinfo=UTC))  # 23:59:59.5
    client = await make_client(clock=clock)
    await create_team(client, "payments", daily_limit=1, monthly_limit=1)
    assert (await send(client, "0788000001")).status == 201
    before = await usage(client)
    assert (before["day"]["period"], before["month"]["period"]) == ("2026-11-30", "2026-11")
    refused = await send(client, "0788000002")
    body = await problem(refused, 429, "quota_exceeded")
    assert body["resets_at"] == "2026-11-30T22:00:00.000Z"
    assert refused.headers["Retry-After"] == "1"
    clock.at = datetime(2026, 11, 30, 22, 0, 0, tzinfo=UTC)  # midnight, 1 December in Kigali
    after = await usage(client)
    assert (after["day"]["period"], after["month"]["period"]) == ("2026-12-01", "2026-12")
    assert (after["day"]["used"], after["month"]["used"]) == (0, 0)
    assert (await send(client, "0788000002")).status == 201
    assert ledger_mismatches(settings.database) == []
    report = await (await client.get("/admin/usage?month=2026-11", headers=ADMIN)).json()
    assert report["data"][0]["segments"] == 1


async def test_monthly_refusal_waits_for_the_next_month(make_client: ClientFactory) -> None:
    clock = FixedClock(datetime(2026, 11, 15, 10, 0, tzinfo=UTC))
    client = await make_client(clock=clock)
    await create_team(client, "payments", monthly_limit=0)
    refused = await send(client, "0788000001")
    body = await problem(refused, 429, "quota_exceeded")
    assert body["resets_at"] == "2026-11-30T22:00:00.000Z"
    assert int(refused.headers["Retry-After"]) == int(
        (datetime(2026, 11, 30, 22, tzinfo=UTC) - clock.at).total_seconds()
    )


async def test_billing_report_json_and_csv(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    clock = FixedClock(datetime(2026, 11, 10, 9, 0, tzinfo=UTC))
    client = await make_client(clock=clock)
    await create_team(client, "payments", name="Payments")
    await create_team(client, "alerts", name="Alerts")
    await create_team(client, "idle")
    await send(client, ["0788000001", "0788000002", "0788000013"], "a" * 170)  # 2 segments each
    await client.post(
        "/messages", json={"to": "0788000003", "text": "x"}, headers=auth(mint("alerts"))
    )
    clock.at = datetime(2026, 12, 2, 9, 0, tzinfo=UTC)
    await send(client, "0788000009")  # December: not in November's report
    resp = await client.get("/admin/usage?month=2026-11", headers=ADMIN)
    report = await resp.json()
    assert resp.status == 200
    assert report["month"] == "2026-11" and report["currency"] == "RWF"
    rows = {r["team"]: r for r in report["data"]}
    assert list(rows) == ["alerts", "idle", "payments"]
    assert (
        rows["payments"]["messages"],
        rows["payments"]["segments"],
        rows["payments"]["cost"],
    ) == (2, 4, 150)
    assert (rows["alerts"]["messages"], rows["alerts"]["cost"]) == (1, 75)
    assert rows["idle"]["messages"] == 0
    assert report["totals"] == {"messages": 3, "segments": 5, "cost": 225}
    resp = await client.get("/admin/usage?month=2026-11", headers={**ADMIN, "Accept": "text/csv"})
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/csv")
    parsed = list(csv.DictReader(io.StringIO(await resp.text())))
    assert [r["team"] for r in parsed] == ["alerts", "idle", "payments"]
    assert list(parsed[0]) == ["team", "messages", "segments", "cost", "currency"]
    for key in ("messages", "segments", "cost"):
        assert sum(int(r[key]) for r in parsed) == report["totals"][key]
    current = await (await client.get("/admin/usage", headers=ADMIN)).json()
    assert current["month"] == "2026-12" and current["totals"]["messages"] == 1
    for bad in ("2026-13", "2026-1", "november"):
        await problem(
            await client.get(f"/admin/usage?month={bad}", headers=ADMIN), 422, "invalid_parameter"
        )
    await problem(await client.get("/admin/usage", headers=SEND), 403, "insufficient_scope")


async def test_idempotent_replay_sends_and_charges_nothing(
    client: Client, provider: FakeProvider, settings: Settings
) -> None:
    body = {"to": ["0788000001", "0788000002"], "text": "Your code is 1234"}
    first = await client.post("/messages", json=body, headers={**SEND, "Idempotency-Key": "k-1"})
    assert first.status == 201 and "Idempotent-Replayed" not in first.headers
    again = await client.post(
        "/messages",
        json={"text": "Your code is 1234", "to": ["0788000001", "0788000002"]},
        headers={**SEND, "Idempotency-Key": "k-1"},
    )
    assert again.status == 201 and again.headers["Idempotent-Replayed"] == "true"
    assert await again.json() == await first.json()
    assert len(provider.calls) == 1
    assert (await usage(client))["day"]["used"] == 2
    listing = await (await client.get("/messages", headers=SEND)).json()
    assert len(listing["data"]) == 2
    reused = await client.post(
        "/messages", json={**body, "text": "other"}, headers={**SEND, "Idempotency-Key": "k-1"}
    )
    await problem(reused, 422, "idempotency_key_reused")
    # Another team's identical key is its own.
    other = await client.post(
        "/messages", json=body, headers={**auth(mint("alerts")), "Idempotency-Key": "k-1"}
    )
    assert other.status == 201 and "Idempotent-Replayed" not in other.headers
    assert len(provider.calls) == 2
    assert ledger_mismatches(settings.database) == []


@pytest.mark.parametrize(("mode", "status"), [("error", 502), ("http503", 503), ("http429", 503)])
async def test_an_answer_that_sent_nothing_frees_the_key_for_a_real_retry(
    client: Client, provider: FakeProvider, settings: Settings, mode: str, status: int
) -> None:
    """Stripe's rule: 502 and 503 say nothing was sent, so the key is not kept for them; the
    retry with the same key and body sends for real, and then that answer is the key's."""
    provider.mode = mode
    key = {**SEND, "Idempotency-Key": f"otp-{mode}"}
    body = {"to": "0788000001", "text": "x"}
    first = await client.post("/messages", json=body, headers=key)
    assert first.status == status, await first.text()
    assert "Idempotent-Replayed" not in first.headers
    assert query(settings.database, "SELECT COUNT(*) FROM idempotency")[0][0] == 0
    provider.mode = "success"
    again = await client.post("/messages", json=body, headers=key)
    assert again.status == 201 and "Idempotent-Replayed" not in again.headers
    replay = await client.post("/messages", json=body, headers=key)
    assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert await replay.json() == await again.json()
    assert ledger_mismatches(settings.database) == []


async def test_refused_requests_do_not_use_up_the_key(make_client: ClientFactory) -> None:
    client = await make_client()
    await create_team(client, "payments", daily_limit=0)
    key = {**SEND, "Idempotency-Key": "retry-me"}
    body = {"to": "0788000001", "text": "x"}
    await problem(await client.post("/messages", json=body, headers=key), 429, "quota_exceeded")
    await problem(
        await client.post("/messages", json={"to": "1", "text": "x"}, headers=key),
        422,
        "invalid_recipient",
    )
    await client.patch("/admin/teams/payments", json={"daily_limit": 5}, headers=ADMIN)
    assert (await client.post("/messages", json=body, headers=key)).status == 201


async def test_concurrent_duplicates_send_once(client: Client, provider: FakeProvider) -> None:
    provider.delay = 0.2
    key = {**SEND, "Idempotency-Key": "dup"}
    body = {"to": "0788000001", "text": "x"}
    answers = await asyncio.gather(
        *(client.post("/messages", json=body, headers=key) for _ in range(5))
    )
    statuses = Counter(r.status for r in answers)
    assert statuses == {201: 1, 409: 4}
    for resp in answers:
        if resp.status == 409:
            await problem(resp, 409, "idempotency_in_flight")
    assert len(provider.calls) == 1
    replay = await client.post("/messages", json=body, headers=key)
    assert replay.status == 201 and replay.headers["Idempotent-Replayed"] == "true"


async def test_keys_expire_after_24_hours(
    make_client: ClientFactory, provider: FakeProvider
) -> None:
    # A key's 24 hours run on the database's clock: the key's row is aged by hand.
    client = await make_client()
    await create_team(client, "payments")
    key = {**SEND, "Idempotency-Key": "daily-report"}
    body = {"to": "0788000001", "text": "x"}
    assert (await client.post("/messages", json=body, headers=key)).status == 201

    async def age(by: timedelta) -> None:
        at = iso(datetime.now(UTC) - by)
        await client.app[STORE].run("UPDATE idempotency SET created_at = ?", (at,))

    await age(timedelta(hours=23, minutes=59))
    replay = await client.post("/messages", json=body, headers=key)
    assert replay.headers.get("Idempotent-Replayed") == "true"
    await age(timedelta(hours=24, minutes=1))
    fresh = await client.post("/messages", json=body, headers=key)
    assert fresh.status == 201 and "Idempotent-Replayed" not in fresh.headers
    assert len(provider.calls) == 2


async def test_bad_idempotency_keys(client: Client) -> None:
    for bad in ("", "x" * 256, "caf\u00e9"):
        resp = await client.post(
            "/messages",
            json={"to": "0788000001", "text": "x"},
            headers={**SEND, "Idempotency-Key": bad},
        )
        await problem(resp, 422, "invalid_idempotency_key")


async def test_expired_keys_are_purged_at_start(
    make_client: ClientFactory, provider: FakeProvider, settings: Settings
) -> None:
    client = await make_client()
    await create_team(client, "payments")
    for key in ("old-1", "old-2"):
        await client.post(
            "/messages",
            json={"to": "0788000001", "text": key},
            headers={**SEND, "Idempotency-Key": key},
        )

    def keys() -> int:
        return int(query(settings.database, "SELECT COUNT(*) FROM idempotency")[0][0])

    assert keys() == 2
    old = iso(datetime.now(UTC) - timedelta(hours=25))
    await client.app[STORE].run("UPDATE idempotency SET created_at = ?", (old,))
    await make_client()  # a later start
    async with asyncio.timeout(5):
        while keys():
            await asyncio.sleep(0.02)
