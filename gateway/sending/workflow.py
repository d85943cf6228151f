"""The send workflow: reserve → provider → settle, and what each failure along it means.

Once `reserve` has stored the messages as `sending` under this process's lease, every path
ends with them settled: by the provider's answer, as `failed` and refunded when the provider
certainly did not act, or as `unknown` and charged when it may have. No answer that invites a
resend is given once the provider may have acted."""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ..delivery.dlrtoken import DlrTokens
from ..errors import (
    Forbidden,
    QuotaExceeded,
    ValidationFailed,
)
from ..platform import logs, tracing
from ..platform.clock import Clock, iso, next_day_start, next_month_start, periods
from ..platform.ids import ulid
from ..platform.metrics import Metrics
from ..platform.secretbox import SecretBox
from ..platform.settings import Settings
from ..provider.client import ProviderClient, SendResult
from ..store import messages as store_messages
from ..store import settle as store_settle
from ..store import suppressions as store_suppressions
from ..store.db import Store
from ..store.errors import DatabaseUnavailable, DatabaseUnreachable
from ..store.keys import KeyAnswer
from ..store.settle import Outcome
from ..teams import quota
from . import settlement
from .answers import (
    Answer,
    AnswerFor,
    accepted_answer,
    answer_builder,
    lost_answer,
    problem_answer,
    replay,
    to_answer,
)
from .catchup import CatchUp
from .validation import SendRequest

log = logging.getLogger("gateway.sending")


PROVIDER_CONCURRENCY = 8


IDEMPOTENCY_TTL = timedelta(hours=24)


@dataclass(frozen=True)
class SendContext:
    """What the workflow needs from the app."""

    settings: Settings
    store: Store
    provider: ProviderClient
    tokens: DlrTokens
    clock: Clock
    tz: ZoneInfo
    owner: str  # this process's lease
    catch_up: CatchUp = field(default_factory=CatchUp)
    box: SecretBox | None = None  # seals drop-in clients' DLR passwords
    webhooks_queued: Callable[[], None] = lambda: None
    metrics: Metrics = field(default_factory=Metrics)
    queue_accepted: Callable[[], None] = lambda: None  # wakes this process's dispatcher
    test_provider: ProviderClient | None = None  # the in-process simulator of test tokens


async def send(
    ctx: SendContext,
    team_id: str,
    request: SendRequest,
    *,
    idempotency_key: str | None = None,
    body_hash: str = "",
    client_dlr: str | None = None,
    test: bool = False,
) -> Answer:
    """Reserve, call the provider in batches, settle, and return the answer to give.

    Raises QuotaExceeded (and the store's DatabaseUnavailable) before anything is stored or sent.
    Otherwise the answer is 201, or the provider's failure (502, 503, 504) with the stored
    messages. With an Idempotency-Key, a live key's first answer is replayed instead, and
    this answer is kept in the transaction that settles the messages.

    `test` (a test token's send): the in-process simulator stands in for the provider, and no
    limit, counter or bill is touched. A suppressed recipient is settled `failed`/`suppressed`
    and refunded; the others go.
    """
    if test and request.queue:
        raise ValidationFailed(
            "a test token's send cannot be queued or scheduled; send it at once",
            code="test_not_queued",
            extra={"errors": [{"field": "queue", "reason": "not with a test token"}]},
        )
    now = ctx.clock()
    batch = _new_batch(ctx, team_id, request, now, client_dlr, test)
    accepted = accepted_answer(batch) if batch.queued else None
    # Read before the reservation (a database that cannot answer fails the send with nothing
    # stored); a queued send's recipients are looked up when the dispatcher sends them.
    blocked = {} if batch.queued else await suppressed(ctx.store, batch)
    claim = None
    if idempotency_key is not None:
        claim = store_messages.IdempotencyClaim(
            idempotency_key, body_hash, IDEMPOTENCY_TTL.total_seconds(), accepted
        )
    try:
        with tracing.span("db reserve", attributes=_db_attributes(ctx, batch)):
            reserved = await store_messages.reserve(ctx.store, ctx.owner, batch, claim)
    except store_messages.TeamInactive:
        raise Forbidden(f"team {team_id!r} is disabled", code="team_disabled") from None
    except DatabaseUnreachable as exc:
        if exc.committed_unknown:
            _release_later(ctx, batch, idempotency_key)
        raise
    if isinstance(reserved, store_messages.PriorAnswer):
        return replay(reserved, body_hash)
    if reserved is not None:
        ctx.metrics.quota_rejections.labels(team_id, reserved.quota).inc()
        ctx.webhooks_queued()  # the refusal may have queued its usage.limit_reached
        raise _quota_error(reserved, now, ctx.tz)
    if accepted is not None:  # queued: stored with its reservation; the dispatcher sends it
        ctx.metrics.messages.labels(batch.status).inc(len(batch.messages))
        ctx.queue_accepted()
        return to_answer(accepted)
    # From here the messages are `sending` under this process's lease: every path settles them.
    outcomes, results = await _call_provider(ctx, batch, request, blocked)
    answer_for = answer_builder(batch.batch_id, results)
    return await _store_outcome(ctx, batch, outcomes, idempotency_key, answer_for)


