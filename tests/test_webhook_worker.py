"""The webhook worker with every slot busy: it sleeps, asking the database nothing, until an
attempt ends or work arrives; then it claims as many as it has free slots."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from gateway.delivery.callbacks import policy
from gateway.delivery.webhooks import WebhookWorker, next_wait, retry_after_seconds
from gateway.platform.clock import iso, utcnow
from gateway.store.db import Row, Statement, Tx, Write
from gateway.store.outbox import NewWebhook, insert_webhook
from gateway.store.sqlite import SqliteStore

SLOTS = 4


class CountingStore(SqliteStore):
    """The real SQLite store, counting every call the worker makes on it."""

    calls: Counter[str]

    async def open(self) -> None:
        self.calls = Counter()
        await super().open()

    async def write(self, fn: Write[Any], *args: Any) -> Any:
        self.calls["write"] += 1
        return await super().write(fn, *args)

    async def run(self, sql: Statement, params: Any = ()) -> int:
        self.calls["run"] += 1
        return await super().run(sql, params)

    async def fetchone(self, sql: Statement, params: Any = ()) -> Row | None:
        self.calls["fetchone"] += 1
        return await super().fetchone(sql, params)

    async def fetchall(self, sql: Statement, params: Any = ()) -> list[Row]:
        self.calls["fetchall"] += 1
        return await super().fetchall(sql, params)


class HangingReceiver:
    """Holds every delivery until released."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.release = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        self.arrived.append(request.headers["webhook-id"])
        await self.release.wait()
        return web.Response(status=204)


@pytest.fixture
async def hanging() -> AsyncIterator[tuple[HangingReceiver, str]]:
    receiver = HangingReceiver()
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    yield receiver, str(server.make_url("/hooks"))
    receiver.release.set()
    await server.close()


async def queue_webhooks(store: SqliteStore, url: str, first: int, count: int) -> None:
    async def write(tx: Tx) -> None:
        await tx.execute(
            "INSERT INTO teams (id, name, webhook_secret, created_at) VALUES"
            " ('payments', 'Payments', 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw', ?)"
            " ON CONFLICT DO NOTHING",
            (iso(utcnow()),),
        )
        for n in range(first, first + count):
            await tx.execute(
                "INSERT INTO messages (id, batch_id, team_id, recipient, text, status, segments,"
                " encoding, charged_segments, cost, day, month, created_at, events) VALUES"
                " (?, 'bat_1', 'payments', '250788123456', 'hi', 'delivered', 1, 'gsm7', 1, 75,"
                " '2026-12-02', '2026-12', ?, '[]')",
                (f"msg_{n:04d}", iso(utcnow())),
            )
            await insert_webhook(
                tx,
                NewWebhook(
                    f"whk_{n:04d}",
                    f"msg_{n:04d}",
                    "payments",
                    "message.delivered",
                    url,
                    '{"type":"message.delivered"}',
                    0.0,
                    iso(utcnow()),
                ),
            )

    await store.write(write)


async def until(check: Any, within: float = 10.0) -> None:
    async with asyncio.timeout(within):
        while not check():
            await asyncio.sleep(0.02)


async def test_a_full_worker_asks_the_database_nothing_until_a_slot_frees(
    tmp_path: Path, hanging: tuple[HangingReceiver, str]
) -> None:
    receiver, url = hanging
    store = CountingStore(str(tmp_path / "worker.db"))
    await store.open()
    await queue_webhooks(store, url, 0, 10)
    async with aiohttp.ClientSession() as http:
        worker = WebhookWorker(
            store,
            http,
            (0.0, 5.0),
            utcnow,
            owner="prc_test",
            guard=policy(("127.0.0.0/8",), False),
            concurrency=SLOTS,
        )
        worker.start()
        try:
            await until(lambda: len(receiver.arrived) == SLOTS)  # one claim filled every slot
            await asyncio.sleep(0.2)
            before = sum(store.calls.values())
            await asyncio.sleep(2.0)  # every delivery hangs
            assert sum(store.calls.values()) == before, store.calls
            await queue_webhooks(store, url, 10, 5)
            before = sum(store.calls.values())
            worker.wake()  # work arrived, but no slot is free
            await asyncio.sleep(1.0)
            assert sum(store.calls.values()) == before, store.calls
            assert len(receiver.arrived) == SLOTS
            receiver.release.set()  # the slots free: the rest go, each once
            await until(lambda: len(receiver.arrived) == 15)
            async with asyncio.timeout(10):
                while (await delivered(store)) < 15:
                    await asyncio.sleep(0.05)
            assert sorted(receiver.arrived) == [f"whk_{n:04d}" for n in range(15)]
        finally:
            await worker.stop()
            await store.close()


async def delivered(store: SqliteStore) -> int:
    row = await store.fetchone("SELECT COUNT(*) AS n FROM webhooks WHERE status = 'delivered'")
    assert row is not None
    return int(row["n"])


def test_each_retry_waits_its_step_and_up_to_a_tenth_more() -> None:
    schedule = (0.0, 5.0, 300.0)
    assert next_wait(schedule, 1, None, 0.0) == 5.0
    assert next_wait(schedule, 1, None, 1.0) == pytest.approx(5.5)
    waits = {next_wait(schedule, 2, None, j / 10) or 0.0 for j in range(11)}
    assert len(waits) == 11 and min(waits) == 300.0 and max(waits) == pytest.approx(330.0)
    assert next_wait(schedule, 3, None, 0.5) is None  # the schedule is over: failed


def test_retry_after_is_honoured_up_to_twice_the_next_step() -> None:
    schedule = (0.0, 5.0, 300.0)
    assert next_wait(schedule, 1, 3.0, 0.0) == 3.0  # sooner than the step, as the receiver says
    assert next_wait(schedule, 1, 8.0, 0.0) == 8.0
    assert next_wait(schedule, 1, 3600.0, 0.0) == 10.0  # capped at twice the step
    assert next_wait(schedule, 1, 3.0, 1.0) == pytest.approx(3.3)  # never sooner than asked
    now = 1_780_000_000.0
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 7 ", now) == 7.0
    date = "Thu, 28 May 2026 20:27:20 GMT"  # 1_780_000_040: 40 s after `now`
    assert retry_after_seconds(date, now) == pytest.approx(40.0)
    assert retry_after_seconds(date, now + 100) == 0.0
    for bad in (None, "", "soon", "-5", "1.5", "Thu, 99 Foo 2026"):
        assert retry_after_seconds(bad, now) is None
