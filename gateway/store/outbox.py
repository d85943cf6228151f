"""The delivery reports and the webhook outbox: their queries, for the transactions that the
layers above compose (delivery/reports.py, delivery/notify.py), and the worker's claims."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..platform.clock import iso, parse_iso
from . import audit
from .audit import GATEWAY, Actor
from .db import Row, Sql, Store, Tx
from .shared import append_event, now_plus, where, with_clock


async def team_callback_url(tx: Tx, team_id: str) -> str | None:
    """The team's own webhook URL, if it has one."""
    row = await tx.fetchone("SELECT callback_url FROM teams WHERE id = ?", (team_id,))
    return row["callback_url"] if row else None


@dataclass(frozen=True)
class NewWebhook:
    """A delivery to queue: a signed webhook, or a drop-in client's provider-format DLR."""

    id: str
    message_id: str | None  # None: an alert's (store/alerts.py)
    team_id: str
    type: str
    url: str
    payload: str
    delay: float  # seconds from now (the database's clock) to its first attempt
    created_at: str
    kind: str = "webhook"  # webhook | dlr | operator (signed with the operator's secret)
    trace: str | None = None  # the traceparent its attempts continue (tracing on)


_INSERT = with_clock(
    "INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,"
    " next_attempt_at, created_at, kind, trace) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'pending',"
    " {due}, ?8, ?9, ?10)",
    due=now_plus("?7"),
)


# The same event to each of the team's enabled endpoints that wants its type (schema 17): one
# delivery an endpoint, its id the event's then the endpoint's, so each goes once to each.
_FAN_OUT = with_clock(
    "INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,"
    " next_attempt_at, created_at, kind, trace, endpoint_id)"
    " SELECT ?1 || '_' || substr(e.id, 5), ?2, ?3, ?4, e.url, ?5, 'pending', {due}, ?7,"
    " 'webhook', ?8, e.id FROM webhook_endpoints e"
    " WHERE e.team_id = ?3 AND e.enabled = 1 AND {wants}",
    due=now_plus("?6"),
    wants=Sql(
        "EXISTS (SELECT 1 FROM json_each(e.events) WHERE value = ?4)",
        "jsonb_exists(e.events::jsonb, ?4)",
    ),
)


def _fan_out_params(hook: NewWebhook) -> tuple[Any, ...]:
    return (
        hook.id,
        hook.message_id,
        hook.team_id,
        hook.type,
        hook.payload,
        float(hook.delay),
        hook.created_at,
        hook.trace,
    )


async def insert_event(tx: Tx, hook: NewWebhook) -> int:
    """Queue a team's event: to `hook.url` if it has one (a send's or the team's callback_url),
    and to each of the team's endpoints that wants its type; how many deliveries that made."""
    queued = 0
    if hook.url:
        await insert_webhook(tx, hook)
        queued = 1
    return queued + await tx.execute(_FAN_OUT, _fan_out_params(hook))


async def insert_events(tx: Tx, hooks: list[NewWebhook]) -> None:
    """insert_event for several events (each statement pipelined)."""
    await insert_webhooks(tx, [h for h in hooks if h.url])
    if hooks:
        await tx.executemany(_FAN_OUT, [_fan_out_params(h) for h in hooks])


async def insert_webhook(tx: Tx, hook: NewWebhook) -> None:
    """Queue one delivery, pending from `delay` seconds from now by the database's clock (the
    replica that delivers it compares with the same clock)."""
    await tx.execute(
        _INSERT,
        (
            hook.id,
            hook.message_id,
            hook.team_id,
            hook.type,
            hook.url,
            hook.payload,
            float(hook.delay),
            hook.created_at,
            hook.kind,
            hook.trace,
        ),
    )


async def message_trace(tx: Tx, message_id: str) -> str | None:
    """The traceparent the message was sent under, if it was traced."""
    row = await tx.fetchone("SELECT trace FROM messages WHERE id = ?", (message_id,))
    return row["trace"] if row else None


