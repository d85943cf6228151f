"""What a send answers: the 201 body, the problem of a failed send, the 504 of a lost answer,
and the replay of an Idempotency-Key."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..errors import (
    PROBLEM_CONTENT_TYPE,
    Conflict,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    ValidationFailed,
    problem_body,
)
from ..platform.jsonio import dumps
from ..provider.client import SendResult
from ..store import messages as store_messages
from ..store import settle as store_settle
from ..store.keys import KeyAnswer

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


def replay(prior: store_messages.PriorAnswer, body_hash: str) -> Answer:
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


def batch_body(batch_id: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The body of a send's 201 (and a queued send's 202, and a batch cancel's 200)."""
    return {
        "batch_id": batch_id,
        "messages": messages,
        "total_cost": sum(m["cost"] for m in messages),
        "currency": "RWF",
    }


def accepted_answer(batch: store_messages.Batch) -> KeyAnswer:
    """A queued send's 202: the 201's body, its messages `queued` or `scheduled`."""
    return KeyAnswer(202, JSON, dumps(batch_body(batch.batch_id, store_settle.as_queued(batch))))


AnswerFor = Callable[[list[dict[str, Any]]], KeyAnswer]


def problem_answer(
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
    return problem_answer(
        504,
        ProviderTimeout.code,
        ProviderTimeout.title,
        f"{detail}; the messages are 'unknown' and stay charged until the outcome is known",
        batch_id or "",
        messages,
    )


def answer_builder(batch_id: str, results: Sequence[SendResult] | None) -> AnswerFor:
    """How the send's answer is built from its messages as stored."""

    def answer_for(messages: list[dict[str, Any]]) -> KeyAnswer:
        if results is None:  # the gateway failed around the provider call
            if any(m["status"] == "unknown" for m in messages):
                return lost_answer(batch_id, messages, "the gateway failed mid-send")
            return problem_answer(
                500,
                "internal_error",
                "Internal error",
                "the gateway failed before calling the provider; nothing was sent and "
                "nothing is charged",
                batch_id,
                messages,
            )
        # (no call at all: every recipient was suppressed, each message `failed`, a 201)
        if results and all(r.failure is not None for r in results):
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
        return problem_answer(
            ProviderError.status,
            ProviderError.code,
            ProviderError.title,
            f"the provider refused the send: {detail}",
            batch_id,
            messages,
        )
    return problem_answer(
        ProviderUnavailable.status,
        ProviderUnavailable.code,
        ProviderUnavailable.title,
        f"{detail}; nothing was sent",
        batch_id,
        messages,
    )


def to_answer(answer: KeyAnswer) -> Answer:
    headers = {"Retry-After": "5"} if answer.status == ProviderUnavailable.status else {}
    return Answer(answer.status, answer.body, answer.content_type, headers=headers)


def swept_answer(batch_id: str | None, messages: list[dict[str, Any]]) -> KeyAnswer:
    """The answer an Idempotency-Key gets when the process answering it died mid-send."""
    return lost_answer(
        batch_id, messages, "the gateway stopped before the provider's answer was stored"
    )
