"""What the dashboard reads beyond the API's own queries, and its server-side sessions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .db import Store
from .endpoints import attempt_log
from .outbox import webhook_resource
from .reads import ListFilter, list_query
from .rows import resource


async def session_data(store: Store, id_hash: str, now: str) -> str | None:
    """A live session's data, or None."""
    row = await store.fetchone(
        "SELECT data FROM dashboard_sessions WHERE id_hash = ? AND expires_at > ?", (id_hash, now)
    )
    return row["data"] if row else None


async def save_session(store: Store, id_hash: str, data: str, expires_at: str) -> None:
    """Create or update a session."""
    await store.run(
        "INSERT INTO dashboard_sessions (id_hash, data, expires_at) VALUES (?, ?, ?)"
        " ON CONFLICT (id_hash) DO UPDATE SET data = excluded.data,"
        " expires_at = excluded.expires_at",
        (id_hash, data, expires_at),
    )


async def end_session(store: Store, id_hash: str, now: str) -> None:
    """End a session, and forget every expired one."""
    await store.run(
        "DELETE FROM dashboard_sessions WHERE id_hash = ? OR expires_at <= ?", (id_hash, now)
    )


@dataclass(frozen=True)
class StatusCount:
    """Messages of one status created in a window, and what they cost."""

    status: str
    messages: int
    cost: int


async def status_counts(store: Store, min_id: str) -> list[StatusCount]:
    """Real messages (not a test token's) created since the ULID `min_id`, across teams, by
    status."""
    rows = await store.fetchall(
        "SELECT status, COUNT(*) AS n, CAST(SUM(cost) AS BIGINT) AS cost FROM messages"
        " WHERE id >= ? AND test = 0"
        " GROUP BY status ORDER BY status",
        (min_id,),
    )
    return [StatusCount(r["status"], r["n"], r["cost"] or 0) for r in rows]


async def test_sends(store: Store, min_id: str) -> int:
    """A test token's messages created since `min_id`, across teams (shown apart)."""
    row = await store.fetchone(
        "SELECT COUNT(*) AS n FROM messages WHERE test = 1 AND id >= ?", (min_id,)
    )
    return int(row["n"]) if row else 0


async def hourly(store: Store, min_id: str) -> list[tuple[str, str, int]]:
    """(UTC hour 'YYYY-MM-DDTHH', status, messages) for messages created since `min_id`."""
    rows = await store.fetchall(
        "SELECT substr(created_at, 1, 13) AS hour, status, COUNT(*) AS n FROM messages"
        " WHERE id >= ? GROUP BY 1, 2",
        (min_id,),
    )
    return [(r["hour"], r["status"], r["n"]) for r in rows]


async def unmatched_reports(store: Store) -> int:
    """Delivery reports no message has claimed (yet)."""
    row = await store.fetchone("SELECT COUNT(*) AS n FROM dlr_reports WHERE outcome IS NULL")
    return int(row["n"]) if row else 0


async def daily_usage(store: Store, team_id: str, month: str) -> dict[str, tuple[int, int]]:
    """The team's (segments, cost) per day of `month`, from the usage counters."""
    rows = await store.fetchall(
        "SELECT period, segments, cost FROM usage WHERE team_id = ? AND period > ?"
        " AND period < ? AND length(period) = 10",
        (team_id, month, month + "-~"),
    )
    return {r["period"]: (r["segments"], r["cost"]) for r in rows}


async def find_message(store: Store, message_id: str) -> tuple[str, dict[str, Any]] | None:
    """(team, message object) for any team's message, or None."""
    row = await store.fetchone("SELECT * FROM messages WHERE id = ?", (message_id,))
    return (row["team_id"], resource(row)) if row else None


async def message_webhooks(store: Store, message_id: str) -> list[dict[str, Any]]:
    """The deliveries queued for one message, oldest first, each with its attempt log (`log`)."""
    rows = await store.fetchall(
        "SELECT * FROM webhooks WHERE message_id = ? ORDER BY id", (message_id,)
    )
    return [{**webhook_resource(r), "log": attempt_log(r)} for r in rows]


async def list_messages(
    store: Store, team_id: str | None, f: ListFilter
) -> list[tuple[str, dict[str, Any]]]:
    """A page of (team, message), newest first, with the API's filters; any team if None."""
    sql, params = list_query(team_id, f)
    return [(r["team_id"], resource(r)) for r in await store.fetchall(sql, params)]
