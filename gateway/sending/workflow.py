"""The send workflow: reserve → provider → settle, and what each failure along it means.

Once `reserve` has stored the messages as `sending` under this process's lease, every path
ends with them settled: by the provider's answer, as `failed` and refunded when the provider
certainly did not act, or as `unknown` and charged when it may have. No answer that invites a
resend is given once the provider may have acted.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from ..delivery.dlrtoken import DlrTokens
from ..errors import (
    PROBLEM_CONTENT_TYPE,
    Conflict,
    Forbidden,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    ValidationFailed,
    problem_body,
)
from ..platform import logs
from ..platform.clock import Clock, iso, next_day_start, next_month_start, periods, utcnow
from ..platform.ids import ulid
from ..platform.jsonio import dumps
from ..platform.metrics import Metrics
from ..platform.secretbox import SecretBox
from ..platform.settings import Settings
from ..provider.client import ProviderClient, SendResult
from ..store import leases as store_leases
from ..store import messages as store_messages
from ..store import settle as store_settle
from ..store.db import Store
from ..store.errors import DatabaseUnavailable, DatabaseUnreachable
from ..store.keys import KeyAnswer
from ..store.settle import Outcome
from ..teams import quota
from . import settlement
from .validation import SendRequest

log = logging.getLogger("gateway.sending")

PROVIDER_CONCURRENCY = 8
IDEMPOTENCY_TTL = timedelta(hours=24)
JSON = "application/json"
INSTANCE = "/messages"


@dataclass(frozen=True)
class Answer:
    """What POST /messages answers: status, serialised body, and whether it is a replay."""

    status: int
    body: bytes
    content_type: str = JSON
    replayed: bool = False
    headers: dict[str, str] = field(default_factory=dict)


class CatchUp:
    """Settlements the database could not take in time, retried in the background.

    Their messages stay `sending` under this process's lease meanwhile; if the process stops
    first, the lease lapses and a sweep moves them to `unknown`. One that cannot land within
    `patience` seconds is given up as the sweep would: its rows `unknown` (still charged), its
    key answered 504, and a warning says so.
    """

    def __init__(
        self,
        store: Store | None = None,
        owner: str = "",
        answer_for: store_leases.AnswerFor | None = None,
        patience: float = 3600.0,
    ) -> None:
        self._tasks: set[asyncio.Task[None]] = set()
        self._store = store
        self._owner = owner
        self._answer_for = answer_for
        self.patience = patience

    def add(self, write: Callable[[], Any], what: str, batch_id: str) -> None:
        """Retry `write()` with backoff until it succeeds (or `patience` seconds pass)."""
        task = asyncio.get_running_loop().create_task(self._retry(write, what, batch_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _retry(self, write: Callable[[], Any], what: str, batch_id: str) -> None:
        delay, waited = 0.2, 0.0
        while True:
            try:
                await write()
            except Exception as exc:
                if waited >= self.patience:
                    await self._give_up(what, batch_id, exc)
                    return
                log.warning("could not store %s yet (%s); retrying in %g s", what, exc, delay)
                await asyncio.sleep(delay)
                waited += delay
                delay = min(delay * 2, 30.0, max(self.patience / 4, 0.05))
            else:
                log.info("stored %s after a delay", what)
                return

    async def _give_up(self, what: str, batch_id: str, error: Exception) -> None:
        """Leave the batch as the sweep would, retrying that (simpler) write until it lands."""
        if self._store is None or self._answer_for is None:
            log.error("gave up storing %s: %s", what, error)
            return
        delay = 0.2
        while True:
            try:
                changed = await store_leases.abandon(
                    self._store, self._owner, batch_id, iso(utcnow()), self._answer_for
                )
            except Exception as exc:
                log.warning("could not give up %s yet (%s)", what, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            log.warning(
                "gave up storing %s after %g s (%s): its %d message(s) still sending are now "
                "'unknown' and stay charged",
                what,
                self.patience,
                error,
                changed,
            )
            return

    async def stop(self, grace: float = 5.0) -> None:
        """Give pending settlements `grace` seconds, then leave them to the lease's sweep."""
        if self._tasks:
            _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)


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


