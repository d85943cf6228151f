"""Message rows and the usage counters that move with them, always in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..teams import quota
from . import outbox
from .db import Row, Sql, Store, Tx
from .errors import DatabaseBusy, Refused
from .rows import message_object, resource
from .shared import append_event, now_plus, with_clock


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
    status: str = "sending"  # or, for a queued send, `queued` / `scheduled`
    due_at: str | None = None  # scheduled: not sent before this (queued without: from now)
    expires_at: str | None = None  # scheduled: `expired` if still unsent then
    validity: float = 0.0  # queued without send_at: seconds from now (the database's) to expiry

    @property
    def queued(self) -> bool:
        """Whether the dispatcher sends these messages (not the request that stores them)."""
        return self.status != "sending"


@dataclass(frozen=True)
class IdempotencyClaim:
    """An Idempotency-Key to claim in the reservation's transaction."""

    key: str
    request_hash: str
    window: float  # seconds a key lives, from its claim (by the database's clock)
    answer: KeyAnswer | None = None  # known at once (a queued send's 202): stored as the key's


@dataclass(frozen=True)
class PriorAnswer:
    """What a live Idempotency-Key already holds: a request in flight, or its first answer."""

    request_hash: str
    in_flight: bool
    status: int | None
    content_type: str | None
    body: str | None


_CLAIMED = with_clock(
    "SELECT *, created_at < {expired} AS expired FROM idempotency WHERE team_id = ?1 AND key = ?2",
    expired=now_plus("-?3"),
)


async def _claimed(tx: Tx, team_id: str, claim: IdempotencyClaim) -> PriorAnswer | None:
    row = await tx.fetchone(_CLAIMED, (team_id, claim.key, float(claim.window)))
    if row is None:
        return None
    if row["expired"]:
        await tx.execute(
            "DELETE FROM idempotency WHERE team_id = ? AND key = ?", (team_id, claim.key)
        )
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


async def _check(
    tx: Tx, batch: Batch, claim: IdempotencyClaim | None
) -> quota.Refusal | PriorAnswer | quota.Limits:
    """What a reservation finds first: a live key's prior answer, or the limit the send would
    pass, or (it fits) the team's limits. Raises TeamInactive for a disabled team."""
    if claim is not None:
        prior = await _claimed(tx, batch.team_id, claim)
        if prior is not None:
            return prior
    # The team's limits and its counters for both periods, in one statement.
    team = await tx.fetchone(
        "SELECT t.active, t.daily_limit, t.monthly_limit, t.monthly_budget,"
        " d.segments AS day_segments, m.segments AS month_segments, m.cost AS month_cost"
        " FROM teams t"
        " LEFT JOIN usage d ON d.team_id = t.id AND d.period = ?"
        " LEFT JOIN usage m ON m.team_id = t.id AND m.period = ?"
        " WHERE t.id = ?",
        (batch.day, batch.month, batch.team_id),
    )
    if team is None or not team["active"]:
        raise TeamInactive(batch.team_id)
    limits = quota.Limits(team["daily_limit"], team["monthly_limit"], team["monthly_budget"])
    used = quota.Usage(
        day_segments=team["day_segments"] or 0,
        month_segments=team["month_segments"] or 0,
        month_cost=team["month_cost"] or 0,
    )
    segments = sum(m.segments for m in batch.messages)
    cost = sum(m.cost for m in batch.messages)
    return quota.check(limits, used, segments, cost) or limits


def _first_event(batch: Batch) -> str:
    """The messages' timeline as their reservation stores it."""
    return orjson.dumps([{"status": batch.status, "at": batch.created_at}]).decode()


