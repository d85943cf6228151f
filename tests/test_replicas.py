"""Two real `sms-gateway serve` replicas on one database behave as one gateway: limits exact
across both, an Idempotency-Key honoured wherever the retry lands, a DLR accepted by either,
each webhook delivered once, and a replica killed mid-load swept by the survivor.

Run on PostgreSQL (SPEC section 7) and on one SQLite file shared by two processes."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest

from .conftest import (
    FakeProvider,
    Receiver,
    free_port,
    gateway_process,
    ledger_mismatches,
    mint,
    query,
    serve_env,
)

pytestmark = pytest.mark.both_databases

ADMIN = {"Authorization": f"Bearer {mint('root', 'admin')}"}


def sender(team: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {mint(team)}"}


@contextlib.asynccontextmanager
async def two_replicas(
    database: str, provider: FakeProvider, **env: str
) -> AsyncIterator[tuple[str, str, list[asyncio.subprocess.Process]]]:
    """Two serve processes on one database, started together; (base A, base B, processes)."""
    ports = free_port(), free_port()
    starts = [gateway_process(serve_env(database, p, provider.url, **env), p) for p in ports]
    procs = list(await asyncio.gather(*(s.__aenter__() for s in starts)))
    try:
        yield f"http://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}", procs
    finally:
        for s in starts:
            await s.__aexit__(None, None, None)


async def make_team(http: aiohttp.ClientSession, base: str, team: str, **fields: Any) -> None:
    async with http.post(f"{base}/admin/teams", json={"id": team, **fields}, headers=ADMIN) as resp:
        assert resp.status == 201, await resp.text()


async def post(
    http: aiohttp.ClientSession, url: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(url, json=body, headers=headers) as resp:
        return resp.status, await resp.json()


def on_port(url: str, base: str) -> str:
    """`url` sent to the replica at `base` instead."""
    return urlunsplit(urlsplit(url)._replace(netloc=urlsplit(base).netloc))


async def test_limits_are_exact_across_replicas(database: str, provider: FakeProvider) -> None:
    body = {"to": "0788000001", "text": "one segment"}
    async with aiohttp.ClientSession() as http, two_replicas(database, provider) as (a, b, _):
        await make_team(http, a, "counted", daily_limit=100)
        await make_team(http, b, "budgeted", monthly_budget=50 * 75)
        for team, allowed in (("counted", 100), ("budgeted", 50)):
            calls = len(provider.calls)
            answers = await asyncio.gather(
                *(post(http, f"{(a, b)[n % 2]}/messages", body, sender(team)) for n in range(300))
            )
            statuses = Counter(status for status, _ in answers)
            assert statuses == {201: allowed, 429: 300 - allowed}, statuses
            assert len(provider.calls) - calls == allowed
        assert query(
            database,
            "SELECT team_id, segments, cost FROM usage WHERE length(period) = 10 ORDER BY 1",
        ) == [("budgeted", 50, 50 * 75), ("counted", 100, 100 * 75)]
    assert ledger_mismatches(database) == []


async def test_one_idempotency_key_sent_to_both_replicas_is_one_send(
    database: str, provider: FakeProvider
) -> None:
    provider.delay = 0.5  # both requests are in flight together
    body = {"to": "0788000001", "text": "Your code is 1234"}
    headers = {**sender("payments"), "Idempotency-Key": "otp-7"}
    async with aiohttp.ClientSession() as http, two_replicas(database, provider) as (a, b, _):
        await make_team(http, a, "payments")
        first = await asyncio.gather(
            post(http, f"{a}/messages", body, headers), post(http, f"{b}/messages", body, headers)
        )
        assert sorted(status for status, _ in first) in ([201, 409], [201, 201]), first
        again = await asyncio.gather(
            post(http, f"{a}/messages", body, headers), post(http, f"{b}/messages", body, headers)
        )
        ids = {answer["messages"][0]["id"] for status, answer in (*first, *again) if status == 201}
        assert [status for status, _ in again] == [201, 201] and len(ids) == 1
    assert len(provider.calls) == 1
    assert query(database, "SELECT COUNT(*) FROM messages") == [(1,)]


async def test_a_report_reaching_the_other_replica_is_applied_once(
    database: str, provider: FakeProvider, receiver: Receiver
) -> None:
    async with aiohttp.ClientSession() as http, two_replicas(database, provider) as (a, b, _):
        await make_team(http, a, "payments", callback_url=receiver.url)
        status, answer = await post(
            http, f"{a}/messages", {"to": "0788000001", "text": "hi"}, sender("payments")
        )
        assert status == 201
        [message] = answer["messages"]
        [call] = provider.calls
        # the provider's report goes to replica B, then (a retry) to A
        for base in (b, a):
            url = on_port(call["dlrurl"], base)
            assert await provider.report(url, "250788000001", message["provider_message_id"]) == 200
        await receiver.wait_for(1)
        async with http.get(f"{a}/messages/{message['id']}", headers=sender("payments")) as r:
            assert (await r.json())["status"] == "delivered"
        await asyncio.sleep(1.0)  # a second webhook would have arrived by now
    [(_, payload)] = receiver.received
    assert json.loads(payload)["type"] == "message.delivered"
    assert query(database, "SELECT outcome, COUNT(*) FROM dlr_reports GROUP BY 1") == [
        ("applied", 1)
    ]


async def test_a_hundred_reports_make_a_hundred_webhooks_once_each(
    database: str, provider: FakeProvider, receiver: Receiver
) -> None:
    recipients = [f"0788{n:06d}" for n in range(100)]
    async with aiohttp.ClientSession() as http, two_replicas(database, provider) as (a, b, _):
        await make_team(http, a, "payments", callback_url=receiver.url)
        status, answer = await post(
            http, f"{a}/messages", {"to": recipients, "text": "results"}, sender("payments")
        )
        assert status == 201 and len(answer["messages"]) == 100
        [call] = provider.calls
        results = await asyncio.gather(
            *(
                provider.report(
                    on_port(call["dlrurl"], (a, b)[n % 2]), m["to"], m["provider_message_id"]
                )
                for n, m in enumerate(answer["messages"])
            )
        )
        assert set(results) == {200}
        await receiver.wait_for(100, timeout=30)
        await asyncio.sleep(1.5)  # anything delivered twice would have arrived by now
    ids = Counter(headers["webhook-id"] for headers, _ in receiver.received)
    assert len(ids) == 100 and set(ids.values()) == {1}
    assert query(database, "SELECT status, COUNT(*) FROM webhooks GROUP BY 1") == [
        ("delivered", 100)
    ]


async def test_a_replica_killed_mid_load_loses_nothing_acknowledged(
    database: str, provider: FakeProvider
) -> None:
    provider.delay = 0.2  # sends are in flight on the replica when it dies
    acknowledged: list[str] = []
    survivor_answers: list[int] = []
    stop = asyncio.Event()

    async def load(http: aiohttp.ClientSession, base: str, record: list[int] | None) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            body = {"to": f"0788{n % 1000:06d}", "text": "alert"}
            try:
                status, answer = await post(http, f"{base}/messages", body, sender("payments"))
            except (aiohttp.ClientError, json.JSONDecodeError):
                assert record is None, "the survivor stopped answering"
                await asyncio.sleep(0.05)
                continue
            if record is not None:
                record.append(status)
            if status == 201:
                acknowledged.extend(m["id"] for m in answer["messages"])

    async with aiohttp.ClientSession() as http:
        async with two_replicas(database, provider, lease_seconds="3") as (a, b, procs):
            await make_team(http, a, "payments")
            loads = [asyncio.create_task(load(http, a, None)) for _ in range(4)] + [
                asyncio.create_task(load(http, b, survivor_answers)) for _ in range(4)
            ]
            await asyncio.sleep(2)
            sending = "SELECT id FROM messages WHERE status = 'sending'"
            # what the replica about to die is sending (its lease names its pid)
            its_own = (
                "SELECT m.id FROM messages m JOIN processes p ON p.id = m.owner"
                " WHERE m.status = 'sending' AND p.pid = ?"
            )
            while not query(database, its_own, procs[0].pid):
                await asyncio.sleep(0.01)
            procs[0].send_signal(signal.SIGKILL)
            await procs[0].wait()
            stranded = {m for (m,) in query(database, sending)}
            try:
                async with asyncio.timeout(60):  # swept by the survivor, within a minute
                    while stranded & {m for (m,) in query(database, sending)}:
                        await asyncio.sleep(0.2)
                await asyncio.sleep(1)  # the survivor goes on answering after the sweep
            finally:
                stop.set()
                await asyncio.gather(*loads)
        assert survivor_answers and set(survivor_answers) == {201}
        statuses = dict(query(database, "SELECT id, status FROM messages"))
        assert acknowledged and all(statuses[m] in ("sent", "failed") for m in acknowledged)
        interrupted = query(
            database, "SELECT COUNT(*) FROM messages WHERE error_code = 'interrupted'"
        )
        assert interrupted[0][0] >= 1  # what the killed replica had in flight, swept
        assert set(statuses.values()) <= {"sent", "failed", "unknown"}
    assert ledger_mismatches(database) == []


def refuse_connections(database: str, refuse: bool) -> None:
    """Make the database refuse every connection and end the open ones (PostgreSQL is gone for
    the gateway), or accept them again."""
    name = urlsplit(database).path.lstrip("/")
    query(
        database.rsplit("/", 1)[0] + "/postgres",
        f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS {str(not refuse).lower()}',
    )
    if refuse:
        query(
            database.rsplit("/", 1)[0] + "/postgres",
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = ?",
            name,
        )


@pytest.mark.postgresql
async def test_a_lost_database_is_503_having_sent_nothing_then_retried(
    database: str, make_client: Any, provider: FakeProvider
) -> None:
    client = await make_client()
    async with client.post("/admin/teams", json={"id": "payments"}, headers=ADMIN) as resp:
        assert resp.status == 201
    body = {"to": "0788000001", "text": "hi"}
    async with client.post("/messages", json=body, headers=sender("payments")) as resp:
        assert resp.status == 201
    refuse_connections(database, True)
    try:
        async with client.get("/readyz") as resp:
            assert resp.status == 503
        async with client.post("/messages", json=body, headers=sender("payments")) as resp:
            problem = await resp.json()
            assert resp.status == 503 and problem["code"] == "database_unavailable", problem
            assert resp.headers["Retry-After"] == "1"
        assert len(provider.calls) == 1  # nothing was sent
    finally:
        refuse_connections(database, False)  # PostgreSQL is back: the pool connects again
    async with client.get("/readyz") as resp:
        assert resp.status == 200
    async with client.post("/messages", json=body, headers=sender("payments")) as resp:
        assert resp.status == 201
    assert len(provider.calls) == 2
    await client.close()
    assert ledger_mismatches(database) == []
