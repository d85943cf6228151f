"""The send workflow: validate → reserve → provider → settle."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from . import numbers, quota, segments
from .clock import Clock, iso, next_day_start, next_month_start, periods
from .dlrtoken import DlrTokens
from .errors import (
    PROBLEM_CONTENT_TYPE,
    Conflict,
    Forbidden,
    GatewayError,
    InvalidRecipient,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    QuotaExceeded,
    ValidationFailed,
    error_body,
    problem_body,
)
from .ids import ulid
from .jsonio import dumps
from .metrics import Metrics
from .provider import ProviderClient, SendResult
from .settings import Settings
from .store import messages as store_messages
from .store.db import Store

log = logging.getLogger("gateway.sending")

MAX_RECIPIENTS = 1000
MAX_SEGMENTS = 10
SEND_FIELDS = frozenset({"to", "text", "sender", "reference", "callback_url"})
_ALPHA_SENDER = re.compile(r"[A-Za-z0-9][A-Za-z0-9 .\-&_]{0,10}")
_NUMERIC_SENDER = re.compile(r"\+?[0-9]{1,15}")
PROVIDER_CONCURRENCY = 8
IDEMPOTENCY_TTL = timedelta(hours=24)
_IDEMPOTENCY_KEY = re.compile(r"[\x20-\x7e]{1,255}")
JSON = "application/json"


@dataclass(frozen=True)
class Answer:
    """What POST /messages answers: status, serialised body, and whether it is a replay."""

    status: int
    body: bytes
    content_type: str = JSON
    replayed: bool = False


def check_idempotency_key(value: str | None) -> str | None:
    """An Idempotency-Key is 1-255 printable ASCII characters."""
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise ValidationFailed(
            "Idempotency-Key must be 1 to 255 printable ASCII characters",
            code="invalid_idempotency_key",
        )
    return value


def request_hash(body: Any) -> str:
    """A fingerprint of a request body's meaning (key order and spacing do not matter)."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class SendRequest:
    """A validated send: normalised, de-duplicated recipients and the text's segment info."""

    recipients: list[str]
    text: str
    info: segments.SegmentInfo
    sender: str | None
    reference: str | None
    callback_url: str | None


@dataclass(frozen=True)
class SendContext:
    """What the workflow needs from the app."""

    settings: Settings
    store: Store
    provider: ProviderClient
    tokens: DlrTokens
    clock: Clock
    tz: ZoneInfo
    webhooks_queued: Callable[[], None] = lambda: None
    metrics: Metrics = field(default_factory=Metrics)


def _field_error(field: str, reason: str, code: str = "validation_error") -> ValidationFailed:
    return ValidationFailed(
        f"{field}: {reason}", code=code, extra={"errors": [{"field": field, "reason": reason}]}
    )


def _optional_string(body: Mapping[str, Any], name: str, max_len: int) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise _field_error(name, "must be a string")
    if not value.strip():
        raise _field_error(name, "must not be empty")
    if len(value) > max_len:
        raise _field_error(name, f"must be at most {max_len} characters")
    return value