async def send(
    ctx: SendContext,
    team_id: str,
    request: SendRequest,
    *,
    idempotency_key: str | None = None,
    body_hash: str = "",
    client_dlr: str | None = None,
) -> Answer:
    """Reserve, call the provider in batches, settle, and return the answer to give.

    Raises QuotaExceeded (and the store's DatabaseUnavailable) before anything is stored or sent.
    Otherwise the answer is 201, or the provider's failure (502, 503, 504) with the stored
    messages. With an Idempotency-Key, a live key's first answer is replayed instead, and
    this answer is kept in the transaction that settles the messages.
    """
    now = ctx.clock()
    batch = _new_batch(ctx, team_id, request, now, client_dlr)
    accepted = _accepted_answer(batch) if batch.queued else None
    claim = None
    if idempotency_key is not None:
        claim = store_messages.IdempotencyClaim(
            idempotency_key, body_hash, IDEMPOTENCY_TTL.total_seconds(), accepted
        )
    try:
        reserved = await store_messages.reserve(ctx.store, ctx.owner, batch, claim)
    except store_messages.TeamInactive:
        raise Forbidden(f"team {team_id!r} is disabled", code="team_disabled") from None
    except DatabaseUnreachable as exc:
        if exc.committed_unknown:
            _release_later(ctx, batch, idempotency_key)
        raise
    if isinstance(reserved, store_messages.PriorAnswer):
        return _replay(reserved, body_hash)
    if reserved is not None:
        ctx.metrics.quota_rejections.labels(team_id, reserved.quota).inc()
        raise _quota_error(reserved, now, ctx.tz)
    if accepted is not None:  # queued: stored with its reservation; the dispatcher sends it
        ctx.metrics.messages.labels(batch.status).inc(len(batch.messages))
        ctx.queue_accepted()
        return _to_answer(accepted)
    # From here the messages are `sending` under this process's lease: every path settles them.
    outcomes, results = await _call_provider(ctx, batch, request)
    answer_for = _answer_builder(batch.batch_id, results)
    return await _store_outcome(ctx, batch, outcomes, idempotency_key, answer_for)


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
        return _problem(503, "database_unavailable", "Not sent", detail, batch.batch_id, messages)

    async def write() -> None:
        await settlement.settle(
            ctx.store, ctx.owner, batch, refunds, key=key, answer_for=not_sent if key else None
        )

    ctx.catch_up.add(write, f"the reservation of batch {batch.batch_id}", batch.batch_id)


def _replay(prior: store_messages.PriorAnswer, body_hash: str) -> Answer:
    if prior.request_hash != body_hash:
        raise ValidationFailed(
            "this Idempotency-Key was used with another request body; use a new key",
            code="idempotency_key_reused",
        )
    if prior.in_flight or prior.status is None or prior.body is None:
        raise Conflict(
            "a request with this Idempotency-Key is still in flight; retry when it has finished",
            code="idempotency_in_flight",
            headers={"Retry-After": "1"},
        )
    return Answer(prior.status, prior.body.encode(), prior.content_type or JSON, replayed=True)


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


def _new_batch(
    ctx: SendContext, team_id: str, request: SendRequest, now: datetime, client_dlr: str | None
) -> store_messages.Batch:
    """The batch to store: one message per recipient, each reserving the estimated cost."""
    day, month = periods(now, ctx.tz)
    per_message_cost = request.info.segments * ctx.settings.price_per_segment
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
        **queued,
    )


