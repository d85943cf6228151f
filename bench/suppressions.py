"""The suppression check at a send (`python -m bench.suppressions`, docs/performance.md): what the
lookup a send makes (store.suppressions.blocked, every recipient against the team's list and the
global one) costs with 10 entries and with 1,000,000, on SQLite and on PostgreSQL. SPEC 9 wants
it the same at both sizes: an indexed lookup, not a scan.

For each size a fresh database (the real migrations) gets that many suppressed numbers, half on
the team's list and half on the global one, straight into the table; then the lookup runs for a
one-recipient send and for a 100-recipient send (one suppressed number among them), many times,
alternating the sizes, and the best time of each is printed with the ratio of the large to
the small. An index probe per (list, number) grows only with the B-tree's depth (one level at
ten entries, three at a million: 200 against 604 buffer hits for 100 recipients on PostgreSQL)
and with pages the cache no longer holds, so the ratio stays a small constant where a scan would
be 100,000 times slower. Exit 3 when a ratio is over 3 (the lookup would not be an index's).
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
import time
from pathlib import Path

import asyncpg

from gateway.store import Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from gateway.store.suppressions import blocked

from .run import pg_database, sizes_main

TEAM = "bench"
ROUNDS = 11
CALLS = 300
MAX_RATIO = 3.0


def _number(i: int) -> str:
    return f"250{780_000_000 + i:09d}"


def fill_sqlite(path: str, count: int) -> None:
    with sqlite3.connect(path) as conn:
        conn.execute(
            "INSERT INTO suppressions (team_id, number, reason, created_at, created_by)"
            " WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i + 1 < ?)"
            " SELECT CASE WHEN i % 2 = 0 THEN 'bench' ELSE '*' END,"
            " '250' || (780000000 + i), 'bench', '2026-12-01T00:00:00.000Z', 'bench' FROM n",
            (count,),
        )
        conn.execute("ANALYZE")


async def fill_postgres(database: str, count: int) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "INSERT INTO suppressions (team_id, number, reason, created_at, created_by)"
            " SELECT CASE WHEN i % 2 = 0 THEN 'bench' ELSE '*' END,"
            " '250' || (780000000 + i), 'bench', '2026-12-01T00:00:00.000Z', 'bench'"
            " FROM generate_series(0, $1 - 1) AS i",
            count,
        )
        await conn.execute("ANALYZE suppressions")
    finally:
        await conn.close()


async def _time(store: Store, numbers: list[str], expected: int) -> float:
    """Microseconds per lookup, over CALLS lookups."""
    started = time.perf_counter()
    for _ in range(CALLS):
        found = await blocked(store, TEAM, numbers)
        assert len(found) == expected, found
    return (time.perf_counter() - started) / CALLS * 1e6


async def measure(stores: dict[int, Store]) -> dict[tuple[int, int], float]:
    """The best of ROUNDS runs, in microseconds per lookup, for each (size, recipients), the
    sizes alternated (the best: what the lookup costs when this shared machine lets it run)."""
    one = [_number(4)]  # on the team's list at every size
    hundred = [_number(4)] + [f"250799{i:06d}" for i in range(99)]  # one suppressed
    samples: dict[tuple[int, int], list[float]] = {}
    for _ in range(ROUNDS):
        for size, store in stores.items():
            samples.setdefault((size, 1), []).append(await _time(store, one, 1))
            samples.setdefault((size, 100), []).append(await _time(store, hundred, 1))
    return {key: min(values) for key, values in samples.items()}


def report(kind: str, figures: dict[tuple[int, int], float], sizes: list[int]) -> bool:
    small, large = min(sizes), max(sizes)
    ok = True
    for recipients in (1, 100):
        a, b = figures[(small, recipients)], figures[(large, recipients)]
        ratio = b / a
        ok = ok and ratio <= MAX_RATIO
        print(
            f"{kind}, {recipients}-recipient send: {a:.0f} µs at {small:,} entries, "
            f"{b:.0f} µs at {large:,} ({ratio:.2f} x)"
        )
    return ok


async def run(sizes: list[int], server: str) -> int:
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        stores: dict[int, Store] = {}
        for size in sizes:
            path = str(Path(tmp) / f"s{size}.db")
            lite = SqliteStore(path)
            await lite.open()  # the real migrations
            fill_sqlite(path, size)
            stores[size] = lite
        try:
            ok = report("SQLite", await measure(stores), sizes) and ok
        finally:
            for opened in stores.values():
                await opened.close()
    if server != "off":
        pg_stores: dict[int, Store] = {}
        async with contextlib.AsyncExitStack() as stack:
            for size in sizes:
                url = await stack.enter_async_context(pg_database(server, suffix=str(size)))
                pg = PostgresStore(url)
                await pg.open()
                await fill_postgres(url, size)
                pg_stores[size] = pg
            try:
                ok = report("PostgreSQL", await measure(pg_stores), sizes) and ok
            finally:
                for opened in pg_stores.values():
                    await opened.close()
    return 0 if ok else 3


def main() -> None:
    """Entry point."""
    sizes_main("python -m bench.suppressions", __doc__, run, default_sizes="10,1000000")


if __name__ == "__main__":
    main()