async def lock_batch(tx: Tx, batch_id: str, *, shared: bool = False) -> None:
    """Make a batch's settlement and its delivery reports take turns, so that a report arriving
    on another replica while the batch settles is either applied by the settlement or finds
    its message settled (PostgreSQL; on SQLite every write transaction already excludes the
    others). Reports take the lock `shared`: they exclude the settlement, not each other (each
    changes its own message, under that row's lock), so a campaign's reports of one batch
    are not taken in one at a time."""
    if tx.dialect == "postgresql":
        kind = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
        await tx.execute(f"SELECT {kind}(hashtext(?))", (batch_id,))


INSERT_REPORT = (
    "INSERT INTO dlr_reports (batch_id, provider_message_id, recipient, state, received_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id"
)
PENDING_REPORTS = "SELECT * FROM dlr_reports WHERE batch_id = ? AND outcome IS NULL ORDER BY id"
REPORTED_MESSAGE = "SELECT id, status FROM messages WHERE batch_id = ? AND provider_message_id = ?"


async def insert_report(
    tx: Tx, batch_id: str, provider_message_id: str, recipient: str, state: str, at: str
) -> int | None:
    """Store a delivery report; its id, or None if the same report was stored before."""
    row = await tx.fetchone(INSERT_REPORT, (batch_id, provider_message_id, recipient, state, at))
    return int(row[0]) if row else None


async def pending_reports(tx: Tx, batch_id: str) -> list[Row]:
    """The batch's reports that no message has taken yet, oldest first."""
    return await tx.fetchall(PENDING_REPORTS, (batch_id,))


async def settle_report(
    tx: Tx, report_id: int, outcome: str, message_id: str | None, at: str
) -> None:
    """Record what a report did (applied, ignored) and to which message."""
    await tx.execute(
        "UPDATE dlr_reports SET outcome = ?, message_id = ?, settled_at = ? WHERE id = ?",
        (outcome, message_id, at, report_id),
    )


# PostgreSQL, a group of reports at once (delivery/reports.py, receive_group): each statement
# takes arrays, one element a report, so a group costs a handful of round trips, not one each.
LOCK_BATCHES_SHARED = (
    "SELECT pg_advisory_xact_lock_shared(hashtext(b))"
    " FROM (SELECT DISTINCT unnest($1::text[]) AS b ORDER BY b) AS batches"
)
INSERT_REPORTS = (
    "INSERT INTO dlr_reports (batch_id, provider_message_id, recipient, state, received_at)"
    " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[])"
    " ON CONFLICT DO NOTHING RETURNING id, batch_id, provider_message_id, state"
)
REPORTED_MESSAGES = (
    "SELECT m.id, m.batch_id, m.provider_message_id FROM messages m"
    " JOIN unnest($1::text[], $2::text[]) AS r(b, p)"
    " ON m.batch_id = r.b AND m.provider_message_id = r.p"
)
FINISH_MESSAGES = (
    "UPDATE messages SET status = r.s, completed_at = r.a, owner = NULL,"
    " events = left(events, -1) || ',' || json_build_object('status', r.s, 'at', r.a)::text"
    " || ']' FROM unnest($1::text[], $2::text[], $3::text[]) AS r(id, s, a)"
    " WHERE messages.id = r.id AND messages.status IN ('sent', 'unknown') RETURNING messages.*"
)
TEAM_URLS = "SELECT id, callback_url FROM teams WHERE id = ANY($1::text[])"
SETTLE_REPORTS = (
    "UPDATE dlr_reports SET outcome = r.o, message_id = r.m, settled_at = r.a"
    " FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[]) AS r(id, o, m, a)"
    " WHERE dlr_reports.id = r.id"
)


async def insert_webhooks(tx: Tx, hooks: list[NewWebhook]) -> None:
    """Queue several deliveries (insert_webhook's rows, in one pipelined statement)."""
    await tx.executemany(
        _INSERT,
        [
            (
                h.id,
                h.message_id,
                h.team_id,
                h.type,
                h.url,
                h.payload,
                float(h.delay),
                h.created_at,
                h.kind,
                h.trace,
            )
            for h in hooks
        ],
    )


