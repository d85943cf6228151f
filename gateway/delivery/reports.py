"""Delivery reports: the provider's word that a message reached the phone (or did not),
applied to the message once, whichever replica receives it and whenever it arrives."""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..platform import tracing
from ..platform.clock import parse_iso
from ..platform.ids import ulid
from ..store import outbox
from ..store.db import Store, Tx
from ..store.outbox import NewWebhook
from ..store.rows import resource
from .notify import WEBHOOK_EVENTS, queue_client_dlr, queue_webhook, webhook_payload

log = logging.getLogger("gateway.delivery")

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
    and one that arrives before its send's answer waits (`pending`) for the settlement.

    On PostgreSQL the reports that arrive together share that transaction (ReportGroups: a few
    statements over arrays for the whole group, where a report each cost six round trips);
    SQLite's writes are grouped by its store already."""
    if store.kind != "postgresql":
        return await store.write(_receive, report, at, delay)
    groups = _GROUPS.get(store)
    if groups is None:
        groups = _GROUPS[store] = ReportGroups(store)
    return await groups.receive(Arrival(report, at, delay))


@dataclass(frozen=True)
class Arrival:
    """One report as it arrived: when, and its webhook's first delay."""

    report: Report
    at: str
    delay: float


async def receive_group(tx: Tx, arrivals: Sequence[Arrival]) -> list[ReportOutcome]:
    """PostgreSQL: `_receive` for many reports in one transaction, with the same outcome for
    each as taking them one after another in arrival order (a duplicate, within the group or
    of an earlier report, changes nothing; the first report of a message applies, a later one
    of it is `ignored`; one whose message is not settled yet is `pending`)."""
    reports = [a.report for a in arrivals]
    await tx.execute(outbox.LOCK_BATCHES_SHARED, ([r.batch_id for r in reports],))
    inserted = await tx.fetchall(
        outbox.INSERT_REPORTS,
        (
            [r.batch_id for r in reports],
            [r.provider_message_id for r in reports],
            [r.recipient for r in reports],
            [r.state for r in reports],
            [a.at for a in arrivals],
        ),
    )
    report_ids = {(r["batch_id"], r["provider_message_id"], r["state"]): r["id"] for r in inserted}
    outcomes: list[ReportOutcome] = ["duplicate"] * len(arrivals)
    stored: dict[int, int] = {}  # arrival index -> its report row (the first of equal ones)
    for n, r in enumerate(reports):
        report_id = report_ids.pop((r.batch_id, r.provider_message_id, r.state), None)
        if report_id is not None:
            stored[n] = report_id
    if not stored:
        return outcomes
    found = await tx.fetchall(
        outbox.REPORTED_MESSAGES,
        ([reports[n].batch_id for n in stored], [reports[n].provider_message_id for n in stored]),
    )
    message_of: dict[tuple[str, str], str] = {}
    for row in found:
        message_of.setdefault((row["batch_id"], row["provider_message_id"]), row["id"])
    first: dict[str, int] = {}  # message id -> the arrival that may finish it
    targets: dict[int, str] = {}
    for n in stored:
        message_id = message_of.get((reports[n].batch_id, reports[n].provider_message_id))
        if message_id is None:
            outcomes[n] = "pending"  # the settlement applies it (apply_pending)
            continue
        targets[n] = message_id
        first.setdefault(message_id, n)
    finished = await tx.fetchall(
        outbox.FINISH_MESSAGES,
        (
            list(first),
            [FINAL_STATES[reports[n].state] for n in first.values()],
            [arrivals[n].at for n in first.values()],
        ),
    )
    rows = {row["id"]: row for row in finished}
    await _queue_for(tx, [(rows[m], arrivals[n]) for m, n in first.items() if m in rows])
    settle: list[tuple[int, str, str, str]] = []
    for n, message_id in targets.items():
        applied = first[message_id] == n and message_id in rows
        outcomes[n] = "applied" if applied else "ignored"
        settle.append((stored[n], outcomes[n], message_id, arrivals[n].at))
    await tx.execute(
        outbox.SETTLE_REPORTS,
        (
            [s[0] for s in settle],
            [s[1] for s in settle],
            [s[2] for s in settle],
            [s[3] for s in settle],
        ),
    )
    return outcomes


async def _queue_for(tx: Tx, finished: list[tuple[Any, Arrival]]) -> None:
    """The webhooks (and drop-in clients' DLRs) of the messages a group of reports finished,
    as apply_report queues each."""
    if not finished:
        return
    teams = sorted({row["team_id"] for row, _ in finished})
    urls = {r["id"]: r["callback_url"] for r in await tx.fetchall(outbox.TEAM_URLS, (teams,))}
    hooks: list[NewWebhook] = []
    for row, arrival in finished:
        message = resource(row)
        url = row["callback_url"] or urls.get(row["team_id"]) or ""
        if message["status"] in WEBHOOK_EVENTS:
            event, payload = webhook_payload(message, arrival.at)
            trace = (row["trace"] or tracing.traceparent()) if tracing.active() else None
            hooks.append(
                NewWebhook(
                    "whk_" + ulid(parse_iso(arrival.at)),
                    row["id"],
                    row["team_id"],
                    event,
                    url,
                    payload,
                    arrival.delay,
                    arrival.at,
                    trace=trace,
                )
            )
        if row["client_dlr"]:
            status = FINAL_STATES[arrival.report.state]
            await queue_client_dlr(tx, row, arrival.report.state, status, arrival.at, arrival.delay)
            await outbox.forget_client_dlr(tx, row["id"])
    await outbox.insert_events(tx, hooks)


MAX_GROUP = 128  # reports in one transaction
CONCURRENT_GROUPS = 3  # transactions under way at once (of the pool's connections)


class ReportGroups:
    """The reports that arrive while the loop goes round, and while the groups under way hold
    their connections, are taken in together by receive_group (up to MAX_GROUP a transaction,
    CONCURRENT_GROUPS transactions at once). A group that fails is taken again one report at a
    time, so a report that the database refuses fails that report alone."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._loop = asyncio.get_running_loop()
        self._waiting: list[tuple[Arrival, asyncio.Future[ReportOutcome]]] = []
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()  # (held: the loop keeps only weak ones)

    async def receive(self, arrival: Arrival) -> ReportOutcome:
        future: asyncio.Future[ReportOutcome] = self._loop.create_future()
        self._waiting.append((arrival, future))
        if self._running < CONCURRENT_GROUPS and len(self._waiting) == 1:
            self._start()
        return await future

    def _start(self) -> None:
        self._running += 1
        task = self._loop.create_task(self._flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        try:
            await asyncio.sleep(0)  # the handlers ready to run add their reports first
            while self._waiting:
                group, self._waiting = self._waiting[:MAX_GROUP], self._waiting[MAX_GROUP:]
                if self._waiting and self._running < CONCURRENT_GROUPS:
                    self._start()
                await self._take(group)
        finally:
            self._running -= 1

    async def _take(self, group: list[tuple[Arrival, asyncio.Future[ReportOutcome]]]) -> None:
        arrivals = [a for a, _ in group]
        try:
            outcomes = await self._store.write(receive_group, arrivals)
        except Exception as exc:
            if len(group) == 1:
                if not group[0][1].done():
                    group[0][1].set_exception(exc)
                return
            log.warning(
                "a group of %d delivery reports failed (%s); taking them one by one",
                len(group),
                type(exc).__name__,
            )
            for one in group:
                await self._take([one])
            return
        for (_, future), outcome in zip(group, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)


_GROUPS: weakref.WeakKeyDictionary[Store, ReportGroups] = weakref.WeakKeyDictionary()


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