_INSERT_KEY = with_clock(
    "INSERT INTO idempotency (team_id, key, request_hash, batch_id, state, created_at,"
    " owner, status, content_type, body) VALUES (?1, ?2, ?3, ?4, ?5, {now}, ?6, ?7, ?8, ?9)"
)
# A queued message is due from its send_at, or from now; it expires at its send_at's end of
# validity, or `validity` seconds from now: the database's now, which every replica shares.
_INSERT_MESSAGE = with_clock(
    "INSERT INTO messages (id, batch_id, team_id, recipient, text, sender, reference,"
    " callback_url, status, segments, encoding, charged_segments, cost, day, month,"
    " created_at, events, client_dlr, owner, due_at, next_attempt_at, expires_at)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,"
    " ?19, CASE WHEN ?9 = 'sending' THEN NULL ELSE COALESCE(?20, {now}) END,"
    " CASE WHEN ?9 = 'sending' THEN NULL ELSE COALESCE(?20, {now}) END,"
    " CASE WHEN ?9 = 'sending' THEN NULL ELSE COALESCE(?21, {expiry}) END)",
    expiry=now_plus("?22"),
)


async def _reserve(
    tx: Tx, owner: str, batch: Batch, claim: IdempotencyClaim | None
) -> quota.Refusal | PriorAnswer | None:
    """SQLite: read, check and write in one write transaction (BEGIN IMMEDIATE excludes every
    other writer, so nothing moves between the check and the write)."""
    checked = await _check(tx, batch, claim)
    if not isinstance(checked, quota.Limits):
        return checked
    if claim is not None:
        answer = claim.answer
        await tx.execute(
            _INSERT_KEY,
            (
                batch.team_id,
                claim.key,
                claim.request_hash,
                batch.batch_id,
                "in_flight" if answer is None else "done",
                owner if answer is None else None,
                answer.status if answer else None,
                answer.content_type if answer else None,
                answer.body.decode() if answer else None,
            ),
        )
    events = _first_event(batch)
    await tx.executemany(
        _INSERT_MESSAGE,
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
                batch.status,
                m.segments,
                batch.encoding,
                m.segments,
                m.cost,
                batch.day,
                batch.month,
                batch.created_at,
                events,
                batch.client_dlr,
                None if batch.queued else owner,
                batch.due_at,
                batch.expires_at,
                float(batch.validity),
            )
            for m in batch.messages
        ],
    )
    reserved = UsageDelta(
        len(batch.messages),
        sum(m.segments for m in batch.messages),
        sum(m.cost for m in batch.messages),
    )
    await bump(tx, batch.team_id, {batch.month: reserved, batch.day: reserved})
    return None


# PostgreSQL: the same rules in the schema's gateway_reserve_group() (postgres_11.sql), which
# holds the team's counter rows only from its conditional UPDATEs to its own COMMIT. Sends that
# reach the replica together share one call (Store.call_grouped): a send that fits costs a share
# of one round trip, and the reads that explain a refusal come after.
_RESERVE_GROUP = "gateway_reserve_group"
RACE_RETRIES = 20


def _reserve_item(owner: str, batch: Batch, claim: IdempotencyClaim | None) -> dict[str, Any]:
    """One send as gateway_reserve_group() takes it."""
    answer = claim.answer if claim else None
    return {
        "team": batch.team_id,
        "month": batch.month,
        "day": batch.day,
        "messages": len(batch.messages),
        "segments": sum(m.segments for m in batch.messages),
        "cost": sum(m.cost for m in batch.messages),
        "key": claim.key if claim else None,
        "hash": claim.request_hash if claim else None,
        "batch": batch.batch_id,
        "at": batch.created_at,
        "owner": owner,
        "text": batch.text,
        "sender": batch.sender,
        "reference": batch.reference,
        "callback_url": batch.callback_url,
        "encoding": batch.encoding,
        "events": _first_event(batch),
        "client_dlr": batch.client_dlr,
        "status": batch.status,
        "due_at": batch.due_at,
        "expires_at": batch.expires_at,
        "validity": batch.validity,
        "key_status": answer.status if answer else None,
        "key_type": answer.content_type if answer else None,
        "key_body": answer.body.decode() if answer else None,
        "rows": [
            {"id": m.id, "recipient": m.recipient, "segments": m.segments, "cost": m.cost}
            for m in batch.messages
        ],
    }


