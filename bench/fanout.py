"""The webhook fan-out (`python -m bench.fanout`, docs/performance.md): how fast one gateway
delivers a backlog of webhooks to a fast receiver, and whether the rate falls as the backlog
grows (issue 25's target: the rate at 50,000 waiting within 0.8 x the rate at 10,000).

For each backlog size a fresh SQLite database gets one team and that many messages, each with
one pending webhook due now, written straight into the file (and then the same on a throwaway
PostgreSQL database); then a real `sms-gateway serve`
starts on it and its worker delivers them to `python -m bench.servers receiver`, which records
when each arrived and whether any came twice. The rate is what the receiver saw, first arrival
to last; the gateway's CPU time a webhook is read from /proc around the run (steadier than the
rate on a shared machine).
"""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore

from .run import cpu_seconds, free_port, gateway_env, pg_database, process, sizes_main

SECRET = "whsec_" + base64.b64encode(b"b" * 24).decode()


async def fill_postgres(database: str, count: int, url: str) -> None:
    """The same rows on PostgreSQL, after the real migrations."""
    store = PostgresStore(database)
    await store.open()
    await store.close()
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(
            "INSERT INTO teams (id, name, webhook_secret, created_at, callback_url)"
            " VALUES ('bench', 'Bench', $1, '2026-01-01T00:00:00.000Z', $2)",
            SECRET,
            url,
        )
        await conn.execute(
            """INSERT INTO messages (id, batch_id, team_id, recipient, text, status, segments,
              encoding, charged_segments, cost, day, month, created_at, events)
            SELECT 'msg_' || lpad(i::text, 20, '0'), 'bat_' || lpad((i / 1000)::text, 12, '0'),
              'bench', '250788' || lpad(i::text, 6, '0'), 'Your code is 4821', 'delivered', 1,
              'gsm7', 1, 75, '2026-01-15', '2026-01', '2026-01-15T00:00:00.000Z', '[]'
            FROM generate_series(0, $1 - 1) AS i""",
            count,
        )
        await conn.execute(
            """INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,
              next_attempt_at, created_at)
            SELECT 'whk_' || lpad(i::text, 20, '0'), 'msg_' || lpad(i::text, 20, '0'), 'bench',
              'message.delivered', $2, '{"type":"message.delivered","data":{}}', 'pending',
              '2026-01-15T00:00:00.000Z', '2026-01-15T00:00:00.000Z'
            FROM generate_series(0, $1 - 1) AS i""",
            count,
            url,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def fill(database: str, count: int, url: str) -> None:
    """`count` delivered messages with one due webhook each, straight into a migrated file."""
    store = SqliteStore(database)
    await store.open()  # the real migrations
    await store.close()
    with sqlite3.connect(database) as conn:
        conn.execute(
            "INSERT INTO teams (id, name, webhook_secret, created_at, callback_url)"
            " VALUES ('bench', 'Bench', ?, '2026-01-01T00:00:00.000Z', ?)",
            (SECRET, url),
        )
        conn.execute(
            """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?)
            INSERT INTO messages (id, batch_id, team_id, recipient, text, status, segments,
              encoding, charged_segments, cost, day, month, created_at, events)
            SELECT printf('msg_%020d', i), printf('bat_%012d', i / 1000), 'bench',
              printf('250788%06d', i), 'Your code is 4821', 'delivered', 1, 'gsm7', 1, 75,
              '2026-01-15', '2026-01', '2026-01-15T00:00:00.000Z', '[]' FROM s""",
            (count,),
        )
        conn.execute(
            """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < ?)
            INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,
              next_attempt_at, created_at)
            SELECT printf('whk_%020d', i), printf('msg_%020d', i), 'bench', 'message.delivered',
              ?, '{"type":"message.delivered","data":{}}', 'pending',
              '2026-01-15T00:00:00.000Z', '2026-01-15T00:00:00.000Z' FROM s""",
            (count, url),
        )


async def fanout(count: int, directory: Path, postgres: str | None) -> dict[str, Any]:
    """Deliver a backlog of `count` webhooks; the receiver's figures."""
    receiver_port, gateway_port = free_port(), free_port()
    url = f"http://127.0.0.1:{receiver_port}/hooks"
    directory = Path(tempfile.mkdtemp(dir=directory))  # a fresh database for each size
    if postgres is None:
        await fill(str(directory / "bench.db"), count, url)
    else:
        await fill_postgres(postgres, count, url)
    env = gateway_env(directory, "http://127.0.0.1:9/api/v2/sms/send", gateway_port)
    if postgres is not None:
        env["GATEWAY_DATABASE"] = postgres
    env["GATEWAY_CALLBACK_ALLOWED_NETWORKS"] = "127.0.0.0/8"
    receiver = ["-m", "bench.servers", "receiver", str(receiver_port)]
    async with (
        process(receiver, receiver_port, ready_path="/stats"),
        aiohttp.ClientSession() as http,
    ):
        started = time.monotonic()
        async with process(["-m", "gateway", "serve"], gateway_port, env) as gateway:
            cpu_before = cpu_seconds(gateway.pid)  # (its start-up excluded)
            while True:
                async with http.get(f"http://127.0.0.1:{receiver_port}/stats") as resp:
                    stats: dict[str, Any] = await resp.json()
                if stats["count"] >= count or time.monotonic() - started > 600:
                    break
                await asyncio.sleep(0.2)
            stats["cpu"] = (cpu_seconds(gateway.pid) - cpu_before) / max(stats["count"], 1)
    span = (stats["last"] or 0) - (stats["first"] or 0)
    stats["rate"] = stats["count"] / span if span > 0 else 0.0
    return stats


async def main_async(sizes: list[int], server: str) -> int:
    met = True
    for kind in ("SQLite", "PostgreSQL") if server != "off" else ("SQLite",):
        rates: dict[int, float] = {}
        with tempfile.TemporaryDirectory() as tmp:
            for size in sizes:
                if kind == "SQLite":
                    stats = await fanout(size, Path(tmp), None)
                else:
                    async with pg_database(server) as url:
                        stats = await fanout(size, Path(tmp), url)
                rates[size] = stats["rate"]
                print(
                    f"{kind}, {size:,} waiting: {stats['count']:,} delivered at"
                    f" {stats['rate']:,.0f}/s, {stats['twice']} twice,"
                    f" gateway CPU {stats['cpu'] * 1e6:,.0f} µs a webhook",
                    flush=True,
                )
                met = met and stats["twice"] == 0
        low, high = min(sizes), max(sizes)
        ratio = rates[high] / rates[low] if rates[low] else 0.0
        met = met and ratio >= 0.8 and (kind != "SQLite" or rates[low] >= 2000)
        print(f"{kind}: rate at {high:,} / rate at {low:,}: {ratio:.2f} (target >= 0.8)")
    return 0 if met else 3


def main() -> None:
    sizes_main("python -m bench.fanout", __doc__, main_async)


if __name__ == "__main__":
    main()