async def reported_message(tx: Tx, batch_id: str, provider_message_id: str) -> Row | None:
    """The message a report names (id and status), if its send's answer is stored."""
    return await tx.fetchone(REPORTED_MESSAGE, (batch_id, provider_message_id))


_FINISH = Sql(
    *(
        "UPDATE messages SET status = ?1, completed_at = ?2, owner = NULL,"  # noqa: S608 - fixed SQL fragments only
        f" events = {append} WHERE id = ?3 AND status IN ('sent', 'unknown') RETURNING *"
        for append in append_event("?1", "?2")
    )
)


async def finish_message(tx: Tx, message_id: str, status: str, at: str) -> Row | None:
    """Move a `sent` or `unknown` message to a final status; the row as it is now, or None if
    it was not in a state a report can change."""
    return await tx.fetchone(_FINISH, (status, at, message_id))


async def forget_client_dlr(tx: Tx, message_id: str) -> None:
    """Drop a final message's drop-in DLR target (it lives on only in its queued delivery)."""
    await tx.execute("UPDATE messages SET client_dlr = NULL WHERE id = ?", (message_id,))


# --- the worker's side ------------------------------------------------------------------------


@dataclass(frozen=True)
class DueWebhook:
    """A webhook whose next attempt is due, with the team's current signing secret."""

    id: str
    url: str
    payload: str
    attempts: int
    secret: str
    kind: str  # webhook (signed POST) | dlr (provider-format GET)
    trace: str | None = None  # the traceparent its attempt continues
    endpoint_id: str | None = None  # a delivery to one of the team's endpoints (schema 17)
    # An endpoint's secrets, sealed: its own, then the one before a rotation while it is valid
    sealed_secrets: tuple[str, ...] = ()
    type: str = ""  # the event type


# Replicas claim different rows at once: PostgreSQL skips the rows another claim has locked.
# Due times and claims are the database's clock, so a replica whose clock runs ahead neither
# delivers early nor takes a claim that another replica still holds.
_CLAIM = with_clock(
    "UPDATE webhooks SET claimed_by = ?1, claim_until = {until} WHERE id IN ("
    " SELECT id FROM webhooks WHERE status = 'pending' AND next_attempt_at <= {now}"
    " AND (claim_until IS NULL OR claim_until < {now}) ORDER BY next_attempt_at, id"
    " LIMIT ?3{lock})"
    " RETURNING id, url, payload, attempts, kind, next_attempt_at, trace, type, endpoint_id,"
    " (SELECT webhook_secret FROM teams WHERE teams.id = webhooks.team_id) AS secret,"
    " (SELECT e.secret FROM webhook_endpoints e WHERE e.id = webhooks.endpoint_id)"
    " AS endpoint_secret,"
    " (SELECT e.previous_secret FROM webhook_endpoints e WHERE e.id = webhooks.endpoint_id"
    " AND e.previous_until > {now}) AS previous_secret",
    until=now_plus("?2"),
    lock=Sql("", " FOR UPDATE SKIP LOCKED"),
)


async def _claim(tx: Tx, owner: str, lease: float, limit: int) -> list[DueWebhook]:
    rows = sorted(await tx.fetchall(_CLAIM, (owner, float(lease), limit)), key=_due_order)
    return [
        DueWebhook(
            r["id"],
            r["url"],
            r["payload"],
            r["attempts"],
            r["secret"],
            r["kind"],
            r["trace"],
            r["endpoint_id"],
            tuple(s for s in (r["endpoint_secret"], r["previous_secret"]) if s),
            r["type"],
        )
        for r in rows
    ]


def _due_order(row: Row) -> tuple[str, str]:
    return (row["next_attempt_at"], row["id"])


