"""Reserving message rows: the checks, the key claim and the counters, in one transaction."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..teams import quota
from . import alerts
from .db import Store, Tx
from .errors import DatabaseBusy, Refused
from .keys import KeyAnswer
from .shared import now_plus, with_clock
from .usage import UsageDelta, bump


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
    trace: str | None = None  # the sending request's traceparent, when tracing is on
    alert_url: str | None = None  # GATEWAY_OPERATOR_WEBHOOK_URL: usage alerts go there too
    metadata: str | None = None  # the send's metadata, as JSON text
    purpose: str | None = None  # `otp`: passes the team's own suppressions at dispatch
    test: bool = False  # a test token's send: the simulator's, no limit, counter or bill

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


@dataclass(frozen=True)
class Room:
    """A send fits: the team's limits, its use before the send, and where its alerts go."""

    limits: quota.Limits
    used: quota.Usage
    thresholds: tuple[int, ...]
    callback_url: str | None


async def _check(
    tx: Tx, batch: Batch, claim: IdempotencyClaim | None
) -> quota.Refusal | PriorAnswer | Room:
    """What a reservation finds first: a live key's prior answer, or the limit the send would
    pass, or (it fits) the room it has. Raises TeamInactive for a disabled team."""
    if claim is not None:
        prior = await _claimed(tx, batch.team_id, claim)
        if prior is not None:
            return prior
    # The team's limits and its counters for both periods, in one statement.
    team = await tx.fetchone(
        "SELECT t.active, t.daily_limit, t.monthly_limit, t.monthly_budget, t.alert_thresholds,"
        " t.callback_url,"
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
    refusal = None if batch.test else quota.check(limits, used, segments, cost)
    if refusal is not None:
        return refusal
    return Room(limits, used, tuple(orjson.loads(team["alert_thresholds"])), team["callback_url"])


async def _alert_refusal(tx: Tx, batch: Batch, refusal: quota.Refusal) -> None:
    """A send refused for a limit: `usage.limit_reached`, once per team, period and limit."""
    alert = alerts.Alert(
        batch.team_id,
        batch.day if refusal.period == "day" else batch.month,
        alerts.KIND_OF_QUOTA[refusal.quota],
        alerts.LIMIT_REACHED,
        100,
        refusal.limit,
        refusal.used,
    )
    await alerts.fire(tx, alert, await alerts.team_url(tx, batch.team_id), batch.alert_url)


async def _alert_crossings(tx: Tx, batch: Batch, room: Room, segments: int, cost: int) -> None:
    """The thresholds this reservation carried the team's use across, each once a period."""
    used, limits = room.used, room.limits
    for kind, period, limit, before, added in (
        ("daily", batch.day, limits.daily_limit, used.day_segments, segments),
        ("monthly", batch.month, limits.monthly_limit, used.month_segments, segments),
        ("budget", batch.month, limits.monthly_budget, used.month_cost, cost),
    ):
        for threshold in alerts.crossed(room.thresholds, limit, before, before + added):
            assert limit is not None
            alert = alerts.Alert(
                batch.team_id,
                period,
                kind,
                alerts.THRESHOLD_REACHED,
                threshold,
                limit,
                before + added,
            )
            await alerts.fire(tx, alert, room.callback_url, batch.alert_url)


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
    " created_at, events, client_dlr, owner, due_at, next_attempt_at, expires_at, trace,"
    " metadata, purpose, test)"
    " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,"
    " ?19, CASE WHEN ?9 = 'sending' THEN NULL ELSE COALESCE(?20, {now}) END,"
    " CASE WHEN ?9 = 'sending' THEN NULL ELSE COALESCE(?20, {now}) END,"
    " CASE WHEN ?9 = 'sending' THEN NULL ELSE COALESCE(?21, {expiry}) END, ?23, ?24, ?25, ?26)",
    expiry=now_plus("?22"),
)


async def _reserve(
    tx: Tx, owner: str, batch: Batch, claim: IdempotencyClaim | None
) -> quota.Refusal | PriorAnswer | None:
    """SQLite: read, check and write in one write transaction (BEGIN IMMEDIATE excludes every
    other writer, so nothing moves between the check and the write)."""
    checked = await _check(tx, batch, claim)
    if isinstance(checked, quota.Refusal):
        await _alert_refusal(tx, batch, checked)
        return checked
    if not isinstance(checked, Room):
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
                0 if batch.test else m.segments,
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
                batch.trace,
                batch.metadata,
                batch.purpose,
                int(batch.test),
            )
            for m in batch.messages
        ],
    )
    if batch.test:
        return None  # a test token's send: no counter, no alert
    reserved = UsageDelta(
        len(batch.messages),
        sum(m.segments for m in batch.messages),
        sum(m.cost for m in batch.messages),
    )
    await bump(tx, batch.team_id, {batch.month: reserved, batch.day: reserved})
    if checked.thresholds and (
        checked.limits.daily_limit is not None
        or checked.limits.monthly_limit is not None
        or checked.limits.monthly_budget is not None
    ):
        await _alert_crossings(tx, batch, checked, reserved.segments, reserved.cost)
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
        "trace": batch.trace,
        "operator_url": batch.alert_url,
        "metadata": batch.metadata,
        "purpose": batch.purpose,
        "test": batch.test,
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
            if not isinstance(checked, Room):
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
