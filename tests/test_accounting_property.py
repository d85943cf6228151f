"""Property: after any sequence of sends and provider outcomes, the counters equal the sum of
the messages' charges, and no limit is passed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.app import create_app
from gateway.platform.settings import Settings

from .conftest import (
    JWT_SECRET,
    SECRET_KEY,
    FakeProvider,
    auth,
    ledger_mismatches,
    mint,
    plain_batch,
)

OUTCOMES = ["success", "error", "http401", "http500", "html", "garbage", "partial"]

step = st.fixed_dictionaries(
    {
        "recipients": st.integers(1, 4),
        "segments": st.integers(1, 3),
        "mode": st.sampled_from(OUTCOMES),
        "failed_suffix": st.sampled_from(["1", "2", "none"]),
        "charge_failed": st.booleans(),
        "cost_share": st.sampled_from([0.0, 0.5, 1.0]),  # of the 75 RWF/segment estimate
    }
)
limits = st.fixed_dictionaries(
    {
        "daily_limit": st.one_of(st.none(), st.integers(0, 25)),
        "monthly_limit": st.one_of(st.none(), st.integers(0, 40)),
        "monthly_budget": st.one_of(st.none(), st.integers(0, 3000)),
    }
)


async def scenario(
    directory: Path, team_limits: dict[str, Any], steps: list[dict[str, Any]]
) -> None:
    fake = FakeProvider()
    provider_app = web.Application()
    provider_app.router.add_post("/api/v2/sms/send", fake.handle)
    provider = TestServer(provider_app, host="127.0.0.1")
    await provider.start_server()
    database = str(directory / "gateway.db")
    config = Settings(
        database=database,
        provider_url=str(provider.make_url("/api/v2/sms/send")),
        provider_api_key="k",
        provider_username="u",
        provider_password="p",
        secret_key=SECRET_KEY,
        provider_timeout=2.0,
        provider_batch_size=2,
        jwt_secret=JWT_SECRET,
    )
    client = TestClient(TestServer(create_app(config), host="127.0.0.1"))
    await client.start_server()
    try:
        resp = await client.post(
            "/admin/teams",
            json={"id": "payments", **team_limits},
            headers=auth(mint("root", "admin")),
        )
        assert resp.status == 201
        headers = auth(mint("payments"))
        number = 0
        for s in steps:
            fake.mode = s["mode"]
            fake.failed_suffix = s["failed_suffix"]
            fake.charge_failed = s["charge_failed"]
            fake.cost = int(75 * s["segments"] * s["cost_share"])
            to = []
            for _ in range(s["recipients"]):
                number += 1
                to.append(f"0788{number:06d}")
            resp = await client.post(
                "/messages", headers=headers, json={"to": to, "text": "a" * (153 * s["segments"])}
            )
            assert resp.status in (201, 429, 502, 504), await resp.text()
        assert ledger_mismatches(database) == []
        usage = await (await client.get("/usage", headers=headers)).json()
        for period, limit_name, used_name in (
            ("day", "daily_limit", "used"),
            ("month", "monthly_limit", "used"),
            ("month", "monthly_budget", "cost"),
        ):
            limit = team_limits[limit_name]
            if limit is not None:
                assert usage[period][used_name] <= limit
    finally:
        await client.close()
        await provider.close()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(team_limits=limits, steps=st.lists(step, min_size=1, max_size=10))
def test_counters_equal_the_messages_charges(
    tmp_path_factory: pytest.TempPathFactory,
    team_limits: dict[str, Any],
    steps: list[dict[str, Any]],
) -> None:
    asyncio.run(scenario(tmp_path_factory.mktemp("ledger"), team_limits, steps))


# --- overlapping processes, at the store: reserve, settle (by the owner or not, once or again),
# lapsed leases swept, live ones renewed and never swept, catch-up after a sweep, delivery
# reports, in any order; each process stamps its rows with its own clock, skewed by minutes.

OWNERS = ["prc_a", "prc_b"]
skews = st.lists(st.integers(-180, 180), min_size=len(OWNERS) + 1, max_size=len(OWNERS) + 1)
operation = st.one_of(
    st.tuples(st.just("renew"), st.sampled_from(OWNERS)),
    st.tuples(st.just("sweep")),
    st.tuples(st.just("reserve"), st.sampled_from(OWNERS), st.integers(1, 3), st.integers(1, 2)),
    st.tuples(
        st.just("settle"),
        st.sampled_from(OWNERS),
        st.integers(0, 20),  # which batch
        st.sampled_from(["sent", "failed", "unknown", "refused"]),
        st.sampled_from([0, 40, 75, 150]),
    ),
    st.tuples(st.just("lapse"), st.sampled_from(OWNERS)),
    st.tuples(st.just("report"), st.integers(0, 20), st.sampled_from(["D", "U"])),
)


async def overlapping(directory: Path, operations: list[tuple[Any, ...]], skew: list[int]) -> None:
    from datetime import timedelta

    from gateway.delivery import reports
    from gateway.platform.clock import iso, utcnow
    from gateway.sending import settlement
    from gateway.sending.answers import swept_answer
    from gateway.store import leases as store_leases
    from gateway.store import messages as store_messages
    from gateway.store import settle as store_settle
    from gateway.store import teams as store_teams
    from gateway.store.sqlite import SqliteStore

    database = str(directory / "gateway.db")
    store = SqliteStore(database)
    await store.open()
    try:
        now = utcnow()
        await store_teams.create_team(store, "payments", {"daily_limit": 12}, now)
        for owner in [*OWNERS, "prc_sweeper"]:
            await store_leases.register(store, owner, "elsewhere", 1)
        # the sweeper has renewed without a gap for longer than a lease: it may sweep
        await store.run(
            "UPDATE processes SET renewed_since = ? WHERE id = 'prc_sweeper'",
            (iso(utcnow() - timedelta(minutes=10)),),
        )
        clocks = dict(zip([*OWNERS, "prc_sweeper"], skew, strict=True))
        lapsed: set[str] = set()
        batches: list[store_messages.Batch] = []
        final: dict[str, str] = {}
        for op in operations:
            who = op[1] if op[0] in ("reserve", "settle") else "prc_sweeper"
            at = iso(utcnow() + timedelta(seconds=clocks[who]))  # this process's own clock
            live_sending = {
                r["id"]
                for r in await store.fetchall(
                    "SELECT id, owner FROM messages WHERE status = 'sending'"
                )
                if r["owner"] not in lapsed
            }
            if op[0] == "reserve":
                _, owner, recipients, segments = op
                n = len(batches)
                batch = plain_batch(
                    f"bat_{n:03d}",
                    at,
                    [
                        store_messages.NewMessage(
                            f"msg_{n:03d}_{r}", f"2507880{n:03d}{r:02d}", segments, 75 * segments
                        )
                        for r in range(recipients)
                    ],
                )
                if await store_messages.reserve(store, owner, batch) is None:
                    batches.append(batch)
            elif op[0] == "settle" and op[2] < len(batches):
                _, owner, index, status, cost = op
                batch = batches[index]
                outcomes = []
                for m in batch.messages:
                    if status == "refused":
                        outcomes.append(store_settle.Outcome(m.id, "failed", at, 0, 0))
                    elif status == "unknown":
                        outcomes.append(
                            store_settle.Outcome(m.id, "unknown", at, m.segments, m.cost)
                        )
                    else:
                        outcomes.append(
                            store_settle.Outcome(
                                m.id,
                                status,
                                at,
                                m.segments if cost else 0,
                                cost,
                                provider_message_id=f"p{m.id}",
                            )
                        )
                await settlement.settle(store, owner, batch, outcomes)
            elif op[0] == "lapse":
                await store.run(
                    "UPDATE processes SET heartbeat_at = ? WHERE id = ?",
                    (iso(utcnow() - timedelta(minutes=5)), op[1]),
                )
                lapsed.add(op[1])
                await store_leases.sweep(store, "prc_sweeper", 30, [], at, swept_answer)
            elif op[0] == "renew":
                if await store_leases.heartbeat(store, op[1], 30) is None:
                    await store_leases.register(store, op[1], "elsewhere", 1)
                lapsed.discard(op[1])
            elif op[0] == "sweep":
                await store_leases.sweep(store, "prc_sweeper", 30, [], at, swept_answer)
                still = {
                    r["id"]
                    for r in await store.fetchall(
                        "SELECT id FROM messages WHERE status = 'sending'"
                    )
                }
                assert live_sending <= still, "a sweep moved a live process's send"
            elif op[0] == "report" and op[1] < len(batches):
                batch = batches[op[1]]
                m = batch.messages[0]
                report = reports.Report(batch.batch_id, f"p{m.id}", m.recipient, op[2])
                await reports.receive_report(store, report, at, 0.0)
            assert ledger_mismatches(database) == []
            rows = await store.fetchall("SELECT id, status FROM messages")
            for row in rows:
                was = final.get(row["id"])
                if was in ("sent", "failed", "delivered", "undelivered"):
                    # settled once: only a delivery report may move a sent message on
                    assert row["status"] == was or (
                        was == "sent" and row["status"] in ("delivered", "undelivered")
                    ), (row["id"], was, row["status"])
                final[row["id"]] = row["status"]
        day = await store.fetchone("SELECT segments FROM usage WHERE period = ?", (at[:10],))
        assert day is None or day["segments"] <= 12
    finally:
        await store.close()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(operations=st.lists(operation, min_size=1, max_size=25), skew=skews)
def test_counters_stay_exact_when_processes_overlap(
    tmp_path_factory: pytest.TempPathFactory, operations: list[tuple[Any, ...]], skew: list[int]
) -> None:
    asyncio.run(overlapping(tmp_path_factory.mktemp("overlap"), operations, skew))
