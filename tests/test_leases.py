"""Leases: only what a lapsed (or dead) process left in flight is swept; live leases are not."""

from __future__ import annotations

import asyncio
import os
import sqlite3
from datetime import timedelta
from pathlib import Path

from gateway.platform.clock import iso, utcnow
from gateway.platform.leases import Lease, host_key, pid_alive
from gateway.sending.answers import swept_answer
from gateway.store import leases as store_leases
from gateway.store import messages as store_messages
from gateway.store import teams as store_teams
from gateway.store.sqlite import SqliteStore

from .conftest import plain_batch


def batch(n: int) -> store_messages.Batch:
    return plain_batch(
        f"bat_{n}", iso(utcnow()), [store_messages.NewMessage(f"msg_{n}", f"25078800000{n}", 1, 75)]
    )


async def test_only_lapsed_or_dead_leases_are_swept(tmp_path: Path) -> None:
    path = str(tmp_path / "gateway.db")
    store = SqliteStore(path)
    await store.open()
    lease = Lease(store, 30, swept_answer)
    try:
        await lease.start()
        now = utcnow()
        await store_teams.create_team(store, "payments", {}, now)
        owners = {
            "prc_live_elsewhere": ("another-host", 1, now),
            "prc_lapsed_elsewhere": ("another-host", 1, now - timedelta(seconds=31)),
            "prc_dead_here": (host_key(), 2**22 + 12345, now),  # no such pid
        }
        for n, (owner, (host, pid, beat)) in enumerate(owners.items()):
            await store_leases.register(store, owner, host, pid)
            await store.run(
                "UPDATE processes SET heartbeat_at = ? WHERE id = ?", (iso(beat), owner)
            )
            claim = store_messages.IdempotencyClaim(f"key-{n}", "h", 86400)
            assert await store_messages.reserve(store, owner, batch(n), claim) is None
        # A lapsed lease is swept only by a process that has itself renewed without a gap for
        # a whole lease (the database took writes meanwhile): a process that just started (or
        # just came back from an outage) sweeps only the pids it knows are gone.
        swept = await lease.sweep()
        assert (swept.processes, swept.messages, swept.keys) == (1, 1, 1)
        await store.run(
            "UPDATE processes SET renewed_since = ? WHERE id = ?",
            (iso(now - timedelta(seconds=31)), lease.id),
        )
        swept = await lease.sweep()
        assert (swept.processes, swept.messages, swept.keys) == (1, 1, 1)
        with sqlite3.connect(path) as conn:
            rows = dict(
                conn.execute("SELECT owner IS NULL, status FROM messages WHERE id = 'msg_0'")
            )
            assert rows == {0: "sending"}  # the live lease's send is untouched
            assert (
                conn.execute(
                    "SELECT status, error_code FROM messages WHERE id != 'msg_0'"
                ).fetchall()
                == [("unknown", "interrupted")] * 2
            )
            keys = conn.execute("SELECT key, state, status FROM idempotency ORDER BY key")
            assert keys.fetchall() == [  # (a swept send's key replays its lost answer)
                ("key-0", "in_flight", None),
                ("key-1", "done", 504),
                ("key-2", "done", 504),
            ]
            alive = {r[0] for r in conn.execute("SELECT id FROM processes")}
            assert alive == {lease.id, "prc_live_elsewhere"}
        assert (await lease.sweep()).messages == 0  # a sweep changes a row once
    finally:
        await lease.stop()
        await store.close()


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    assert not pid_alive(2**22 + 12345)


async def test_an_outage_longer_than_the_lease_sweeps_no_live_process(tmp_path: Path) -> None:
    """Every process's renewals stopped (the database was away for longer than a lease): once it
    is back, no process takes another for dead until that one had a lease's time to renew."""
    path = str(tmp_path / "gateway.db")
    store = SqliteStore(path)
    await store.open()
    a = Lease(store, 2, swept_answer)
    try:
        await a.start()
        await store_leases.register(store, "prc_b", "another-host", 1)  # B, renewed by hand
        await store_teams.create_team(store, "payments", {}, utcnow())
        assert await store_messages.reserve(store, "prc_b", batch(1)) is None
        # the outage: neither renewed for 5 lease lengths (their last beats are that old)
        old = iso(utcnow() - timedelta(seconds=10))
        await store.run("UPDATE processes SET heartbeat_at = ?, renewed_since = ?", (old, old))
        await a.renew()  # A is back first, and sweeps at once: B has not had its chance yet
        assert (await a.sweep()).processes == 0
        assert await store_leases.heartbeat(store, "prc_b", 2) is not None
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT status FROM messages").fetchall() == [("sending",)]
        # B then stops for good (no more renewals): after a lease of A's unbroken renewals it is
        # lapsed, and its send is swept
        deadline = utcnow() + timedelta(seconds=8)
        while utcnow() < deadline and (await a.sweep()).processes == 0:
            await a.renew()
            await asyncio.sleep(a.interval)
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT status FROM messages").fetchall() == [("unknown",)]
    finally:
        await a.stop()
        await store.close()


async def test_a_catch_up_that_cannot_land_leaves_the_batch_as_the_sweep_would(
    tmp_path: Path,
) -> None:
    """Nothing stays `sending` under a live process forever: a stored outcome that keeps
    failing is given up after its window, its rows `unknown` (charged) and its key 504."""
    from gateway.sending.catchup import CatchUp

    path = str(tmp_path / "gateway.db")
    store = SqliteStore(path)
    await store.open()
    lease = Lease(store, 30, swept_answer)
    try:
        await lease.start()
        await store_teams.create_team(store, "payments", {}, utcnow())
        claim = store_messages.IdempotencyClaim("otp", "h", 86400)
        assert await store_messages.reserve(store, lease.id, batch(7), claim) is None

        async def failing() -> None:  # a write the database refuses every time
            await store.run("INSERT INTO no_such_table VALUES (1)")

        catch_up = CatchUp(store, lease.id, swept_answer, patience=0.3)
        catch_up.add(failing, "the outcome of batch bat_7", "bat_7")
        await asyncio.sleep(1.5)
        await catch_up.stop()
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT status, error_code, cost FROM messages").fetchall() == [
                ("unknown", "interrupted", 75)
            ]
            assert conn.execute("SELECT state, status FROM idempotency").fetchall() == [
                ("done", 504)
            ]
    finally:
        await lease.stop()
        await store.close()
