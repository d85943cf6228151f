"""Canceling queued messages before they are handed to the provider: ended, refunded and
webhooked in one transaction."""

from __future__ import annotations

from typing import Any

from ..errors import Conflict, NotFound
from ..platform.clock import iso
from ..store import queue as store_queue
from ..store import reads as store_reads
from ..store.db import Tx
from ..store.rows import resource
from .answers import batch_body
from .dispatch import end_waiting
from .validation import MAX_RECIPIENTS
from .workflow import SendContext

CANCELED_DETAIL = "canceled by the team before it was handed to the provider; it is refunded"


async def _cancel(
    tx: Tx, team_id: str, column: str, value: str, at: str, delay: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Cancel the team's waiting messages whose `column` (id or batch_id) is `value`: the
    messages canceled, the matching messages as they now stand, the webhooks queued."""
    where = f"team_id = ? AND {column} = ?"
    rows = await store_queue.waiting_rows(tx, where, (team_id, value), limit=MAX_RECIPIENTS)
    ended, webhooks = await end_waiting(
        tx, rows, "canceled", at, "canceled", CANCELED_DETAIL, delay
    )
    if column == "id":
        found = await store_reads.get_row(tx, team_id, value)
        return ended, [resource(found)] if found else [], webhooks
    return ended, await store_reads.batch_messages(tx, team_id, value), webhooks


async def cancel_message(ctx: SendContext, team_id: str, message_id: str) -> dict[str, Any]:
    """Cancel one waiting message of the team: the message, `canceled` and refunded. NotFound
    for another team's (or no) message; Conflict if it was already handed over or is final."""
    ended, found, webhooks = await ctx.store.write(
        _cancel, team_id, "id", message_id, iso(ctx.clock()), ctx.settings.webhook_retry_schedule[0]
    )
    if not found:
        raise NotFound(f"no message {message_id!r}", code="message_not_found")
    if not ended:
        raise Conflict(
            f"message {message_id!r} is {found[0]['status']}: only a queued or scheduled "
            "message can be canceled",
            code="not_cancelable",
            extra={"message_status": found[0]["status"]},
        )
    _canceled(ctx, len(ended), webhooks)
    return found[0]


async def cancel_batch(ctx: SendContext, team_id: str, batch_id: str) -> dict[str, Any]:
    """Cancel every waiting message of one of the team's batches: the batch as it now stands
    (`canceled` counts what this call canceled). NotFound for another team's (or no) batch;
    Conflict if none of its messages could still be canceled."""
    ended, messages, webhooks = await ctx.store.write(
        _cancel,
        team_id,
        "batch_id",
        batch_id,
        iso(ctx.clock()),
        ctx.settings.webhook_retry_schedule[0],
    )
    if not messages:
        raise NotFound(f"no batch {batch_id!r}", code="batch_not_found")
    if not ended:
        raise Conflict(
            f"batch {batch_id!r} has no queued or scheduled message left to cancel",
            code="not_cancelable",
        )
    _canceled(ctx, len(ended), webhooks)
    return {**batch_body(batch_id, messages), "canceled": len(ended)}


def _canceled(ctx: SendContext, count: int, webhooks: int) -> None:
    ctx.metrics.messages.labels("canceled").inc(count)
    if webhooks:
        ctx.webhooks_queued()
