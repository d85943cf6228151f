"""The store: group commit that fails write by write, locks held elsewhere, checkpoints."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.errors import domain_error
from gateway.platform.clock import iso, utcnow
from gateway.store.db import Tx
from gateway.store.errors import DatabaseBusy
from gateway.store.keys import forget_expired_keys
from gateway.store.sqlite import SqliteStore


async def put(tx: Tx, key: str, fail: bool) -> str:
    await tx.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))
    if fail:
        raise ValueError(f"refused {key}")
    return key


async def test_a_failing_write_is_undone_alone(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "store.db"))
    await store.open()
    try:
        results = await asyncio.gather(
            *(store.write(put, f"k{n}", n % 3 == 0) for n in range(30)), return_exceptions=True
        )
        for n, result in enumerate(results):
            if n % 3 == 0:
                assert isinstance(result, ValueError)
            else:
                assert result == f"k{n}"
        rows = await store.fetchall("SELECT key FROM meta WHERE key LIKE 'k%'")
        assert sorted(r["key"] for r in rows) == sorted(f"k{n}" for n in range(30) if n % 3)
        # A write that breaks a constraint is refused too, and the store goes on.
        with pytest.raises(sqlite3.IntegrityError):
            await store.write(put, "k1", False)
        assert await store.write(put, "after", False) == "after"
    finally:
        await store.close()


def hold_write_lock(path: Path, seconds: float, locked: threading.Event) -> None:
    """Another process's writer: takes the write lock and keeps it for `seconds`."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    locked.set()
    time.sleep(seconds)
    conn.execute("COMMIT")
    conn.close()


@contextlib.asynccontextmanager
async def store_with_lock_held_elsewhere(
    tmp_path: Path, seconds: float, **options: float
) -> AsyncIterator[SqliteStore]:
    """An open store whose database file another writer has locked for `seconds`."""
    path = tmp_path / "store.db"
    store = SqliteStore(str(path), **options)
    await store.open()
    locked = threading.Event()
    holder = threading.Thread(target=hold_write_lock, args=(path, seconds, locked))
    holder.start()
    try:
        await asyncio.to_thread(locked.wait)
        yield store
    finally:
        await asyncio.to_thread(holder.join)
        await store.close()


async def test_a_lock_held_elsewhere_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    async with store_with_lock_held_elsewhere(tmp_path, 0.5) as store:
        beat = asyncio.create_task(ticker())
        started = time.perf_counter()
        assert await store.write(put, "after-lock", False) == "after-lock"
        waited = time.perf_counter() - started
        beat.cancel()
        assert waited >= 0.3  # it did wait for the other writer
        assert ticks >= 15  # and the event loop went on meanwhile
        assert await store.fetchone("SELECT 1 FROM meta WHERE key = 'after-lock'") is not None


async def test_a_lock_held_too_long_is_503_and_changes_nothing(tmp_path: Path) -> None:
    async with store_with_lock_held_elsewhere(tmp_path, 0.8, busy_timeout=0.2) as store:
        with pytest.raises(DatabaseBusy) as refused:
            await store.write(put, "while-locked", False)
        answer = domain_error(refused.value)
        assert answer is not None and answer.status == 503
        assert answer.headers["Retry-After"] == "1"
        assert await store.fetchone("SELECT 1 FROM meta WHERE key = 'while-locked'") is None
        await asyncio.sleep(0.8)  # the other writer lets go
        assert await store.write(put, "later", False) == "later"  # and the store goes on


async def test_wal_is_checkpointed_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = SqliteStore(str(path), checkpoint_every=0.05)
    await store.open()
    try:
        before = path.stat().st_size
        await asyncio.gather(*(store.write(put, f"c{n}" + "x" * 2000, False) for n in range(500)))
        async with asyncio.timeout(5):
            while path.stat().st_size < before + 500 * 2000:  # the rows reached the main file
                await asyncio.sleep(0.05)
        busy, frames, copied = await store.checkpoint()
        assert busy == 0 and frames == copied
    finally:
        await store.close()


async def test_expired_keys_are_forgotten_a_chunk_at_a_time(tmp_path: Path) -> None:
    store = SqliteStore(str(tmp_path / "store.db"))
    await store.open()
    try:
        await store.run(
            "INSERT INTO teams (id, name, webhook_secret, created_at) VALUES ('t', 't', 's', 'x')"
        )
        # ages by the database's clock: a day and a half, and an hour
        old = iso(utcnow() - timedelta(hours=36))
        new = iso(utcnow() - timedelta(hours=1))
        rows = [(f"old-{n}", "done", old) for n in range(45)]
        rows += [(f"new-{n}", "done", new) for n in range(3)]
        rows += [(f"flying-{n}", "in_flight", old) for n in range(2)]
        for key, state, created in rows:
            await store.run(
                "INSERT INTO idempotency (team_id, key, request_hash, state, created_at)"
                " VALUES ('t', ?, 'h', ?, ?)",
                (key, state, created),
            )
        assert await forget_expired_keys(store, 86400, chunk=10) == 45
        left = await store.fetchall("SELECT key FROM idempotency ORDER BY key")
        assert [r["key"] for r in left] == ["flying-0", "flying-1", "new-0", "new-1", "new-2"]
    finally:
        await store.close()


def test_backup_completes_in_small_steps_while_another_process_writes(tmp_path: Path) -> None:
    from gateway.store.backup import backup

    source = str(tmp_path / "live.db")
    with sqlite3.connect(source) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (n INTEGER, pad TEXT)")
        conn.executemany("INSERT INTO t VALUES (?, ?)", [(n, "x" * 500) for n in range(4000)])
    stop = threading.Event()
    written = [0]

    def writer() -> None:
        with sqlite3.connect(source, isolation_level=None) as conn:
            conn.execute("PRAGMA busy_timeout=5000")
            while not stop.is_set():
                conn.execute("INSERT INTO t VALUES (-1, 'late')")
                written[0] += 1

    thread = threading.Thread(target=writer)
    thread.start()
    steps: list[tuple[int, int]] = []
    try:
        pages, check = backup(
            source, str(tmp_path / "copy.db"), lambda c, t: steps.append((c, t)), pages_per_step=20
        )
    finally:
        stop.set()
        thread.join()
    assert check == "ok" and written[0] > 0
    assert len(steps) > 10 and steps[-1][0] == steps[-1][1]  # many steps, to the end
    with sqlite3.connect(tmp_path / "copy.db") as copy:
        assert copy.execute("SELECT COUNT(*) FROM t WHERE n >= 0").fetchone() == (4000,)
    assert pages == steps[-1][1]
