"""The accounting rule (how a provider call's result settles each message: pure) and the
settlement's transaction, which stores those outcomes with everything that follows from them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from ..delivery import reports
from ..delivery.notify import queue_webhook
from ..provider.client import RecipientResult, SendResult
from ..store import keys as store_keys
from ..store import reads as store_reads
from ..store import settle as store_settle
from ..store.db import Store, Tx
from ..store.keys import KeyAnswer
from ..store.messages import Batch, NewMessage
from ..store.settle import Outcome

# Answers that say nothing was sent: they free the Idempotency-Key rather than being kept for
# it, so the retry with the same key and body runs for real (Stripe's rule). 201, 202, 504 and
# 409 are kept: money may have moved, or another request holds the key.
RELEASING = frozenset({400, 422, 429, 500, 502, 503})

# A stated cost above this many times the estimate is not believed (a provider bug or a unit
# mix-up): the estimate is charged instead.
SANE_COST_FACTOR = 1000


def _stated_cost(answer: RecipientResult, estimate: int) -> int | None:
    """The recipient's cost if the provider stated a sane one, else None."""
    if answer.cost is None or answer.cost > SANE_COST_FACTOR * max(estimate, 1):
        return None
    return answer.cost


def unknown(message: NewMessage, at: str, code: str, detail: str | None) -> Outcome:
    """The provider may have sent it: `unknown`, charged the reservation."""
    return Outcome(
        message.id,
        "unknown",
        at,
        message.segments,
        message.cost,
        error_code=code,
        error_detail=detail,
    )


def refused(message: NewMessage, at: str, code: str, detail: str | None) -> Outcome:
    """The provider certainly did not send it: `failed`, refunded."""
    return Outcome(message.id, "failed", at, 0, 0, error_code=code, error_detail=detail)


def outcome(message: NewMessage, result: SendResult, at: str) -> Outcome:
    """Settle one message from its provider call's result."""
    if result.failure == "timeout":
        return unknown(message, at, "provider_timeout", result.detail)
    if result.failure is not None:  # error or unavailable: the call did not happen
        code = "provider_error" if result.failure == "error" else "provider_unavailable"
        return refused(message, at, code, result.detail)
    answer = result.results.get(message.recipient)
    if answer is None:
        return unknown(
            message,
            at,
            "provider_no_result",
            "the provider's answer did not mention this recipient",
        )
    stated = _stated_cost(answer, message.cost)
    if answer.status == "sent":
        return Outcome(
            message.id,
            "sent",
            at,
            message.segments,
            message.cost if stated is None else stated,
            provider_message_id=answer.message_id,
        )
    # A refused recipient is charged what the provider says it charged; an unusable figure
    # means it charged something it did not say: the estimate.
    cost = stated if stated is not None else (message.cost if answer.cost_given else 0)
    return Outcome(
        message.id,
        "failed",
        at,
        message.segments if cost else 0,
        cost,
        provider_message_id=answer.message_id,
        error_code="provider_rejected",
        error_detail=answer.message or "the provider refused this recipient",
    )


class Settled(NamedTuple):
    """The batch as the API now shows it, the webhooks queued, and the key's stored answer."""

    messages: list[dict[str, Any]]
    webhooks_queued: int
    answer: KeyAnswer | None


async def _settle(
    tx: Tx,
    owner: str,
    batch: Batch,
    outcomes: Sequence[Outcome],
    webhook_delay: float,
    key: str | None,
    answer_for: Callable[[list[dict[str, Any]]], KeyAnswer] | None,
) -> Settled:
    changed = await store_settle.settle_rows(tx, owner, batch, outcomes)
    at = outcomes[0].at if outcomes else batch.created_at
    applied = 0
    if any(o.status in ("sent", "unknown") for o in outcomes if o.message_id in changed):
        applied = await reports.apply_pending(tx, batch.batch_id, at, webhook_delay)
    failed_from_queue = batch.queued and any(o.status == "failed" for o in outcomes)
    if applied or failed_from_queue or len(changed) != len(batch.messages):
        # Early delivery reports or an earlier settlement moved rows on, or a webhook will carry
        # a message that waited in the queue first (a longer timeline than `as_settled` knows):
        # read them as stored. (The dispatcher answers nobody with `messages`.)
        messages = await store_reads.batch_messages(tx, batch.team_id, batch.batch_id)
    else:
        messages = store_settle.as_settled(batch, outcomes)
    team_urls: dict[str, str | None] = {}
    queued = applied
    for m in messages:
        if m["status"] == "failed" and m["id"] in changed:
            queued += await queue_webhook(
                tx, batch.team_id, m, batch.callback_url, at, webhook_delay, team_urls
            )
    answer = None
    if key is not None and answer_for is not None:
        answer = answer_for(messages)
        if answer.status in RELEASING and not any(m["status"] == "unknown" for m in messages):
            await store_keys.release_key(tx, batch.team_id, key, batch.batch_id)
        elif not await store_keys.answer_key(tx, batch.team_id, key, answer):
            # answered already (a sweep gave it the lost-answer 504): keep that one
            answer = await store_keys.stored_answer(tx, batch.team_id, key) or answer
    return Settled(messages, queued, answer)


async def settle(
    store: Store,
    owner: str,
    batch: Batch,
    outcomes: Sequence[Outcome],
    *,
    webhook_delay: float = 0.0,
    key: str | None = None,
    answer_for: Callable[[list[dict[str, Any]]], KeyAnswer] | None = None,
) -> Settled:
    """Store a batch's outcomes in one transaction: the rows `owner` is sending (or that wait
    to catch up) settle and the counters move by exactly what their charges change; delivery
    reports that arrived before this answer are applied; webhooks for messages that failed are
    queued; and, with `key`, the Idempotency-Key gets `answer_for(messages)` as its answer (if
    a sweep answered it first, that answer stays and is returned). Rows already settled are
    left as they are."""
    # The common case (every message went out, no key to answer) in one call where it can be.
    same_time = all(o.at == outcomes[0].at for o in outcomes)
    if key is None and same_time and await store_settle.settle_sent(store, owner, batch, outcomes):
        return Settled(store_settle.as_settled(batch, outcomes), 0, None)
    return await store.write(_settle, owner, batch, outcomes, webhook_delay, key, answer_for)
