"""Message rows and the usage counters that move with them, always in one transaction."""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from .. import quota
from . import outbox
from .db import Store
from .rows import resource


@dataclass(frozen=True)
class NewMessage:
    """A message about to be stored as `sending`, with the charge it reserves."""

    id: str
    recipient: str
    segments: int
    cost: int  # reserved estimate


@dataclass(frozen=True)
class Batch:
    """What one POST /messages stores: shared fields plus one NewMessage per recipient."""

    batch_id: str
    team_id: str
    text: str
    sender: str | None
    reference: str | None
    callback_url: str | None
    encoding: str
    day: str
    month: str
    created_at: str
    messages: Sequence[NewMessage]
    client_dlr: str | None = None  # JSON: where a drop-in provider client wants its DLRs


@dataclass(frozen=True)
class IdempotencyClaim:
    """An Idempotency-Key to claim in the reservation's transaction."""

    key: str
    request_hash: str
    live_after: str  # keys created before this instant have expired


@dataclass(frozen=True)
class PriorAnswer:
    """What a live Idempotency-Key already holds: a request in flight, or its first answer."""

    request_hash: str
    in_flight: bool
    status: int | None
    content_type: str | None
    body: str | None


@dataclass(frozen=True)
class Outcome:
    """How the provider's answer settles one message."""

    message_id: str
    status: str  # sent | failed | unknown
    at: str
    charged_segments: int
    cost: int
    provider_message_id: str | None = None
    error_code: str | None = None
    error_detail: str | None = None


def _bump(conn: sqlite3.Connection, rows: list[tuple[str, str, int, int, int]]) -> None:
    """Add (messages, segments, cost) deltas to (team, period) counters."""
    conn.executemany(
        "INSERT INTO usage (team_id, period, messages, segments, cost) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (team_id, period) DO UPDATE SET messages = messages + excluded.messages,"
        " segments = segments + excluded.segments, cost = cost + excluded.cost",
        rows,
    )


def _claimed(conn: sqlite3.Connection, team_id: str, claim: IdempotencyClaim) -> PriorAnswer | None:
    row = conn.execute(
        "SELECT * FROM idempotency WHERE team_id = ? AND key = ?", (team_id, claim.key)
    ).fetchone()
    if row is None:
        return None
    if row["created_at"] < claim.live_after:
        conn.execute("DELETE FROM idempotency WHERE team_id = ? AND key = ?", (team_id, claim.key))
        return None
    return PriorAnswer(
        row["request_hash"],
        row["state"] == "in_flight",
        row["status"],
        row["content_type"],
        row["body"],
    )


class TeamInactive(Exception):
    """The team was disabled (or removed) after its request was authenticated."""


def _reserve(
    conn: sqlite3.Connection, batch: Batch, claim: IdempotencyClaim | None
) -> quota.Refusal | PriorAnswer | None:
    if claim is not None:
        prior = _claimed(conn, batch.team_id, claim)
        if prior is not None:
            return prior
    # The team's limits and its counters for both periods, in one statement.
    team = conn.execute(
        "SELECT t.active, t.daily_limit, t.monthly_limit, t.monthly_budget,"
        " d.segments AS day_segments, m.segments AS month_segments, m.cost AS month_cost"
        " FROM teams t"
        " LEFT JOIN usage d ON d.team_id = t.id AND d.period = ?"
        " LEFT JOIN usage m ON m.team_id = t.id AND m.period = ?"
        " WHERE t.id = ?",
        (batch.day, batch.month, batch.team_id),
    ).fetchone()
    if team is None or not team["active"]:
        raise TeamInactive(batch.team_id)
    segments = sum(m.segments for m in batch.messages)
    cost = sum(m.cost for m in batch.messages)
    limits = quota.Limits(team["daily_limit"], team["monthly_limit"], team["monthly_budget"])
    used = quota.Usage(
        day_segments=team["day_segments"] or 0,
        month_segments=team["month_segments"] or 0,
        month_cost=team["month_cost"] or 0,
    )
    refusal = quota.check(limits, used, segments, cost)
    if refusal is not None:
        return refusal
    if claim is not None:
        conn.execute(
            "INSERT INTO idempotency (team_id, key, request_hash, batch_id, state, created_at)"
            " VALUES (?, ?, ?, ?, 'in_flight', ?)",
            (batch.team_id, claim.key, claim.request_hash, batch.batch_id, batch.created_at),
        )
    count = len(batch.messages)
    _bump(
        conn,
        [
            (batch.team_id, batch.day, count, segments, cost),
            (batch.team_id, batch.month, count, segments, cost),
        ],
    )
    events = json.dumps([{"status": "sending", "at": batch.created_at}])
    conn.executemany(
        "INSERT INTO messages (id, batch_id, team_id, recipient, text, sender, reference,"
        " callback_url, status, segments, encoding, charged_segments, cost, day, month,"
        " created_at, events, client_dlr)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'sending', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (
                m.id,
                batch.batch_id,
                batch.team_id,
                m.recipient,
                batch.text,
                batch.sender,
                batch.reference,
                batch.callback_url,
                m.segments,
                batch.encoding,
                m.segments,
                m.cost,
                batch.day,
                batch.month,
                batch.created_at,
                events,
                batch.client_dlr,
            )
            for m in batch.messages
        ],
    )
    return None


