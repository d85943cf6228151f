"""Delivery reports and the webhook outbox: applied and queued inside the callers' transactions."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from ..clock import iso, parse_iso
from ..ids import ulid
from .db import Row, Sql, Store, Tx
from .rows import resource
from .shared import LOCK_BATCH, append_event

FINAL_STATES = {"D": "delivered", "U": "undelivered"}
WEBHOOK_EVENTS = frozenset({"delivered", "undelivered", "failed"})
ReportOutcome = Literal["applied", "duplicate", "pending", "ignored"]


@dataclass(frozen=True)
class Report:
    """One delivery report as the provider sent it, bound to a batch by the DLR token."""

    batch_id: str
    provider_message_id: str
    recipient: str
    state: str  # D | U


def _after(at: str, seconds: float) -> str:
    return iso(parse_iso(at) + timedelta(seconds=seconds))


async def enqueue_webhook(
    tx: Tx,
    team_id: str,
    message: dict[str, Any],
    callback_url: str | None,
    at: str,
    delay: float,
    team_urls: dict[str, str | None],
) -> int:
    """Queue the webhook for one message (as the API shows it) if its state calls for one and
    it has a URL (its own, else its team's; `team_urls` caches the teams'); 1 if queued."""
    if message["status"] not in WEBHOOK_EVENTS:
        return 0
    if team_id not in team_urls:
        team = await tx.fetchone("SELECT callback_url FROM teams WHERE id = ?", (team_id,))
        team_urls[team_id] = team["callback_url"] if team else None
    url = callback_url or team_urls[team_id]
    if not url:
        return 0
    event = f"message.{message['status']}"
    payload = json.dumps(
        {"type": event, "timestamp": at, "data": message},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    await tx.execute(
        "INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,"
        " next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?)",
        (
            "whk_" + ulid(parse_iso(at)),
            message["id"],
            team_id,
            event,
            url,
            payload,
            _after(at, delay),
            at,
        ),
    )
    return 1


_FINISH = Sql(
    *(
        "UPDATE messages SET status = ?1, completed_at = ?2, owner = NULL,"  # noqa: S608 - fixed SQL fragments only
        f" events = {append} WHERE id = ?3 AND status IN ('sent', 'unknown') RETURNING *"
        for append in append_event("?1", "?2")
    )
)


async def _apply(tx: Tx, report: Report, at: str, delay: float) -> tuple[ReportOutcome, str | None]:
    """Move the report's message to its final state and queue its webhook, if it can be."""
    found = await tx.fetchone(
        "SELECT id, status FROM messages WHERE batch_id = ? AND provider_message_id = ?",
        (report.batch_id, report.provider_message_id),
    )
    if found is None:
        return "pending", None  # the send's answer is not stored yet, or never will be
    status = FINAL_STATES[report.state]
    row = await tx.fetchone(_FINISH, (status, at, found["id"]))
    if row is None:  # final already (or failed): the report cannot change it
        return "ignored", found["id"]
    await enqueue_webhook(tx, row["team_id"], resource(row), row["callback_url"], at, delay, {})
    if row["client_dlr"]:
        await _enqueue_client_dlr(tx, row, report.state, at, delay)
        # The message is final: its DLR target lives on only in that delivery, until it is made.
        await tx.execute("UPDATE messages SET client_dlr = NULL WHERE id = ?", (row["id"],))
    return "applied", found["id"]


async def _enqueue_client_dlr(tx: Tx, row: Row, state: str, at: str, delay: float) -> None:
    """Queue the provider-format GET a drop-in client asked for with its own `dlrurl`."""
    target = json.loads(row["client_dlr"])
    params = {
        "dnis": row["recipient"],
        "username": target.get("username") or "",
        "password_sealed": target.get("password_sealed") or "",  # opened by the worker only
        "command": "deliver",
        "dlvrMsgId": row["id"],
        "dlvrMsgStat": state,
    }
    await tx.execute(
        "INSERT INTO webhooks (id, message_id, team_id, type, url, payload, status,"
        " next_attempt_at, created_at, kind) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?, ?, 'dlr')",
        (
            "whk_" + ulid(parse_iso(at)),
            row["id"],
            row["team_id"],
            f"message.{FINAL_STATES[state]}",
            target["url"],
            json.dumps(params),
            _after(at, delay),
            at,
        ),
    )


async def _settle_report(
    tx: Tx, report_id: int, outcome: str, message_id: str | None, at: str
) -> None:
    await tx.execute(
        "UPDATE dlr_reports SET outcome = ?, message_id = ?, settled_at = ? WHERE id = ?",
        (outcome, message_id, at, report_id),
    )


async def _receive(tx: Tx, report: Report, at: str, delay: float) -> ReportOutcome:
    if tx.dialect == "postgresql":
        await tx.execute(LOCK_BATCH, (report.batch_id,))
    inserted = await tx.fetchone(
        "INSERT INTO dlr_reports (batch_id, provider_message_id, recipient, state, received_at)"
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING id",
        (report.batch_id, report.provider_message_id, report.recipient, report.state, at),
    )
    if inserted is None:
        return "duplicate"
    outcome, message_id = await _apply(tx, report, at, delay)
    if outcome != "pending":
        await _settle_report(tx, inserted[0], outcome, message_id, at)
    return outcome


async def receive_report(store: Store, report: Report, at: str, delay: float) -> ReportOutcome:
    """Store a delivery report and apply it, in one transaction: duplicates change nothing."""
    return await store.write(_receive, report, at, delay)