def check_callback_url(value: str | None) -> str | None:
    """A team or message callback URL must be absolute http(s)."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _field_error(
            "callback_url", "must be an absolute http or https URL", code="invalid_callback_url"
        )
    return value


def validate(body: Any, settings: Settings) -> SendRequest:
    """Check a POST /messages body; raise a 422 that names every problem, or return the send."""
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object")
    unknown = sorted(set(body) - SEND_FIELDS)
    if unknown:
        raise ValidationFailed(
            f"unknown field(s): {', '.join(unknown)}",
            code="unknown_field",
            extra={"errors": [{"field": f, "reason": "unknown field"} for f in unknown]},
        )
    raw_to = body.get("to")
    if isinstance(raw_to, str):
        raw_to = [raw_to]
    if not isinstance(raw_to, list) or not raw_to:
        raise _field_error(
            "to", "must be a phone number or a list of 1 to 1000 of them", code="invalid_recipient"
        )
    if len(raw_to) > MAX_RECIPIENTS:
        raise _field_error(
            "to", f"at most {MAX_RECIPIENTS} recipients per request", code="too_many_recipients"
        )
    recipients, bad = numbers.normalise_all(
        raw_to, settings.default_region, settings.allowed_regions
    )
    if bad:
        raise InvalidRecipient(
            f"{len(bad)} of {len(raw_to)} recipients are not valid; nothing was sent",
            extra={
                "errors": [
                    {
                        "field": f"to[{b.index}]",
                        "value": b.value if isinstance(b.value, str) else None,
                        "reason": b.reason,
                    }
                    for b in bad
                ]
            },
        )
    text = body.get("text")
    if not isinstance(text, str) or not text:
        raise _field_error("text", "must be a non-empty string", code="invalid_text")
    if len(text) > MAX_SEGMENTS * 160:
        raise _field_error("text", f"is longer than {MAX_SEGMENTS} segments", code="text_too_long")
    info = segments.count(text)
    if info.segments > MAX_SEGMENTS:
        raise _field_error(
            "text",
            f"needs {info.segments} segments ({info.encoding}); at most {MAX_SEGMENTS}",
            code="text_too_long",
        )
    sender = body.get("sender")
    if sender is not None and not (
        isinstance(sender, str)
        and (_ALPHA_SENDER.fullmatch(sender) or _NUMERIC_SENDER.fullmatch(sender))
    ):
        raise _field_error(
            "sender",
            "must be 1-11 letters, digits, spaces or .-&_, or a number of up to 15 digits",
            code="invalid_sender",
        )
    reference = _optional_string(body, "reference", 255)
    callback_url = check_callback_url(_optional_string(body, "callback_url", 2048))
    return SendRequest(recipients, text, info, sender, reference, callback_url)


def _outcome(
    message: store_messages.NewMessage, result: SendResult, at: str
) -> store_messages.Outcome:
    """Settle one message from its provider call's result, per the accounting rule."""
    if result.failure == "timeout":
        return store_messages.Outcome(
            message.id,
            "unknown",
            at,
            message.segments,
            message.cost,
            error_code="provider_timeout",
            error_detail=result.detail,
        )
    if result.failure is not None:  # error or unavailable: the call did not happen
        code = "provider_error" if result.failure == "error" else "provider_unavailable"
        return store_messages.Outcome(
            message.id, "failed", at, 0, 0, error_code=code, error_detail=result.detail
        )
    answer = result.results.get(message.recipient)
    if answer is None:
        return store_messages.Outcome(
            message.id,
            "unknown",
            at,
            message.segments,
            message.cost,
            error_code="provider_no_result",
            error_detail="the provider's answer did not mention this recipient",
        )
    if answer.status == "sent":
        cost = message.cost if answer.cost is None else answer.cost
        return store_messages.Outcome(
            message.id, "sent", at, message.segments, cost, provider_message_id=answer.message_id
        )
    cost = answer.cost or 0
    return store_messages.Outcome(
        message.id,
        "failed",
        at,
        message.segments if cost else 0,
        cost,
        provider_message_id=answer.message_id,
        error_code="provider_rejected",
        error_detail=answer.message or "the provider refused this recipient",
    )


async def send(
    ctx: SendContext,
    team_id: str,
    request: SendRequest,
    *,
    idempotency_key: str | None = None,
    body_hash: str = "",
    client_dlr: str | None = None,
) -> Answer:
    """Reserve, call the provider in batches, settle, and return the 201 answer.

    Raises QuotaExceeded before anything is stored or sent, and the provider errors when no
    batch got an answer (the messages are then stored as failed or unknown). With an
    Idempotency-Key, a live key's first answer is replayed instead, and this answer is kept.
    """
    now = ctx.clock()
    claim = None
    if idempotency_key is not None:
        claim = store_messages.IdempotencyClaim(
            idempotency_key, body_hash, iso(now - IDEMPOTENCY_TTL)
        )
    batch = _new_batch(ctx, team_id, request, now, client_dlr)
    try:
        reserved = await store_messages.reserve(ctx.store, batch, claim)
    except store_messages.TeamInactive:
        raise Forbidden(f"team {team_id!r} is disabled", code="team_disabled") from None
    if isinstance(reserved, store_messages.PriorAnswer):
        return _replay(reserved, body_hash)
    if reserved is not None:
        ctx.metrics.quota_rejections.labels(team_id, reserved.quota).inc()
        raise _quota_error(reserved, now, ctx.tz)
    try:
        answer = Answer(201, dumps(await _deliver(ctx, batch, request)))
    except GatewayError as exc:
        if idempotency_key is not None:
            await store_messages.remember_answer(
                ctx.store,
                team_id,
                idempotency_key,
                exc.status,
                PROBLEM_CONTENT_TYPE,
                dumps(error_body(exc, "/messages")),
            )
        raise
    if idempotency_key is not None:
        await store_messages.remember_answer(
            ctx.store, team_id, idempotency_key, answer.status, answer.content_type, answer.body
        )
    return answer


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
    )


