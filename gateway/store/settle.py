"""Settling message rows: their new state, their charge and the usage counters that move with
them, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import outbox
from .db import Sql, Store, Tx
from .errors import Refused
from .messages import Batch, NewMessage
from .rows import message_object
from .shared import append_event
from .usage import UsageDelta, bump


@dataclass(frozen=True)
class Outcome:
    """How one message settles: its new state and what it is charged from now on."""

    message_id: str
    status: str  # sent | failed | unknown
    at: str
    charged_segments: int
    cost: int
    provider_message_id: str | None = None
    error_code: str | None = None
    error_detail: str | None = None


# An `unknown` message that a lapsed lease or a busy database left behind: the real outcome,
# when its sender still has it, replaces it.
CATCH_UP_CODES = ("interrupted", "outcome_pending")


def _counts(charged_segments: int, cost: int) -> int:
    """Whether a message counts as sent for billing: it is charged something."""
    return int(charged_segments > 0 or cost > 0)


def _in_memory(batch: Batch, message: NewMessage, o: Outcome) -> dict[str, Any]:
    """What `_settle` wrote for one message, without reading it back."""
    return message_object(
        id=message.id,
        batch_id=batch.batch_id,
        to=message.recipient,
        text=batch.text,
        sender=batch.sender,
        reference=batch.reference,
        status=o.status,
        segments=message.segments,
        encoding=batch.encoding,
        cost=o.cost,
        provider_message_id=o.provider_message_id,
        error_code=o.error_code,
        error_detail=o.error_detail,
        created_at=batch.created_at,
        sent_at=o.at if o.status == "sent" else None,
        completed_at=o.at if o.status == "failed" else None,
        events=[{"status": "sending", "at": batch.created_at}, {"status": o.status, "at": o.at}],
        metadata=batch.metadata,
        test=batch.test,
    )


def _settle_statement(condition: str) -> Sql:
    event = append_event("?1", "?7")
    return Sql(
        *(
            "UPDATE messages SET status = ?1, charged_segments = ?2, cost = ?3,"  # noqa: S608 - fixed SQL fragments only
            " provider_message_id = ?4, error_code = ?5, error_detail = ?6, owner = NULL,"
            " sent_at = CASE WHEN ?1 = 'sent' THEN ?7 ELSE sent_at END,"
            " completed_at = CASE WHEN ?1 = 'failed' THEN ?7 ELSE completed_at END,"
            # a failed message is final: a drop-in client's DLR target is no longer needed
            " client_dlr = CASE WHEN ?1 = 'failed' THEN NULL ELSE client_dlr END,"
            f" events = {append} WHERE id = ?8 AND {condition}"
            for append in event
        )
    )


_SETTLE_OWNED = _settle_statement("status = 'sending' AND owner = ?9")


_SETTLE_CAUGHT_UP = _settle_statement("status = 'unknown' AND error_code = ?9")


def as_queued(batch: Batch) -> list[dict[str, Any]]:
    """A queued batch's messages as its reservation stores them (the 202 built from memory)."""
    return [
        message_object(
            id=m.id,
            batch_id=batch.batch_id,
            to=m.recipient,
            text=batch.text,
            sender=batch.sender,
            reference=batch.reference,
            status=batch.status,
            segments=m.segments,
            encoding=batch.encoding,
            cost=m.cost,
            provider_message_id=None,
            error_code=None,
            error_detail=None,
            created_at=batch.created_at,
            sent_at=None,
            completed_at=None,
            events=[{"status": batch.status, "at": batch.created_at}],
            metadata=batch.metadata,
            test=batch.test,
        )
        for m in batch.messages
    ]


def as_settled(batch: Batch, outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """The batch's messages as these outcomes leave them (the answer built from memory)."""
    reserved = {m.id: m for m in batch.messages}
    return [_in_memory(batch, reserved[o.message_id], o) for o in outcomes]


_SETTLE_SENT_GROUP = "gateway_settle_sent_group"


async def settle_sent(store: Store, owner: str, batch: Batch, outcomes: Sequence[Outcome]) -> bool:
    """On PostgreSQL, settle a batch whose messages all went out (`sent`, no error) in one
    server-side call shared with the other batches settling at the same moment
    (gateway_settle_sent_group, postgres_11.sql: the same rows and counters as settle_rows);
    False when it cannot be done so (SQLite, another kind of outcome, a delivery report
    already waiting, a row not `sending` under `owner`), and nothing was changed: the caller
    settles the general way."""
    if store.kind != "postgresql" or not outcomes or batch.test:
        return False
    if any(o.status != "sent" or o.error_code or o.error_detail for o in outcomes):
        return False
    reserved = {m.id: m for m in batch.messages}
    item = {
        "owner": owner,
        "batch": batch.batch_id,
        "team": batch.team_id,
        "month": batch.month,
        "day": batch.day,
        "at": outcomes[0].at,
        "rows": [
            {
                "id": o.message_id,
                "provider_id": o.provider_message_id,
                "charged": o.charged_segments,
                "cost": o.cost,
                "reserved_segments": reserved[o.message_id].segments,
                "reserved_cost": reserved[o.message_id].cost,
            }
            for o in outcomes
        ],
    }
    try:
        await store.call_grouped(_SETTLE_SENT_GROUP, item)
    except Refused:
        return False
    return True


async def settle_rows(tx: Tx, owner: str, batch: Batch, outcomes: Sequence[Outcome]) -> set[str]:
    """Apply outcomes to the rows `owner` is sending (or that wait to catch up) and move the
    counters by exactly what those rows' charges change, in the caller's transaction; the ids
    of the rows changed (a row already settled, here or by another process, is left alone)."""
    await outbox.lock_batch(tx, batch.batch_id)  # its delivery reports go first or after
    reserved = {m.id: m for m in batch.messages}
    changed: set[str] = set()
    delta = UsageDelta()
    for o in outcomes:
        values = (
            o.status,
            o.charged_segments,
            o.cost,
            o.provider_message_id,
            o.error_code,
            o.error_detail,
            o.at,
            o.message_id,
        )
        if await tx.execute(_SETTLE_OWNED, (*values, owner)):
            # a row `sending` under its owner's lease still carries exactly its reservation
            was_segments, was_cost = reserved[o.message_id].segments, reserved[o.message_id].cost
        else:
            row = await tx.fetchone(
                "SELECT status, error_code, charged_segments, cost FROM messages WHERE id = ?",
                (o.message_id,),
            )
            if (
                row is None
                or row["status"] != "unknown"
                or row["error_code"] not in CATCH_UP_CODES
                or not await tx.execute(_SETTLE_CAUGHT_UP, (*values, row["error_code"]))
            ):
                continue  # settled already, or by another process: a row settles once
            was_segments, was_cost = row["charged_segments"], row["cost"]
        delta.messages += _counts(o.charged_segments, o.cost) - _counts(was_segments, was_cost)
        delta.segments += o.charged_segments - was_segments
        delta.cost += o.cost - was_cost
        changed.add(o.message_id)
    if not batch.test:  # a test token's send is in no counter
        await bump(tx, batch.team_id, {batch.day: delta, batch.month: delta})
    return changed