def batch_body(batch_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a send's 201 (and a queued send's 202, and a batch cancel's 200)."""
    return {
        "batch_id": batch_id,
        "messages": messages,
        "total_cost": sum(m["cost"] for m in messages),
        "currency": "RWF",
    }


def _accepted_answer(batch: store_messages.Batch) -> KeyAnswer:
    """A queued send's 202: the 201's body, its messages `queued` or `scheduled`."""
    return KeyAnswer(202, JSON, dumps(batch_body(batch.batch_id, store_settle.as_queued(batch))))


async def _call_provider(
    ctx: SendContext, batch: store_messages.Batch, request: SendRequest
) -> tuple[list[Outcome], list[SendResult] | None]:
    """Call the provider for every chunk of the batch; the outcome of each message, and the
    calls' results (None when the gateway itself failed)."""
    settings = ctx.settings
    handed_over = False
    try:
        dlrurl = f"{settings.public_url}/dlr/{ctx.tokens.sign(batch.batch_id)}"
        size = settings.provider_batch_size
        chunks = [batch.messages[i : i + size] for i in range(0, len(batch.messages), size)]
        gate = asyncio.Semaphore(PROVIDER_CONCURRENCY)

        async def call(chunk: Sequence[store_messages.NewMessage]) -> SendResult:
            async with gate:
                return await ctx.provider.send(
                    [m.recipient for m in chunk],
                    request.text,
                    sender=request.sender or settings.provider_sender,
                    dlrurl=dlrurl,
                )

        handed_over = True
        if len(chunks) == 1:  # the common case: no tasks to make
            results = [await call(chunks[0])]
        else:
            results = list(await asyncio.gather(*(call(chunk) for chunk in chunks)))
        at = iso(ctx.clock())
        outcomes = [
            settlement.outcome(message, result, at)
            for chunk, result in zip(chunks, results, strict=True)
            for message in chunk
        ]
    except Exception:
        log.exception("batch %s: the gateway failed around the provider call", batch.batch_id)
        at = iso(ctx.clock())
        if handed_over:
            detail = "the gateway failed after handing the send to the provider"
            return [
                settlement.unknown(m, at, "gateway_error", detail) for m in batch.messages
            ], None
        detail = "the gateway failed before calling the provider; nothing was sent"
        return [settlement.refused(m, at, "gateway_error", detail) for m in batch.messages], None
    logs.note(
        "batch sent",
        batch_id=batch.batch_id,
        team=batch.team_id,
        recipients=len(batch.messages),
        provider_calls=len(chunks),
        outcome=",".join(sorted({o.status for o in outcomes})),
    )
    return outcomes, results


AnswerFor = Callable[[list[dict[str, Any]]], KeyAnswer]


def _problem(
    status: int, code: str, title: str, detail: str, batch_id: str, messages: list[dict[str, Any]]
) -> KeyAnswer:
    body = problem_body(
        status,
        code,
        title,
        detail,
        instance=INSTANCE,
        extra={"batch_id": batch_id, "messages": messages},
    )
    return KeyAnswer(status, PROBLEM_CONTENT_TYPE, dumps(body))


def lost_answer(batch_id: str | None, messages: list[dict[str, Any]], detail: str) -> KeyAnswer:
    """The 504 of a send whose provider answer was not stored: `unknown`, still charged."""
    return _problem(
        504,
        ProviderTimeout.code,
        ProviderTimeout.title,
        f"{detail}; the messages are 'unknown' and stay charged until the outcome is known",
        batch_id or "",
        messages,
    )


def _answer_builder(batch_id: str, results: Sequence[SendResult] | None) -> AnswerFor:
    """How the send's answer is built from its messages as stored."""

    def answer_for(messages: list[dict[str, Any]]) -> KeyAnswer:
        if results is None:  # the gateway failed around the provider call
            if any(m["status"] == "unknown" for m in messages):
                return lost_answer(batch_id, messages, "the gateway failed mid-send")
            return _problem(
                500,
                "internal_error",
                "Internal error",
                "the gateway failed before calling the provider; nothing was sent and "
                "nothing is charged",
                batch_id,
                messages,
            )
        if all(r.failure is not None for r in results):
            return _provider_failure(results, batch_id, messages)
        return KeyAnswer(201, JSON, dumps(batch_body(batch_id, messages)))

    return answer_for


def _provider_failure(
    results: Sequence[SendResult], batch_id: str, messages: list[dict[str, Any]]
) -> KeyAnswer:
    """The answer for a send no provider call answered: timeout wins (money may have moved)."""
    kinds = {r.failure for r in results}
    detail = next((r.detail for r in results if r.detail), None) or "the provider failed"
    if "timeout" in kinds:
        return lost_answer(batch_id, messages, detail)
    if "error" in kinds:
        return _problem(
            ProviderError.status,
            ProviderError.code,
            ProviderError.title,
            f"the provider refused the send: {detail}",
            batch_id,
            messages,
        )
    return _problem(
        ProviderUnavailable.status,
        ProviderUnavailable.code,
        ProviderUnavailable.title,
        f"{detail}; nothing was sent",
        batch_id,
        messages,
    )


def _to_answer(answer: KeyAnswer) -> Answer:
    headers = {"Retry-After": "5"} if answer.status == ProviderUnavailable.status else {}
    return Answer(answer.status, answer.body, answer.content_type, headers=headers)


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
    return _to_answer(settled.answer or answer_for(settled.messages))


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
    return _to_answer(answer)


def swept_answer(batch_id: str | None, messages: list[dict[str, Any]]) -> KeyAnswer:
    """The answer an Idempotency-Key gets when the process answering it died mid-send."""
    return lost_answer(
        batch_id, messages, "the gateway stopped before the provider's answer was stored"
    )