async def _deliver(
    ctx: SendContext, batch: store_messages.Batch, request: SendRequest
) -> dict[str, Any]:
    """Call the provider for every chunk of the batch, settle, and build the 201 body."""
    settings = ctx.settings
    team_id = batch.team_id
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

    if len(chunks) == 1:  # the common case: no tasks to make
        results = [await call(chunks[0])]
    else:
        results = list(await asyncio.gather(*(call(chunk) for chunk in chunks)))
    settled_at = iso(ctx.clock())
    outcomes = [
        _outcome(message, result, settled_at)
        for chunk, result in zip(chunks, results, strict=True)
        for message in chunk
    ]
    stored, queued = await store_messages.settle(
        ctx.store, batch, outcomes, webhook_delay=settings.webhook_retry_schedule[0]
    )
    if queued:
        ctx.webhooks_queued()
    for status, count in Counter(o.status for o in outcomes).items():
        ctx.metrics.messages.labels(status).inc(count)
    if log.isEnabledFor(logging.INFO):
        log.info(
            "batch %s for team %s: %d recipients in %d provider call(s): %s",
            batch.batch_id,
            team_id,
            len(batch.messages),
            len(chunks),
            ", ".join(sorted({o.status for o in outcomes})),
        )
    if all(r.failure is not None for r in results):
        raise _provider_failure(results, batch.batch_id, stored)
    return {
        "batch_id": batch.batch_id,
        "messages": stored,
        "total_cost": sum(m["cost"] for m in stored),
        "currency": "RWF",
    }


def _provider_failure(
    results: Sequence[SendResult], batch_id: str, stored: list[dict[str, Any]]
) -> GatewayError:
    """The error for a send no provider call answered: timeout wins (money may have moved)."""
    kinds = {r.failure for r in results}
    detail = next((r.detail for r in results if r.detail), None) or "the provider failed"
    extra = {"batch_id": batch_id, "messages": stored}
    if "timeout" in kinds:
        return ProviderTimeout(
            f"{detail}; the messages are 'unknown' and stay charged until the outcome is known",
            extra=extra,
        )
    if "error" in kinds:
        return ProviderError(f"the provider refused the send: {detail}", extra=extra)
    return ProviderUnavailable(f"{detail}; nothing was sent", extra=extra)


async def recover_interrupted(store: Store, at: datetime) -> None:
    """After a crash: messages left `sending` become `unknown`, and their in-flight
    Idempotency-Keys answer what a lost provider answer would have (504, still charged)."""
    stranded = await store_messages.mark_stranded_unknown(store, iso(at))
    if stranded:
        log.warning("%d message(s) left 'sending' by an earlier run are now 'unknown'", stranded)
    for team_id, key, batch_id in await store_messages.stranded_claims(store):
        messages = await store_messages.get_batch(store, team_id, batch_id) if batch_id else []
        body = problem_body(
            504,
            "provider_timeout",
            ProviderTimeout.title,
            "the gateway stopped before the provider answered; the messages are 'unknown' "
            "and stay charged until the outcome is known",
            instance="/messages",
            extra={"batch_id": batch_id, "messages": messages},
        )
        await store_messages.remember_answer(
            store, team_id, key, 504, PROBLEM_CONTENT_TYPE, dumps(body)
        )