def _db_attributes(ctx: SendContext, batch: store_messages.Batch) -> dict[str, Any] | None:
    if not tracing.active():
        return None
    return {"db.system.name": ctx.store.kind, "gateway.messages": len(batch.messages)}


def _release_later(ctx: SendContext, batch: store_messages.Batch, key: str | None) -> None:
    """The connection broke while the reservation's COMMIT was on its way, so it may have been
    made. Nothing was sent: once the database answers, such rows (still `sending` under this
    process's lease) are settled `failed` and refunded, and the Idempotency-Key the reservation
    claimed is freed for the retry (the answer was a 503); if the reservation was not made, the
    settlement finds no row and changes nothing."""
    at = iso(ctx.clock())
    detail = "the gateway lost the database before the send; nothing was sent"
    refunds = [settlement.refused(m, at, "not_sent", detail) for m in batch.messages]

    def not_sent(messages: list[dict[str, Any]]) -> KeyAnswer:
        return problem_answer(
            503, "database_unavailable", "Not sent", detail, batch.batch_id, messages
        )

    async def write() -> None:
        await settlement.settle(
            ctx.store, ctx.owner, batch, refunds, key=key, answer_for=not_sent if key else None
        )

    ctx.catch_up.add(write, f"the reservation of batch {batch.batch_id}", batch.batch_id)


def _quota_error(refusal: quota.Refusal, now: datetime, tz: ZoneInfo) -> QuotaExceeded:
    resets = (next_day_start if refusal.period == "day" else next_month_start)(now, tz)
    retry_after = max(1, math.ceil((resets - now).total_seconds()))
    unit = "RWF" if refusal.quota == "monthly_budget" else "segments"
    return QuotaExceeded(
        f"this send needs {refusal.requested} {unit} but the team's {refusal.quota} of "
        f"{refusal.limit} has {refusal.remaining} left; nothing was sent",
        extra={
            "quota": refusal.quota,
            "limit": refusal.limit,
            "used": refusal.used,
            "remaining": refusal.remaining,
            "requested": refusal.requested,
            "resets_at": iso(resets),
        },
        headers={"Retry-After": str(retry_after)},
    )


async def suppressed(store: Store, batch: store_messages.Batch) -> dict[str, str]:
    """The batch's recipients that are suppressed, each with its list (`team` or `global`): an
    OTP passes the team's own list, never the global one."""
    found = await store_suppressions.blocked(
        store, batch.team_id, [m.recipient for m in batch.messages]
    )
    if batch.purpose == "otp":
        return {n: scope for n, scope in found.items() if scope == "global"}
    return found


def suppressed_outcomes(
    messages: Sequence[store_messages.NewMessage], blocked: dict[str, str], at: str
) -> list[Outcome]:
    """The messages to suppressed recipients, settled `failed`/`suppressed` and refunded."""
    return [
        settlement.refused(
            m,
            at,
            "suppressed",
            f"the recipient is on the {blocked[m.recipient]} suppression list; not sent",
        )
        for m in messages
        if m.recipient in blocked
    ]


