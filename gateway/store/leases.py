"""Process leases: who is alive, and sweeping what a process that died left in flight."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .db import Row, Sql, Store, Tx
from .keys import KeyAnswer, answer_key
from .reads import batch_messages
from .shared import append_event, now_plus, with_clock


@dataclass(frozen=True)
class Process:
    """One running gateway process as the others see it."""

    id: str
    host: str
    pid: int
    heartbeat_at: str


# A heartbeat that comes more than this share of a lease after the previous one starts a new
# run of renewals: the process (or the database) was away meanwhile.
GAP_SHARE = 0.5

_REGISTER = with_clock(
    "INSERT INTO processes (id, host, pid, started_at, heartbeat_at, renewed_since)"
    " VALUES (?1, ?2, ?3, {now}, {now}, {now}) ON CONFLICT (id) DO UPDATE SET"
    " heartbeat_at = excluded.heartbeat_at, renewed_since = excluded.renewed_since"
    " RETURNING heartbeat_at"
)
_HEARTBEAT = with_clock(
    "UPDATE processes SET renewed_since = CASE WHEN heartbeat_at < {gap} THEN {now}"
    " ELSE renewed_since END, heartbeat_at = {now} WHERE id = ?1 RETURNING heartbeat_at",
    gap=now_plus("-?2"),
)


async def register(store: Store, process_id: str, host: str, pid: int) -> str:
    """Announce this process; its lease runs from now (the database's clock, returned)."""
    row = await store.write(_fetch, _REGISTER, (process_id, host, pid))
    assert row is not None  # an upsert's RETURNING always has its row
    return str(row["heartbeat_at"])


async def heartbeat(store: Store, process_id: str, lease_seconds: float) -> str | None:
    """Renew the lease; the database's time of the renewal, or None if the row was gone
    (others took this process for dead). A renewal that comes more than half a lease after
    the previous one starts a new run: the process could not renew meanwhile."""
    row = await store.write(_fetch, _HEARTBEAT, (process_id, float(lease_seconds) * GAP_SHARE))
    return None if row is None else str(row["heartbeat_at"])


async def _fetch(tx: Tx, sql: Sql, params: tuple[Any, ...]) -> Row | None:
    return await tx.fetchone(sql, params)


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


_ABANDON = Sql(
    *(
        "UPDATE messages SET status = 'unknown', owner = NULL, error_code = 'interrupted',"  # noqa: S608 - fixed SQL fragments only
        " error_detail = 'the gateway could not store the provider''s answer in time',"
        f" events = {append} WHERE batch_id = ?2 AND status = 'sending' AND owner = ?3"
        for append in append_event("'unknown'", "?1")
    )
)


_ABANDONED_KEYS = (
    "SELECT team_id, key FROM idempotency WHERE batch_id = ? AND state = 'in_flight' AND owner = ?"
)


async def _abandon(tx: Tx, owner: str, batch_id: str, at: str, answer_for: AnswerFor) -> int:
    messages = await tx.execute(_ABANDON, (at, batch_id, owner))
    keys = await tx.fetchall(_ABANDONED_KEYS, (batch_id, owner))
    for team_id, key in keys:
        stored = await batch_messages(tx, team_id, batch_id)
        await answer_key(tx, team_id, key, answer_for(batch_id, stored))
    return messages


async def abandon(store: Store, owner: str, batch_id: str, at: str, answer_for: AnswerFor) -> int:
    """What a sweep would do to one batch, done by its own process: its rows still `sending`
    under `owner` become `unknown` (`interrupted`, still charged) and its in-flight key gets
    `answer_for(...)`. For an outcome that could not be stored within its window: nothing stays
    `sending` under a live process forever. How many messages changed."""
    return await store.write(_abandon, owner, batch_id, at, answer_for)


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


# A lease lapsed when its process has not renewed it for a whole lease while the database
# took writes: the sweeper's own renewals, unbroken for a lease, prove that it did. After an
# outage longer than the lease nobody could renew, so nobody is swept for being late until
# every process has had a lease's time to renew again.
_LAPSED = with_clock(
    "DELETE FROM processes WHERE id != ?1 AND heartbeat_at < {lapsed} AND EXISTS ("
    "SELECT 1 FROM processes AS me WHERE me.id = ?1 AND me.renewed_since <= {lapsed})",
    lapsed=now_plus("-?2"),
)


_UNCLAIM = (
    "UPDATE webhooks SET claimed_by = NULL, claim_until = NULL WHERE claim_until IS NOT NULL"
    " AND claimed_by NOT IN (SELECT id FROM processes)"
)
_ORPHAN_KEYS = (
    "SELECT team_id, key, batch_id FROM idempotency WHERE state = 'in_flight'"
    " AND (owner IS NULL OR owner NOT IN (SELECT id FROM processes))"
)


async def _sweep(
    tx: Tx,
    me: str,
    lease_seconds: float,
    dead: Sequence[str],
    at: str,
    answer_for: AnswerFor,
) -> Swept:
    gone = await tx.execute(_LAPSED, (me, float(lease_seconds)))
    for process_id in dead:
        if process_id != me:
            gone += await tx.execute("DELETE FROM processes WHERE id = ?", (process_id,))
    messages = await tx.execute(_INTERRUPT, (at,))
    # Webhooks a dead process was delivering are anyone's again (it may have delivered them:
    # at least once, the receivers tell repeats apart by webhook-id).
    await tx.execute(_UNCLAIM)
    keys = await tx.fetchall(_ORPHAN_KEYS)
    for team_id, key, batch_id in keys:
        stored = await batch_messages(tx, team_id, batch_id) if batch_id else []
        answer = answer_for(batch_id, stored)
        await answer_key(tx, team_id, key, answer)
    return Swept(gone, messages, len(keys))


async def sweep(
    store: Store,
    me: str,
    lease_seconds: float,
    dead: Sequence[str],
    at: str,
    answer_for: AnswerFor,
) -> Swept:
    """In one transaction: forget processes whose lease lapsed (by the database's clock: no
    renewal for `lease_seconds` while `me` renewed without a gap) or that are known dead, move
    the messages they were sending to `unknown` (`interrupted`; still charged, as the provider
    may have sent them) and give their in-flight Idempotency-Keys `answer_for(...)`."""
    return await store.write(_sweep, me, lease_seconds, tuple(dead), at, answer_for)