async def reserve(
    store: Store, batch: Batch, claim: IdempotencyClaim | None = None
) -> quota.Refusal | PriorAnswer | None:
    """Check the team's limits, charge the counters and store the messages as `sending`, atomically.

    With an idempotency claim, a live key's prior answer is returned instead (nothing stored);
    otherwise the key is claimed `in_flight` in the same transaction. Returns the refusal (and
    stores nothing, claiming no key) if a limit would be passed. Raises TeamInactive if the team
    was disabled since it was authenticated.
    """
    return await store.write(_reserve, batch, claim)


class Settled(NamedTuple):
    """The batch's messages as the API now shows them, and how many webhooks were queued."""

    messages: list[dict[str, Any]]
    webhooks_queued: int


def _settled_message(batch: Batch, message: NewMessage, o: Outcome) -> dict[str, Any]:
    """What `_settle` wrote for one message, as the API shows it, without reading it back."""
    return {
        "id": message.id,
        "batch_id": batch.batch_id,
        "to": message.recipient,
        "text": batch.text,
        "sender": batch.sender,
        "reference": batch.reference,
        "status": o.status,
        "segments": message.segments,
        "encoding": batch.encoding,
        "cost": o.cost,
        "currency": "RWF",
        "provider_message_id": o.provider_message_id,
        "error": {"code": o.error_code, "detail": o.error_detail} if o.error_code else None,
        "created_at": batch.created_at,
        "sent_at": o.at if o.status == "sent" else None,
        "completed_at": o.at if o.status == "failed" else None,
        "events": [
            {"status": "sending", "at": batch.created_at},
            {"status": o.status, "at": o.at},
        ],
    }


def _settle(
    conn: sqlite3.Connection, batch: Batch, outcomes: Sequence[Outcome], webhook_delay: float
) -> Settled:
    reserved = {m.id: m for m in batch.messages}
    deltas: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    for o in outcomes:
        r = reserved[o.message_id]
        d_messages = int(o.charged_segments > 0 or o.cost > 0) - 1
        for period in (batch.day, batch.month):
            delta = deltas[period]
            delta[0] += d_messages
            delta[1] += o.charged_segments - r.segments
            delta[2] += o.cost - r.cost
    updated = conn.executemany(
        "UPDATE messages SET status = ?, charged_segments = ?, cost = ?,"
        " provider_message_id = ?, error_code = ?, error_detail = ?,"
        " sent_at = CASE WHEN ? = 'sent' THEN ? ELSE sent_at END,"
        " completed_at = CASE WHEN ? = 'failed' THEN ? ELSE completed_at END,"
        " events = json_insert(events, '$[#]', json_object('status', ?, 'at', ?))"
        " WHERE id = ? AND status = 'sending'",
        [
            (
                o.status,
                o.charged_segments,
                o.cost,
                o.provider_message_id,
                o.error_code,
                o.error_detail,
                o.status,
                o.at,
                o.status,
                o.at,
                o.status,
                o.at,
                o.message_id,
            )
            for o in outcomes
        ],
    ).rowcount
    _bump(
        conn,
        [(batch.team_id, period, d[0], d[1], d[2]) for period, d in deltas.items() if any(d)],
    )
    at = outcomes[0].at if outcomes else batch.created_at
    applied = 0
    if any(o.status in ("sent", "unknown") for o in outcomes):
        applied = outbox.apply_pending_reports(conn, batch.batch_id, at, webhook_delay)
    if applied or updated != len(batch.messages):
        # Early delivery reports (or another writer) moved some rows on: read them as stored.
        messages = _batch_messages(conn, batch.team_id, batch.batch_id)
    else:
        messages = [_settled_message(batch, reserved[o.message_id], o) for o in outcomes]
    team_urls: dict[str, str | None] = {}
    queued = applied + sum(
        outbox.enqueue_webhook(
            conn, batch.team_id, m, batch.callback_url, at, webhook_delay, team_urls
        )
        for m in messages
        if m["status"] == "failed"
    )
    return Settled(messages, queued)