def _new_batch(
    ctx: SendContext,
    team_id: str,
    request: SendRequest,
    now: datetime,
    client_dlr: str | None,
    test: bool = False,
) -> store_messages.Batch:
    """The batch to store: one message per recipient, each reserving the estimated cost (a
    test send's: nothing)."""
    day, month = periods(now, ctx.tz)
    per_message_cost = 0 if test else request.info.segments * ctx.settings.price_per_segment
    queued: dict[str, Any] = {}
    if request.queue:
        # Due and expiry times are the database's (store/messages.py): a send_at is a time the
        # client named, its expiry that plus the validity; without one, both run from the
        # database's now. (This process's clock only names the status.)
        validity = request.validity or ctx.settings.queue_validity
        at = request.send_at
        queued = {
            "status": "scheduled" if at is not None and at > now else "queued",
            "due_at": iso(at) if at is not None else None,
            "expires_at": iso(at + timedelta(seconds=validity)) if at is not None else None,
            "validity": float(validity),
        }
    return store_messages.Batch(
        batch_id="bat_" + ulid(now),
        team_id=team_id,
        text=request.text,
        sender=request.sender,
        reference=request.reference,
        callback_url=request.callback_url,
        encoding=request.info.encoding,
        day=day,
        month=month,
        created_at=iso(now),
        messages=[
            store_messages.NewMessage(
                "msg_" + ulid(now), r, request.info.segments, per_message_cost
            )
            for r in request.recipients
        ],
        client_dlr=client_dlr,
        trace=tracing.traceparent(),
        alert_url=ctx.settings.operator_webhook_url,
        metadata=request.metadata,
        purpose=request.purpose,
        test=test,
        **queued,
    )


async def _call_provider(
    ctx: SendContext,
    batch: store_messages.Batch,
    request: SendRequest,
    blocked: dict[str, str] | None = None,
) -> tuple[list[Outcome], list[SendResult] | None]:
    """Call the provider (a test send: the simulator) for every chunk of the batch but its
    `blocked` recipients; the outcome of each message, and the calls' results (None when the
    gateway itself failed)."""
    settings = ctx.settings
    handed_over = False
    provider = ctx.provider
    if batch.test:
        assert ctx.test_provider is not None, "every app runs the test tokens' simulator"
        provider = ctx.test_provider
    held: list[Outcome] = []
    messages = batch.messages
    if blocked:
        held = suppressed_outcomes(messages, blocked, iso(ctx.clock()))
        messages = [m for m in messages if m.recipient not in blocked]
    try:
        dlrurl = f"{settings.public_url}/dlr/{ctx.tokens.sign(batch.batch_id)}"
        size = settings.provider_batch_size
        chunks = [messages[i : i + size] for i in range(0, len(messages), size)]
        gate = asyncio.Semaphore(PROVIDER_CONCURRENCY)

        async def call(chunk: Sequence[store_messages.NewMessage]) -> SendResult:
            async with gate:
                return await provider.send(
                    [m.recipient for m in chunk],
                    request.text,
                    sender=request.sender or settings.provider_sender,
                    dlrurl=dlrurl,
                )

        handed_over = True
        if not chunks:  # every recipient is suppressed
            results = []
        elif len(chunks) == 1:  # the common case: no tasks to make
            results = [await call(chunks[0])]
        else:
            results = list(await asyncio.gather(*(call(chunk) for chunk in chunks)))
        at = iso(ctx.clock())
        outcomes = held + [
            settlement.outcome(message, result, at)
            for chunk, result in zip(chunks, results, strict=True)
            for message in chunk
        ]
        if batch.test:  # the simulator's prices are not a bill
            outcomes = [replace(o, charged_segments=0, cost=0) for o in outcomes]
    except Exception:
        log.exception("batch %s: the gateway failed around the provider call", batch.batch_id)
        at = iso(ctx.clock())
        if handed_over:
            detail = "the gateway failed after handing the send to the provider"
            return held + [
                settlement.unknown(m, at, "gateway_error", detail) for m in messages
            ], None
        detail = "the gateway failed before calling the provider; nothing was sent"
        return held + [settlement.refused(m, at, "gateway_error", detail) for m in messages], None
    logs.note(
        "batch sent",
        batch_id=batch.batch_id,
        team=batch.team_id,
        recipients=len(batch.messages),
        provider_calls=len(chunks),
        outcome=",".join(sorted({o.status for o in outcomes})),
    )
    return outcomes, results


