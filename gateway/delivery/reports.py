"""Delivery reports: the provider's word that a message reached the phone (or did not),
applied to the message once, whichever replica receives it and whenever it arrives."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..store import outbox
from ..store.db import Store, Tx
from ..store.rows import resource
from .notify import queue_client_dlr, queue_webhook

FINAL_STATES = {"D": "delivered", "U": "undelivered"}
ReportOutcome = Literal["applied", "duplicate", "pending", "ignored"]


@dataclass(frozen=True)
class Report:
    """One delivery report as the provider sent it, bound to a batch by the DLR token."""

    batch_id: str
    provider_message_id: str
    recipient: str
    state: str  # D | U


async def apply_report(
    tx: Tx, report: Report, at: str, delay: float
) -> tuple[ReportOutcome, str | None]:
    """Move the report's message to its final state and queue its webhook (and a drop-in
    client's DLR), if the message can take it; the outcome and the message's id."""
    found = await outbox.reported_message(tx, report.batch_id, report.provider_message_id)
    if found is None:
        return "pending", None  # the send's answer is not stored yet, or never will be
    status = FINAL_STATES[report.state]
    row = await outbox.finish_message(tx, found["id"], status, at)
    if row is None:  # final already (or failed): the report cannot change it
        return "ignored", found["id"]
    await queue_webhook(tx, row["team_id"], resource(row), row["callback_url"], at, delay, {})
    if row["client_dlr"]:
        await queue_client_dlr(tx, row, report.state, status, at, delay)
        await outbox.forget_client_dlr(tx, row["id"])
    return "applied", found["id"]


async def _receive(tx: Tx, report: Report, at: str, delay: float) -> ReportOutcome:
    # a settlement of this batch goes first or after; other reports of it run alongside
    await outbox.lock_batch(tx, report.batch_id, shared=True)
    report_id = await outbox.insert_report(
        tx, report.batch_id, report.provider_message_id, report.recipient, report.state, at
    )
    if report_id is None:
        return "duplicate"
    outcome, message_id = await apply_report(tx, report, at, delay)
    if outcome != "pending":
        await outbox.settle_report(tx, report_id, outcome, message_id, at)
    return outcome


async def receive_report(store: Store, report: Report, at: str, delay: float) -> ReportOutcome:
    """Store a delivery report and apply it, in one transaction: duplicates change nothing,
    and one that arrives before its send's answer waits (`pending`) for the settlement."""
    return await store.write(_receive, report, at, delay)


async def apply_pending(tx: Tx, batch_id: str, at: str, delay: float) -> int:
    """Apply the reports that arrived before this batch's send answer was stored (inside the
    settlement's transaction); how many were applied (each may have queued a webhook)."""
    applied = 0
    for row in await outbox.pending_reports(tx, batch_id):
        report = Report(row["batch_id"], row["provider_message_id"], row["recipient"], row["state"])
        outcome, message_id = await apply_report(tx, report, at, delay)
        if outcome != "pending":
            await outbox.settle_report(tx, row["id"], outcome, message_id, at)
        applied += outcome == "applied"
    return applied
