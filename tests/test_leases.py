"""Leases: only what a lapsed (or dead) process left in flight is swept; live leases are not."""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta
from pathlib import Path

from gateway.clock import iso, utcnow
from gateway.leases import Lease, host_key, pid_alive
from gateway.sending import swept_answer
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
            await store_leases.register(store, owner, host, pid, iso(beat))
            claim = store_messages.IdempotencyClaim(f"key-{n}", "h", iso(now - timedelta(1)))
            assert await store_messages.reserve(store, owner, batch(n), claim) is None
        swept = await lease.sweep()
        assert (swept.processes, swept.messages, swept.keys) == (2, 2, 2)
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
            assert keys.fetchall() == [
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
