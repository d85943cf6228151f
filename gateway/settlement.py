"""The accounting rule: how a provider call's result settles each message. Pure."""

from __future__ import annotations

from .provider import RecipientResult, SendResult
from .store.messages import NewMessage, Outcome

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