async def _reserve_on_postgres(
    store: Store, owner: str, batch: Batch, claim: IdempotencyClaim | None
) -> quota.Refusal | PriorAnswer | None:
    item = _reserve_item(owner, batch, claim)
    for _ in range(RACE_RETRIES):
        try:
            result = await store.call_grouped(_RESERVE_GROUP, item)
        except Refused as refused:
            if refused.code == "GW403":
                raise TeamInactive(batch.team_id) from None
            checked = await store.write(_check, batch, None)  # which limit, and how far
            if not isinstance(checked, quota.Limits):
                return checked
            continue  # room was freed meanwhile (a refund): try again
        if result == "key_taken":
            assert claim is not None
            prior = await store.write(_claimed, batch.team_id, claim)
            if prior is not None:
                return prior
            continue  # the key had expired, and is gone now
        return None
    raise DatabaseBusy(0)


async def reserve(
    store: Store, owner: str, batch: Batch, claim: IdempotencyClaim | None = None
) -> quota.Refusal | PriorAnswer | None:
    """Check the team's limits, charge the counters and store the messages as `sending` under
    `owner`'s lease, atomically.

    With an idempotency claim, a live key's prior answer is returned instead (nothing stored);
    otherwise the key is claimed `in_flight` in the same transaction. Returns the refusal (and
    stores nothing, claiming no key) if a limit would be passed. Raises TeamInactive if the team
    was disabled since it was authenticated.
    """
    if store.kind == "postgresql":
        return await _reserve_on_postgres(store, owner, batch, claim)
    return await store.write(_reserve, owner, batch, claim)


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


@dataclass(frozen=True)
class KeyAnswer:
    """The answer an Idempotency-Key replays while it lives."""

    status: int
    content_type: str
    body: bytes


# An `unknown` message that a lapsed lease or a busy database left behind: the real outcome,
# when its sender still has it, replaces it.
CATCH_UP_CODES = ("interrupted", "outcome_pending")


@dataclass
class UsageDelta:
    """What a change of rows adds to one (team, period) counter."""

    messages: int = 0
    segments: int = 0
    cost: int = 0


async def bump(tx: Tx, team_id: str, deltas: dict[str, UsageDelta]) -> None:
    """Add each period's delta to the team's counters (same transaction as the rows' change)."""
    await tx.executemany(
        "INSERT INTO usage (team_id, period, messages, segments, cost) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (team_id, period) DO UPDATE SET"
        " messages = usage.messages + excluded.messages,"
        " segments = usage.segments + excluded.segments, cost = usage.cost + excluded.cost",
        [
            (team_id, period, d.messages, d.segments, d.cost)
            # month ('2026-11') before day ('2026-11-26'), the order every writer locks them in
            for period, d in sorted(deltas.items())
            if d.messages or d.segments or d.cost
        ],
    )


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
    if store.kind != "postgresql" or not outcomes:
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
    await bump(tx, batch.team_id, {batch.day: delta, batch.month: delta})
    return changed


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


async def batch_messages(tx: Tx, team_id: str, batch_id: str) -> list[dict[str, Any]]:
    """The batch's messages as stored, in the order they were stored (inside a transaction;
    a batch's ids are made in increasing order)."""
    rows = await tx.fetchall(
        "SELECT * FROM messages WHERE team_id = ? AND batch_id = ? ORDER BY id",
        (team_id, batch_id),
    )
    return [resource(r) for r in rows]


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


_FORGET = with_clock(
    "DELETE FROM idempotency WHERE (team_id, key) IN (SELECT team_id, key"
    " FROM idempotency WHERE created_at < {expired} AND state = 'done' LIMIT ?2)",
    expired=now_plus("-?1"),
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
