"""Idempotency-Keys: the answer a key replays, freeing a key whose answer sent nothing, and
forgetting old ones."""

from __future__ import annotations

from dataclasses import dataclass

from .db import Sql, Store, Tx
from .shared import now_plus, with_clock


@dataclass(frozen=True)
class KeyAnswer:
    """The answer an Idempotency-Key replays while it lives."""

    status: int
    content_type: str
    body: bytes


async def stored_answer(tx: Tx, team_id: str, key: str) -> KeyAnswer | None:
    """The answer an Idempotency-Key already holds, if it was answered."""
    row = await tx.fetchone(
        "SELECT status, content_type, body FROM idempotency WHERE team_id = ? AND key = ?"
        " AND state = 'done'",
        (team_id, key),
    )
    if row is None:
        return None
    return KeyAnswer(row["status"], row["content_type"], row["body"].encode())


async def answer_key(tx: Tx, team_id: str, key: str, answer: KeyAnswer) -> bool:
    """Give an in-flight Idempotency-Key its answer (replayed while the key lives); False if
    the key was not in flight (answered already)."""
    return bool(
        await tx.execute(
            "UPDATE idempotency SET state = 'done', owner = NULL, status = ?, content_type = ?,"
            " body = ? WHERE team_id = ? AND key = ? AND state = 'in_flight'",
            (answer.status, answer.content_type, answer.body.decode(), team_id, key),
        )
    )


# Oldest first along idempotency_created, so a chunk reads what it deletes. On PostgreSQL the
# rows are named by ctid: a row-value IN (subquery) there is planned as a hash join over the
# whole table (tests/test_worker_plans.py).
_FORGET = with_clock(
    "DELETE FROM idempotency WHERE {match}(SELECT {columns} FROM idempotency"
    " WHERE created_at < {expired} AND state = 'done' ORDER BY created_at LIMIT ?2){close}",
    expired=now_plus("-?1"),
    match=Sql("(team_id, key) IN ", "ctid = ANY(ARRAY"),
    columns=Sql("team_id, key", "ctid"),
    close=Sql("", ")"),
)


async def release_key(tx: Tx, team_id: str, key: str, batch_id: str) -> bool:
    """Free an in-flight Idempotency-Key that `batch_id` claimed, whose answer says nothing was
    sent: the retry with the same key runs for real. False if it was not in flight (answered
    already, or claimed by another request)."""
    return bool(
        await tx.execute(
            "DELETE FROM idempotency WHERE team_id = ? AND key = ? AND batch_id = ?"
            " AND state = 'in_flight'",
            (team_id, key, batch_id),
        )
    )


async def forget_expired_keys(store: Store, window: float, chunk: int = 2000) -> int:
    """Delete answered Idempotency-Keys older than `window` seconds (the database's clock);
    how many.

    An hour of keys can be many rows, and writes run on the event loop's thread, so they go
    `chunk` at a time, each its own write, with sends in between.
    """
    deleted = 0
    while True:
        count = await store.run(_FORGET, (float(window), chunk))
        deleted += count
        if count < chunk:
            return deleted