async def claim_due_webhooks(
    store: Store, owner: str, limit: int, lease: float
) -> list[DueWebhook]:
    """Claim up to `limit` pending webhooks due now for `lease` seconds, oldest first (both by
    the database's clock).

    A claimed webhook is no one else's until its attempt is recorded or the claim lapses (its
    process died mid-attempt), so processes sharing the database deliver each once.
    """
    return await store.write(_claim, owner, lease, limit)


# Each walks its index in order and stops at the first row (webhooks_pending, schema 14, orders
# the pending by due time: the claim above reads only what it claims).
_NEXT_DUE = with_clock(
    "SELECT (SELECT next_attempt_at FROM webhooks WHERE status = 'pending'"
    " AND claim_until IS NULL ORDER BY next_attempt_at LIMIT 1) AS due,"
    " (SELECT claim_until FROM webhooks WHERE claim_until IS NOT NULL"
    " ORDER BY claim_until LIMIT 1) AS lapses,"
    " {now} AS now"
)


async def next_due_in(store: Store) -> float | None:
    """Seconds (by the database's clock) until the earliest pending webhook is due or a claim
    lapses; None if nothing waits."""
    row = await store.fetchone(_NEXT_DUE)
    if row is None:
        return None
    times = [row[name] for name in ("due", "lapses") if row[name]]
    if not times:
        return None
    return (parse_iso(min(times)) - parse_iso(row["now"])).total_seconds()


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt as the worker records it."""

    number: int  # 1, 2, ... (a retry or recover starts again)
    at: datetime  # stamps the delivery for people to read
    delivered: bool
    http_status: int | None
    error: str | None
    retry_in: float | None  # seconds to the next attempt (the database's clock); None: no more
    duration_ms: int | None = None
    response: str | None = None  # the start of the answer

    def logged(self) -> dict[str, Any]:
        """The attempt as the attempt log keeps it."""
        return {
            "attempt": self.number,
            "at": iso(self.at),
            "http_status": self.http_status,
            "error": self.error,
            "duration_ms": self.duration_ms,
            "response": self.response,
        }

    def params(self, webhook_id: str, owner: str) -> tuple[Any, ...]:
        """_RECORD's parameters."""
        if self.delivered:
            status = "delivered"
        elif self.retry_in is not None:
            status = "pending"
        else:
            status = "failed"
        return (
            status,
            float(self.retry_in or 0),
            self.http_status,
            self.error,
            iso(self.at),
            webhook_id,
            owner,
            json.dumps(self.logged(), ensure_ascii=False, separators=(",", ":")),
        )


async def record_attempt(store: Store | Tx, webhook_id: str, owner: str, attempt: Attempt) -> bool:
    """Record one attempt under this process's claim: delivered, retried `retry_in` seconds
    from now, or failed for good; False if the claim had lapsed and another took it. The
    attempt is appended to the delivery's attempt log in the same statement. On a store, or in
    the caller's `tx`."""
    params = attempt.params(webhook_id, owner)
    if isinstance(store, Tx):
        return bool(await store.execute(_RECORD, params))
    return bool(await store.run(_RECORD, params))


_RECORD = with_clock(
    "UPDATE webhooks SET attempts = attempts + 1, status = ?1,"
    " next_attempt_at = CASE WHEN ?1 = 'pending' THEN {retry_at} END,"
    " last_status = ?3, last_error = ?4, claimed_by = NULL, claim_until = NULL,"
    " delivered_at = CASE WHEN ?1 = 'delivered' THEN ?5 ELSE delivered_at END,"
    " attempt_log = {logged},"
    # a delivered DLR needs its client's password no more
    " payload = CASE WHEN ?1 = 'delivered' AND kind = 'dlr' THEN {removed}"
    " ELSE payload END WHERE id = ?6 AND claimed_by = ?7",
    retry_at=now_plus("?2"),
    logged=Sql(
        "json_insert(COALESCE(attempt_log, '[]'), '$[#]', json(?8))",
        "CASE WHEN attempt_log IS NULL THEN '[' || ?8 || ']'"
        " ELSE left(attempt_log, -1) || ',' || ?8 || ']' END",
    ),
    removed=Sql(
        "json_remove(payload, '$.password_sealed')", "(payload::jsonb - 'password_sealed')::text"
    ),
)


