"""What the workers and the send path ask the database, planned at a million rows on both
databases: each statement walks an index and reads a bounded number of rows, so a claim costs
the same with 50,000 webhooks waiting (a receiver down for a day) as with ten.

The data is a campaign's worth, shaped like production's: 1,000,000 messages (99 % final, some
queued, sending and failed), 1,000,000 webhook deliveries (5 % pending, every one of them due,
a few claimed), 1,000,000 delivery reports (1 % not yet applied), 200,000 Idempotency-Keys.
SQLite is planned as the gateway runs it, without ANALYZE (nothing writes sqlite_stat1);
PostgreSQL after ANALYZE (as autovacuum leaves it), with EXPLAIN ANALYZE counting the rows each
statement really reads, inside a transaction that is rolled back."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest

from gateway.store import endpoints, keys, leases, outbox, queue, retention
from gateway.store.db import Sql, Statement
from gateway.store.postgres import PostgresStore, postgres_sql
from gateway.store.reads import ListFilter, list_query
from gateway.store.sqlite import SqliteStore

from .conftest import _in_thread, drop_postgres_database, new_postgres_database

ROWS = 1_000_000
NOW = "2026-12-02T12:00:00.000Z"
BATCH = "bat_000000000500"  # a batch of 1,000 messages, 3 of them queued
QUEUED_TEAM = "team0"  # the team of batch 500
BIG = ("messages", "webhooks", "dlr_reports", "idempotency")

# (name, statement, parameters, the index SQLite must walk, or None when any index will do)
STATEMENTS: list[tuple[str, Statement, tuple[Any, ...], str | None]] = [
    ("webhook claim", outbox._CLAIM, ("prc_y", 30.0, 16), "webhooks_pending"),
    ("webhook next due", outbox._NEXT_DUE, (), "webhooks_pending"),
    (
        "webhook record",
        outbox._RECORD,
        (
            "pending",
            5.0,
            500,
            "the receiver answered HTTP 500",
            NOW,
            "whk_00000000000000001999",
            "prc_x",
            '{"attempt":1,"http_status":500}',
        ),
        None,
    ),
    (
        "webhook fan-out",
        outbox._FAN_OUT,
        ("whk_1", "msg_1", "team0", "message.delivered", "{}", 0.0, NOW, None),
        None,
    ),
    ("endpoint recover", endpoints._RECOVER, ("wep_1", "whk_0", NOW), "webhooks_endpoint"),
    ("endpoint fail pending", endpoints._FAIL_PENDING, ("gone", "wep_1"), "webhooks_endpoint"),
    ("report insert", outbox.INSERT_REPORT, (BATCH, "9999999", "250788000001", "D", NOW), None),
    ("report pending", outbox.PENDING_REPORTS, (BATCH,), "dlr_reports_pending"),
    ("report message", outbox.REPORTED_MESSAGE, (BATCH, "500123"), "messages_batch_provider"),
    ("report finish", outbox._FINISH, ("delivered", NOW, "msg_00000000000000500991"), None),
    ("queue oldest due", queue._OLDEST_DUE, (), "messages_next_attempt"),
    ("queue claim", queue._CLAIM, (NOW, "prc_y", QUEUED_TEAM, BATCH, 100), "messages_team_batch"),
    ("queue next attempt", queue._NEXT_ATTEMPT, (), "messages_next_attempt"),
    ("queue any expiring", queue._ANY_EXPIRING, (), "messages_expiring"),
    ("queue depth", queue._DEPTH, (), None),
    ("queue oldest", queue._OLDEST, (), "messages_waiting_due"),
    ("queue stats", queue._STATS, (), None),
    ("sweep messages", leases._INTERRUPT, (NOW,), "messages_sending"),
    ("sweep webhooks", leases._UNCLAIM, (), "webhooks_claimed"),
    ("sweep keys", leases._ORPHAN_KEYS, (), "idempotency_in_flight"),
    ("abandon", leases._ABANDON, (NOW, BATCH, "prc_x"), "messages_batch_provider"),
    ("abandon keys", leases._ABANDONED_KEYS, ("bat_000000000000", "prc_x"), None),
    ("forget keys", keys._FORGET, (86400.0 * 2, 2000), "idempotency_created"),
    *(
        (f"retention {table}", sql, (bound, 2000), None)
        for table, sql in retention._STATEMENTS
        # 5,000 messages old enough (all still with webhooks: the worst case), every report
        for bound in ["msg_00000000000000005000" if table != "dlr_reports" else NOW]
    ),
]

# The API's list, for one team at a million rows: the first page of each filter.
_LIST_FILTERS: dict[str, dict[str, Any]] = {
    "none": {},
    "status": {"status": "delivered"},
    "to": {"to": "250788000500"},
    "batch": {"batch_id": BATCH},
    "status+before": {"status": "delivered", "before_id": "msg_00000000000000900000"},
    "test": {"test": True},
}
for _name, _filter in _LIST_FILTERS.items():
    _sql, _params = list_query("team0", ListFilter(limit=51, **_filter))
    STATEMENTS.append((f"list {_name}", _sql, tuple(_params), None))

_SQLITE_FILL = [
    "INSERT INTO teams (id, name, webhook_secret, created_at) VALUES "
    + ",".join(
        f"('team{i}', 'Team {i}', 'whsec_x', '2026-01-01T00:00:00.000Z')" for i in range(10)
    ),
    # i % 1000: 0-989 delivered, 990-994 sent, 995-997 queued, 998 sending, 999 failed
    """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < :n)
    INSERT INTO messages (id, batch_id, team_id, recipient, text, status, segments, encoding,
      charged_segments, cost, provider_message_id, day, month, created_at, events, owner,
      due_at, next_attempt_at, expires_at)
    SELECT printf('msg_%020d', i), printf('bat_%012d', i / 1000), 'team' || (i / 1000 % 10),
      printf('250788%06d', i), 'Your code is 4821',
      CASE WHEN i % 1000 < 990 THEN 'delivered' WHEN i % 1000 < 995 THEN 'sent'
           WHEN i % 1000 < 998 THEN 'queued' WHEN i % 1000 < 999 THEN 'sending'
           ELSE 'failed' END,
      1, 'gsm7', 1, 75, CAST(i AS TEXT), '2026-11-30', '2026-11',
      strftime('%Y-%m-%dT%H:%M:%fZ', '2026-11-01', '+' || (i / 1000) || ' minutes'), '[]',
      CASE WHEN i % 1000 = 998 THEN 'prc_x' END,
      CASE WHEN i % 1000 BETWEEN 995 AND 997 THEN '2026-12-01T00:00:00.000Z' END,
      CASE WHEN i % 1000 BETWEEN 995 AND 997
        THEN strftime('%Y-%m-%dT%H:%M:%fZ', '2026-12-01', '+' || (i % 7) || ' hours') END,
      CASE WHEN i % 1000 BETWEEN 995 AND 997 THEN '2027-01-01T00:00:00.000Z' END
    FROM s""",
    """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < :n)
    INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status, attempts,
      next_attempt_at, created_at, claimed_by, claim_until)
    SELECT printf('whk_%020d', i), printf('msg_%020d', i), 'team' || (i / 1000 % 10),
      'message.delivered', 'http://127.0.0.1:9/hooks', '{}',
      CASE WHEN i % 100 < 95 THEN 'delivered' ELSE 'pending' END, 1,
      CASE WHEN i % 100 >= 95
        THEN strftime('%Y-%m-%dT%H:%M:%fZ', '2026-12-01', '+' || (i % 5000) || ' seconds') END,
      strftime('%Y-%m-%dT%H:%M:%fZ', '2026-11-01', '+' || (i / 1000) || ' minutes'),
      CASE WHEN i % 2000 = 1999 THEN 'prc_x' END,
      CASE WHEN i % 2000 = 1999 THEN '2026-12-01T00:05:00.000Z' END
    FROM s""",
    """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < :n)
    INSERT INTO dlr_reports (batch_id, provider_message_id, recipient, state, received_at,
      outcome, message_id)
    SELECT printf('bat_%012d', i / 1000), CAST(i AS TEXT), printf('250788%06d', i), 'D',
      strftime('%Y-%m-%dT%H:%M:%fZ', '2026-11-01', '+' || (i / 1000) || ' minutes'),
      CASE WHEN i % 100 = 0 THEN NULL ELSE 'applied' END, printf('msg_%020d', i)
    FROM s""",
    """WITH RECURSIVE s(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM s WHERE i + 1 < :n / 5)
    INSERT INTO idempotency (team_id, key, request_hash, batch_id, state, created_at, owner)
    SELECT 'team' || (i % 10), printf('key-%09d', i), 'h', printf('bat_%012d', i),
      CASE WHEN i % 1000 = 0 THEN 'in_flight' ELSE 'done' END,
      strftime('%Y-%m-%dT%H:%M:%fZ', '2026-11-20', '+' || (i / 10) || ' seconds'),
      CASE WHEN i % 1000 = 0 THEN 'prc_x' END
    FROM s""",
    "INSERT INTO processes (id, host, pid, started_at, heartbeat_at, renewed_since) VALUES"
    " ('prc_x', 'h', 1, '2026-12-01T00:00:00.000Z', '2026-12-01T00:00:00.000Z',"
    " '2026-12-01T00:00:00.000Z')",
]


def _postgres_fill() -> list[str]:
    """The same rows for PostgreSQL: generate_series for the recursion, to_char for strftime."""

    def ts(base: str, step: str) -> str:
        return f"to_char(timestamp '{base}' + {step}, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"

    def pad(prefix: str, expr: str, width: int) -> str:
        return f"'{prefix}' || lpad(({expr})::text, {width}, '0')"

    minutes = ts("2026-11-01", "(i / 1000) * interval '1 minute'")
    return [
        _SQLITE_FILL[0],
        f"""INSERT INTO messages (id, batch_id, team_id, recipient, text, status, segments,
          encoding, charged_segments, cost, provider_message_id, day, month, created_at, events,
          owner, due_at, next_attempt_at, expires_at)
        SELECT {pad("msg_", "i", 20)}, {pad("bat_", "i / 1000", 12)}, 'team' || (i / 1000 % 10),
          {pad("250788", "i", 6)}, 'Your code is 4821',
          CASE WHEN i % 1000 < 990 THEN 'delivered' WHEN i % 1000 < 995 THEN 'sent'
               WHEN i % 1000 < 998 THEN 'queued' WHEN i % 1000 < 999 THEN 'sending'
               ELSE 'failed' END,
          1, 'gsm7', 1, 75, i::text, '2026-11-30', '2026-11', {minutes}, '[]',
          CASE WHEN i % 1000 = 998 THEN 'prc_x' END,
          CASE WHEN i % 1000 BETWEEN 995 AND 997 THEN '2026-12-01T00:00:00.000Z' END,
          CASE WHEN i % 1000 BETWEEN 995 AND 997
            THEN {ts("2026-12-01", "(i % 7) * interval '1 hour'")} END,
          CASE WHEN i % 1000 BETWEEN 995 AND 997 THEN '2027-01-01T00:00:00.000Z' END
        FROM generate_series(0, {ROWS - 1}) AS i""",
        f"""INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status, attempts,
          next_attempt_at, created_at, claimed_by, claim_until)
        SELECT {pad("whk_", "i", 20)}, {pad("msg_", "i", 20)}, 'team' || (i / 1000 % 10),
          'message.delivered', 'http://127.0.0.1:9/hooks', '{{}}',
          CASE WHEN i % 100 < 95 THEN 'delivered' ELSE 'pending' END, 1,
          CASE WHEN i % 100 >= 95
            THEN {ts("2026-12-01", "(i % 5000) * interval '1 second'")} END,
          {minutes},
          CASE WHEN i % 2000 = 1999 THEN 'prc_x' END,
          CASE WHEN i % 2000 = 1999 THEN '2026-12-01T00:05:00.000Z' END
        FROM generate_series(0, {ROWS - 1}) AS i""",
        f"""INSERT INTO dlr_reports (batch_id, provider_message_id, recipient, state,
          received_at, outcome, message_id)
        SELECT {pad("bat_", "i / 1000", 12)}, i::text, {pad("250788", "i", 6)}, 'D', {minutes},
          CASE WHEN i % 100 = 0 THEN NULL ELSE 'applied' END, {pad("msg_", "i", 20)}
        FROM generate_series(0, {ROWS - 1}) AS i""",
        f"""INSERT INTO idempotency (team_id, key, request_hash, batch_id, state, created_at,
          owner)
        SELECT 'team' || (i % 10), {pad("key-", "i", 9)}, 'h', {pad("bat_", "i", 12)},
          CASE WHEN i % 1000 = 0 THEN 'in_flight' ELSE 'done' END,
          {ts("2026-11-20", "(i / 10) * interval '1 second'")},
          CASE WHEN i % 1000 = 0 THEN 'prc_x' END
        FROM generate_series(0, {ROWS // 5 - 1}) AS i""",
        _SQLITE_FILL[-1],
        "ANALYZE",
    ]


@pytest.fixture(scope="module")
def sqlite_campaign(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = str(tmp_path_factory.mktemp("plans") / "campaign.db")

    async def migrate() -> None:
        store = SqliteStore(path)
        await store.open()
        await store.close()

    asyncio.run(migrate())
    with sqlite3.connect(path) as conn:
        for sql in _SQLITE_FILL:
            conn.execute(sql, {"n": ROWS} if ":n" in sql else {})
    return path


@pytest.fixture(scope="module")
def postgres_campaign(postgres_server: str) -> Iterator[str]:
    url = new_postgres_database(postgres_server)

    async def fill() -> None:
        store = PostgresStore(url)
        await store.open()  # the real migrations
        await store.close()
        conn = await asyncpg.connect(url)
        try:
            for sql in _postgres_fill():
                await conn.execute(sql)
        finally:
            await conn.close()

    _in_thread(fill)
    yield url
    drop_postgres_database(postgres_server, url)


def _text(statement: Statement, dialect: str) -> str:
    if isinstance(statement, Sql):
        return statement.sqlite if dialect == "sqlite" else statement.postgresql
    return statement


@pytest.mark.parametrize(
    ("statement", "params", "index"), [s[1:] for s in STATEMENTS], ids=[s[0] for s in STATEMENTS]
)
def test_sqlite_walks_an_index_with_no_sort_over_the_backlog(
    sqlite_campaign: str, statement: Statement, params: tuple[Any, ...], index: str | None
) -> None:
    with sqlite3.connect(sqlite_campaign) as conn:
        rows = conn.execute(f"EXPLAIN QUERY PLAN {_text(statement, 'sqlite')}", params)
        plan = " | ".join(row[3] for row in rows)
        partial = {  # a scan of a partial index reads only its few rows (waiting, in flight)
            name
            for name, sql in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index'"
            )
            if sql and " WHERE " in sql
        }
    for scan in re.finditer(r"\bSCAN (\w+)(?: USING (?:COVERING )?INDEX (\w+))?", plan):
        table, index_used = scan.groups()
        assert table not in (*BIG, "m", "w") or index_used in partial, plan
    assert "TEMP B-TREE" not in plan, plan
    if index is not None:
        assert index in plan, plan


def _nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _nodes(child)


@pytest.mark.postgresql
@pytest.mark.parametrize(
    ("statement", "params"), [s[1:3] for s in STATEMENTS], ids=[s[0] for s in STATEMENTS]
)
def test_postgresql_reads_a_bounded_number_of_rows(
    postgres_campaign: str, statement: Statement, params: tuple[Any, ...]
) -> None:
    async def explain() -> Any:
        conn = await asyncpg.connect(postgres_campaign)
        try:
            transaction = conn.transaction()
            await transaction.start()
            try:
                sql = postgres_sql(_text(statement, "postgresql"))
                return json.loads(
                    await conn.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *params)
                )
            finally:
                await transaction.rollback()
        finally:
            await conn.close()

    (result,) = _in_thread(explain)
    nodes = list(_nodes(result["Plan"]))
    described = json.dumps(result["Plan"])[:4000]
    for node in nodes:
        assert not (node["Node Type"] == "Seq Scan" and node.get("Relation Name") in BIG), described
        if node["Node Type"] == "Sort":
            assert node["Actual Rows"] <= 2000, described  # a few rows, never the backlog
    read = sum(
        (n.get("Actual Rows", 0) + n.get("Rows Removed by Filter", 0)) * n.get("Actual Loops", 1)
        for n in nodes
        if "Scan" in n["Node Type"] and n.get("Relation Name") in BIG
    )
    assert read <= 10_000, (read, described)  # of 1,000,000