async def _store_outcome(
    ctx: SendContext,
    batch: store_messages.Batch,
    outcomes: list[Outcome],
    key: str | None,
    answer_for: AnswerFor,
) -> Answer:
    """Settle the messages (and the key) in one transaction; if the database cannot take it
    now, answer without inviting a resend and store it later."""
    try:
        with tracing.span("db settle", attributes=_db_attributes(ctx, batch)):
            settled = await settlement.settle(
                ctx.store,
                ctx.owner,
                batch,
                outcomes,
                webhook_delay=ctx.settings.webhook_retry_schedule[0],
                key=key,
                answer_for=answer_for,
            )
    except Exception as exc:
        return await _settle_later(ctx, batch, outcomes, key, answer_for, exc)
    _settled(ctx, outcomes, settled.webhooks_queued)
    return to_answer(settled.answer or answer_for(settled.messages))


def _settled(ctx: SendContext, outcomes: Sequence[Outcome], webhooks_queued: int) -> None:
    if webhooks_queued:
        ctx.webhooks_queued()
    for status, count in Counter(o.status for o in outcomes).items():
        ctx.metrics.messages.labels(status).inc(count)


async def _settle_later(
    ctx: SendContext,
    batch: store_messages.Batch,
    outcomes: list[Outcome],
    key: str | None,
    answer_for: AnswerFor,
    error: Exception,
) -> Answer:
    """The outcome could not be stored now. If the provider may have acted, the answer is 504
    with the messages `unknown`; either way it becomes the key's answer, and the outcome is
    stored in the background as soon as the database allows."""
    if isinstance(error, DatabaseUnavailable):
        log.warning("batch %s: %s; its outcome is stored when it can be", batch.batch_id, error)
    else:
        log.error("batch %s: storing its outcome failed", batch.batch_id, exc_info=error)
    at = iso(ctx.clock())
    acted = any(o.status != "failed" for o in outcomes)
    if acted:
        detail = "the provider answered, but the gateway could not store its outcome yet"
        pending = [settlement.unknown(m, at, "outcome_pending", detail) for m in batch.messages]
        answer = lost_answer(
            batch.batch_id,
            store_settle.as_settled(batch, pending),
            "the outcome is not stored yet",
        )
    else:
        pending = []
        answer = answer_for(store_settle.as_settled(batch, outcomes))
    fixed: AnswerFor = lambda _messages: answer  # noqa: E731 - the client already has it
    delay = ctx.settings.webhook_retry_schedule[0]
    stored_pending = False
    if pending and not isinstance(error, DatabaseUnavailable):
        # A failing write (not a lock held elsewhere): the simpler `unknown` may still go in.
        try:
            await settlement.settle(
                ctx.store, ctx.owner, batch, pending, webhook_delay=delay, key=key, answer_for=fixed
            )
            stored_pending = True
        except Exception as exc:
            log.error("batch %s: could not mark its messages unknown: %s", batch.batch_id, exc)

    async def write() -> None:
        settled = await settlement.settle(
            ctx.store,
            ctx.owner,
            batch,
            outcomes,
            webhook_delay=delay,
            key=None if stored_pending else key,
            answer_for=fixed,
        )
        _settled(ctx, outcomes, settled.webhooks_queued)

    ctx.catch_up.add(write, f"the outcome of batch {batch.batch_id}", batch.batch_id)
    return to_answer(answer)