def webhook_resource(row: Row) -> dict[str, Any]:
    """The admin API's webhook object."""
    return {
        "id": row["id"],
        "message_id": row["message_id"],
        "team": row["team_id"],
        "kind": row["kind"],
        "endpoint_id": row["endpoint_id"],
        "type": row["type"],
        "url": row["url"],
        "status": row["status"],
        "attempts": row["attempts"],
        "last_status": row["last_status"],
        "last_error": row["last_error"],
        "next_attempt_at": row["next_attempt_at"],
        "created_at": row["created_at"],
        "delivered_at": row["delivered_at"],
    }


async def list_webhooks(
    store: Store, status: str | None, limit: int, before_id: str | None
) -> list[dict[str, Any]]:
    """Webhooks, newest first, optionally of one status; `limit` rows at most."""
    clause, params = where(("status = ?", status), ("id < ?", before_id))
    rows = await store.fetchall(
        f"SELECT * FROM webhooks WHERE {clause} ORDER BY id DESC LIMIT ?",  # noqa: S608
        (*params, limit),
    )
    return [webhook_resource(r) for r in rows]


_RETRY = with_clock(
    "UPDATE webhooks SET status = 'pending', attempts = 0, next_attempt_at = {now} WHERE id = ?1"
)


async def retry_webhook(
    store: Store, webhook_id: str, *, actor: Actor = GATEWAY
) -> dict[str, Any] | None:
    """Put a webhook back in the queue, due now (the database's clock), with a fresh retry
    schedule, and audit it; None if there is no such webhook."""
    return await store.write(_retry, webhook_id, actor)


async def _retry(tx: Tx, webhook_id: str, actor: Actor) -> dict[str, Any] | None:
    before = await tx.fetchone("SELECT * FROM webhooks WHERE id = ?", (webhook_id,))
    if before is None:
        return None
    await tx.execute(_RETRY, (webhook_id,))
    row = await tx.fetchone("SELECT * FROM webhooks WHERE id = ?", (webhook_id,))
    assert row is not None
    fields = ("status", "attempts", "next_attempt_at")
    await audit.append(
        tx,
        actor,
        "webhook.retried",
        webhook_id,
        team_id=row["team_id"],
        before={k: before[k] for k in fields},
        after={k: row[k] for k in fields},
    )
    return webhook_resource(row)


async def list_reports(
    store: Store, pending_only: bool, limit: int, before: int | None
) -> list[dict[str, Any]]:
    """Delivery reports, newest first; `pending_only` gives those no message has claimed."""
    clauses, params = ["1 = 1"], []
    if pending_only:
        clauses.append("outcome IS NULL")
    if before is not None:
        clauses.append("id < ?")
        params.append(before)
    rows = await store.fetchall(
        f"SELECT * FROM dlr_reports WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",  # noqa: S608
        (*params, limit),
    )
    return [
        {
            "id": r["id"],
            "batch_id": r["batch_id"],
            "provider_message_id": r["provider_message_id"],
            "recipient": r["recipient"],
            "state": r["state"],
            "status": {"D": "delivered", "U": "undelivered"}[r["state"]],
            "outcome": r["outcome"] or "pending",
            "message_id": r["message_id"],
            "received_at": r["received_at"],
        }
        for r in rows
    ]


async def webhook_counts(store: Store) -> dict[str, int]:
    """How many webhooks are pending and failed (for metrics)."""
    rows = await store.fetchall(
        "SELECT status, COUNT(*) AS n FROM webhooks WHERE status IN ('pending', 'failed')"
        " GROUP BY status"
    )
    return {r["status"]: r["n"] for r in rows}