async def apply_pending_reports(tx: Tx, batch_id: str, at: str, delay: float) -> int:
    """Apply the reports that arrived before this batch's send answer was stored; how many
    were applied (each may have queued a webhook)."""
    waiting = await tx.fetchall(
        "SELECT * FROM dlr_reports WHERE batch_id = ? AND outcome IS NULL ORDER BY id",
        (batch_id,),
    )
    applied = 0
    for row in waiting:
        report = Report(row["batch_id"], row["provider_message_id"], row["recipient"], row["state"])
        outcome, message_id = await _apply(tx, report, at, delay)
        if outcome != "pending":
            await _settle_report(tx, row["id"], outcome, message_id, at)
        applied += outcome == "applied"
    return applied


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


# Replicas claim different rows at once: PostgreSQL skips the rows another claim has locked.
_CLAIM = Sql(
    *(
        "UPDATE webhooks SET claimed_by = ?1, claim_until = ?2 WHERE id IN ("  # noqa: S608 - fixed SQL fragments only
        " SELECT id FROM webhooks WHERE status = 'pending' AND next_attempt_at <= ?3"
        f" AND (claim_until IS NULL OR claim_until < ?3) ORDER BY next_attempt_at LIMIT ?4{lock})"
        " RETURNING id, url, payload, attempts, kind, next_attempt_at,"
        " (SELECT webhook_secret FROM teams WHERE teams.id = webhooks.team_id) AS secret"
        for lock in ("", " FOR UPDATE SKIP LOCKED")
    )
)


async def _claim(tx: Tx, owner: str, now: str, until: str, limit: int) -> list[DueWebhook]:
    rows = sorted(await tx.fetchall(_CLAIM, (owner, until, now, limit)), key=_due_order)
    return [
        DueWebhook(r["id"], r["url"], r["payload"], r["attempts"], r["secret"], r["kind"])
        for r in rows
    ]


def _due_order(row: Row) -> tuple[str, str]:
    return (row["next_attempt_at"], row["id"])


async def claim_due_webhooks(
    store: Store, owner: str, now: datetime, limit: int, lease: float
) -> list[DueWebhook]:
    """Claim up to `limit` pending webhooks due by `now` for `lease` seconds, oldest first.

    A claimed webhook is no one else's until its attempt is recorded or the claim lapses (its
    process died mid-attempt), so processes sharing the database deliver each once.
    """
    return await store.write(_claim, owner, iso(now), iso(now + timedelta(seconds=lease)), limit)


async def next_due_at(store: Store) -> datetime | None:
    """When the earliest pending webhook is due (or its claim lapses)."""
    row = await store.fetchone(
        "SELECT (SELECT MIN(next_attempt_at) FROM webhooks WHERE status = 'pending'"
        " AND claim_until IS NULL) AS due,"
        " (SELECT MIN(claim_until) FROM webhooks WHERE claim_until IS NOT NULL) AS lapses"
    )
    times = [row[name] for name in ("due", "lapses") if row is not None and row[name]]
    return parse_iso(min(times)) if times else None


async def record_attempt(
    store: Store,
    webhook_id: str,
    owner: str,
    *,
    at: datetime,
    delivered: bool,
    http_status: int | None,
    error: str | None,
    retry_in: float | None,
) -> bool:
    """Record one attempt under this process's claim: delivered, retried after `retry_in`
    seconds, or failed for good; False if the claim had lapsed and another took it."""
    if delivered:
        status, next_at = "delivered", None
    elif retry_in is not None:
        status, next_at = "pending", iso(at + timedelta(seconds=retry_in))
    else:
        status, next_at = "failed", None
    return bool(
        await store.run(_RECORD, (status, next_at, http_status, error, iso(at), webhook_id, owner))
    )


_RECORD = Sql(
    *(
        "UPDATE webhooks SET attempts = attempts + 1, status = ?1, next_attempt_at = ?2,"  # noqa: S608 - fixed SQL fragments only
        " last_status = ?3, last_error = ?4, claimed_by = NULL, claim_until = NULL,"
        " delivered_at = CASE WHEN ?1 = 'delivered' THEN ?5 ELSE delivered_at END,"
        # a delivered DLR needs its client's password no more
        f" payload = CASE WHEN ?1 = 'delivered' AND kind = 'dlr' THEN {removed}"
        " ELSE payload END WHERE id = ?6 AND claimed_by = ?7"
        for removed in (
            "json_remove(payload, '$.password_sealed')",
            "(payload::jsonb - 'password_sealed')::text",
        )
    )
)


def webhook_resource(row: Row) -> dict[str, Any]:
    """The admin API's webhook object."""
    return {
        "id": row["id"],
        "message_id": row["message_id"],
        "team": row["team_id"],
        "kind": row["kind"],
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
    clauses, params = ["1 = 1"], []
    if status is not None:
        clauses.append("status = ?")
        params.append(status)
    if before_id is not None:
        clauses.append("id < ?")
        params.append(before_id)
    rows = await store.fetchall(
        f"SELECT * FROM webhooks WHERE {' AND '.join(clauses)} ORDER BY id DESC LIMIT ?",  # noqa: S608
        (*params, limit),
    )
    return [webhook_resource(r) for r in rows]


async def retry_webhook(store: Store, webhook_id: str, at: datetime) -> dict[str, Any] | None:
    """Put a webhook back in the queue, due now, with a fresh retry schedule."""
    changed = await store.run(
        "UPDATE webhooks SET status = 'pending', attempts = 0, next_attempt_at = ? WHERE id = ?",
        (iso(at), webhook_id),
    )
    if not changed:
        return None
    row = await store.fetchone("SELECT * FROM webhooks WHERE id = ?", (webhook_id,))
    return webhook_resource(row) if row else None


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
            "status": FINAL_STATES[r["state"]],
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
