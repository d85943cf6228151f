"""Process leases: who is alive, and sweeping what a process that died left in flight."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .db import Sql, Store, Tx
from .messages import KeyAnswer, answer_key, batch_messages
from .shared import append_event


@dataclass(frozen=True)
class Process:
    """One running gateway process as the others see it."""

    id: str
    host: str
    pid: int
    heartbeat_at: str


async def register(store: Store, process_id: str, host: str, pid: int, at: str) -> None:
    """Announce this process; its lease runs from now."""
    await store.run(
        "INSERT INTO processes (id, host, pid, started_at, heartbeat_at) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
        (process_id, host, pid, at, at),
    )


async def heartbeat(store: Store, process_id: str, at: str) -> bool:
    """Renew the lease; False if the row was gone (others took this process for dead)."""
    return bool(
        await store.run("UPDATE processes SET heartbeat_at = ? WHERE id = ?", (at, process_id))
    )


async def unregister(store: Store, process_id: str) -> None:
    """End the lease now (a clean stop): what is left in flight is swept at once."""
    await store.run("DELETE FROM processes WHERE id = ?", (process_id,))


async def processes(store: Store) -> list[Process]:
    """Every process holding (or having held) a lease."""
    rows = await store.fetchall("SELECT id, host, pid, heartbeat_at FROM processes ORDER BY id")
    return [Process(r["id"], r["host"], r["pid"], r["heartbeat_at"]) for r in rows]


@dataclass(frozen=True)
class Swept:
    """What one sweep changed."""

    processes: int
    messages: int
    keys: int


# A key answered by a sweep: its batch's messages as now stored -> the answer to replay.
AnswerFor = Callable[[str | None, list[dict[str, Any]]], KeyAnswer]


# Rows without an owner were left by a gateway older than leases.
_INTERRUPT = Sql(
    *(
        "UPDATE messages SET status = 'unknown', owner = NULL, error_code = 'interrupted',"  # noqa: S608 - fixed SQL fragments only
        " error_detail = 'the gateway process sending it stopped before the provider''s"
        f" answer was stored', events = {append}"
        " WHERE status = 'sending' AND (owner IS NULL OR owner NOT IN (SELECT id FROM processes))"
        for append in append_event("'unknown'", "?1")
    )
)


async def _sweep(
    tx: Tx,
    me: str,
    lapsed_before: str,
    dead: Sequence[str],
    at: str,
    answer_for: AnswerFor,
) -> Swept:
    gone = await tx.execute(
        "DELETE FROM processes WHERE id != ? AND heartbeat_at < ?", (me, lapsed_before)
    )
    for process_id in dead:
        if process_id != me:
            gone += await tx.execute("DELETE FROM processes WHERE id = ?", (process_id,))
    messages = await tx.execute(_INTERRUPT, (at,))
    # Webhooks a dead process was delivering are anyone's again (it may have delivered them:
    # at least once, the receivers tell repeats apart by webhook-id).
    await tx.execute(
        "UPDATE webhooks SET claimed_by = NULL, claim_until = NULL WHERE claim_until IS NOT NULL"
        " AND claimed_by NOT IN (SELECT id FROM processes)"
    )
    keys = await tx.fetchall(
        "SELECT team_id, key, batch_id FROM idempotency WHERE state = 'in_flight'"
        " AND (owner IS NULL OR owner NOT IN (SELECT id FROM processes))"
    )
    for team_id, key, batch_id in keys:
        stored = await batch_messages(tx, team_id, batch_id) if batch_id else []
        answer = answer_for(batch_id, stored)
        await answer_key(tx, team_id, key, answer)
    return Swept(gone, messages, len(keys))


async def sweep(
    store: Store,
    me: str,
    lapsed_before: str,
    dead: Sequence[str],
    at: str,
    answer_for: AnswerFor,
) -> Swept:
    """In one transaction: forget processes whose lease lapsed (or that are known dead), move
    the messages they were sending to `unknown` (`interrupted`; still charged, as the provider
    may have sent them) and give their in-flight Idempotency-Keys `answer_for(...)`."""
    return await store.write(_sweep, me, lapsed_before, tuple(dead), at, answer_for)