def _batch_messages(conn: sqlite3.Connection, team_id: str, batch_id: str) -> list[dict[str, Any]]:
    rows = conn.execute(
        "SELECT * FROM messages WHERE team_id = ? AND batch_id = ? ORDER BY rowid",
        (team_id, batch_id),
    ).fetchall()
    return [resource(r) for r in rows]


async def settle(
    store: Store, batch: Batch, outcomes: Sequence[Outcome], webhook_delay: float = 0.0
) -> Settled:
    """Apply the provider's outcomes and move the counters by the difference to the reservation.

    In the same transaction: webhooks for the messages that failed are queued, and delivery
    reports that arrived before this answer was stored are applied. Returns the batch's
    messages as they now are, and the number of webhooks queued (the worker needs waking
    only if there are some).
    """
    return await store.write(_settle, batch, outcomes, webhook_delay)


async def remember_answer(
    store: Store, team_id: str, key: str, status: int, content_type: str, body: bytes
) -> None:
    """Store the first answer under its Idempotency-Key, to be replayed while the key lives."""
    await store.run(
        "UPDATE idempotency SET state = 'done', status = ?, content_type = ?, body = ?"
        " WHERE team_id = ? AND key = ?",
        (status, content_type, body.decode(), team_id, key),
    )


async def stranded_claims(store: Store) -> list[tuple[str, str, str | None]]:
    """(team, key, batch) of keys left in flight by a process that died mid-send."""
    rows = await store.fetchall(
        "SELECT team_id, key, batch_id FROM idempotency WHERE state = 'in_flight'"
    )
    return [(r["team_id"], r["key"], r["batch_id"]) for r in rows]


async def forget_expired_keys(store: Store, live_after: str, chunk: int = 2000) -> int:
    """Delete Idempotency-Keys created before `live_after`; how many.

    An hour of keys can be many rows, and writes run on the event loop's thread, so they go
    `chunk` at a time, each its own write, with sends in between.
    """
    deleted = 0
    while True:
        count = await store.run(
            "DELETE FROM idempotency WHERE (team_id, key) IN (SELECT team_id, key"
            " FROM idempotency WHERE created_at < ? AND state = 'done' LIMIT ?)",
            (live_after, chunk),
        )
        deleted += count
        if count < chunk:
            return deleted


async def mark_stranded_unknown(store: Store, at: str) -> int:
    """Messages left `sending` by a process that died mid-send become `unknown` (still charged)."""
    return await store.run(
        "UPDATE messages SET status = 'unknown', error_code = 'interrupted',"
        " error_detail = 'the gateway stopped before the provider answered',"
        " events = json_insert(events, '$[#]', json_object('status', 'unknown', 'at', ?))"
        " WHERE status = 'sending'",
        (at,),
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
        "SELECT * FROM messages WHERE team_id = ? AND batch_id = ? ORDER BY rowid",
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


async def list_messages(store: Store, team_id: str, f: ListFilter) -> list[dict[str, Any]]:
    """Newest first; one more row than `limit` is fetched by the caller to know if more exist."""
    sql, params = list_query(team_id, f)
    return [resource(r) for r in await store.fetchall(sql, params)]


def list_query(team_id: str, f: ListFilter) -> tuple[str, list[Any]]:
    """The keyset query for a page: every filter is an equality or an id range on an index."""
    clauses = ["team_id = ?"]
    params: list[Any] = [team_id]
    for column, value in (
        ("status", f.status),
        ("recipient", f.to),
        ("reference", f.reference),
        ("batch_id", f.batch_id),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
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
