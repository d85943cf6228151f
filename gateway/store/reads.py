"""Reading messages: one, a batch, and the keyset-paged list with its filters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .db import Row, Store, Tx
from .rows import resource


async def batch_messages(tx: Tx, team_id: str, batch_id: str) -> list[dict[str, Any]]:
    """The batch's messages as stored, in the order they were stored (inside a transaction;
    a batch's ids are made in increasing order)."""
    rows = await tx.fetchall(
        "SELECT * FROM messages WHERE team_id = ? AND batch_id = ? ORDER BY id",
        (team_id, batch_id),
    )
    return [resource(r) for r in rows]


async def get_row(tx: Tx, team_id: str, message_id: str) -> Row | None:
    """One of the team's message rows, in a transaction (another team's id is None)."""
    return await tx.fetchone(
        "SELECT * FROM messages WHERE id = ? AND team_id = ?", (message_id, team_id)
    )


async def get_message(store: Store, team_id: str, message_id: str) -> dict[str, Any] | None:
    """One of the team's messages, or None (another team's id is None too)."""
    row = await store.fetchone(
        "SELECT * FROM messages WHERE id = ? AND team_id = ?", (message_id, team_id)
    )
    return resource(row) if row else None


async def get_batch(store: Store, team_id: str, batch_id: str) -> list[dict[str, Any]]:
    """The messages of one batch in the order they were stored."""
    rows = await store.fetchall(
        "SELECT * FROM messages WHERE team_id = ? AND batch_id = ? ORDER BY id",
        (team_id, batch_id),
    )
    return [resource(r) for r in rows]


@dataclass(frozen=True)
class ListFilter:
    """GET /messages filters, already validated; `min_id`/`max_id` bound the ULID range."""

    status: str | None = None
    to: str | None = None
    reference: str | None = None
    batch_id: str | None = None
    min_id: str | None = None  # inclusive
    max_id: str | None = None  # exclusive
    before_id: str | None = None  # the cursor: exclusive
    limit: int = 50
    test: bool | None = None  # only a test token's sends (True), or only real ones (False)


async def list_messages(store: Store, team_id: str, f: ListFilter) -> list[dict[str, Any]]:
    """Newest first; one more row than `limit` is fetched by the caller to know if more exist."""
    sql, params = list_query(team_id, f)
    return [resource(r) for r in await store.fetchall(sql, params)]


def list_query(team_id: str | None, f: ListFilter) -> tuple[str, list[Any]]:
    """The keyset query for a page: every filter is an equality or an id range on an index
    (with a team; across teams, as the dashboard lists them, a walk down the ids)."""
    clauses = ["team_id = ?"] if team_id is not None else ["1 = 1"]
    params: list[Any] = [team_id] if team_id is not None else []
    for column, value in (
        ("status", f.status),
        ("recipient", f.to),
        ("reference", f.reference),
        ("batch_id", f.batch_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if f.test is not None:  # a literal, so the partial index messages_test can serve it
        clauses.append("test = 1" if f.test else "test = 0")
    if f.min_id is not None:
        clauses.append("id >= ?")
        params.append(f.min_id)
    for bound in (f.max_id, f.before_id):
        if bound is not None:
            clauses.append("id < ?")
            params.append(bound)
    params.append(f.limit)
    sql = f"SELECT * FROM messages WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?"  # noqa: S608
    return sql, params


async def test_counts(store: Store, team_id: str, since: dict[str, str]) -> dict[str, int]:
    """How many test-token messages the team stored since each lower id bound (a period's
    first ULID), on the partial index messages_test."""
    counts: dict[str, int] = {}
    for period, min_id in since.items():
        row = await store.fetchone(
            "SELECT COUNT(*) AS n FROM messages WHERE team_id = ? AND test = 1 AND id >= ?",
            (team_id, min_id),
        )
        counts[period] = int(row["n"]) if row else 0
    return counts
