"""What a message's change of state queues for its team, in the transaction that changes it:
the signed webhook (its event and payload), and a drop-in client's provider-format DLR."""

from __future__ import annotations

import json
from typing import Any

from ..platform import tracing
from ..platform.clock import parse_iso
from ..platform.ids import ulid
from ..store.db import Row, Tx
from ..store.outbox import (
    NewWebhook,
    insert_event,
    insert_webhook,
    message_trace,
    team_callback_url,
)

WEBHOOK_EVENTS = frozenset({"delivered", "undelivered", "failed", "expired", "canceled"})


def webhook_payload(message: dict[str, Any], at: str) -> tuple[str, str]:
    """(event type, JSON body) of the webhook for a message as the API shows it."""
    event = f"message.{message['status']}"
    body = {"type": event, "timestamp": at, "data": message}
    return event, json.dumps(body, ensure_ascii=False, separators=(",", ":"))


async def queue_webhook(
    tx: Tx,
    team_id: str,
    message: dict[str, Any],
    callback_url: str | None,
    at: str,
    delay: float,
    team_urls: dict[str, str | None],
) -> int:
    """Queue the webhook for one message (as the API shows it) if its state calls for one: to
    its URL (its own, else its team's; `team_urls` caches the teams') and to each of the team's
    endpoints that wants the event; how many deliveries were queued."""
    if message["status"] not in WEBHOOK_EVENTS:
        return 0
    if team_id not in team_urls:
        team_urls[team_id] = await team_callback_url(tx, team_id)
    url = callback_url or team_urls[team_id] or ""
    event, payload = webhook_payload(message, at)
    hook_id = "whk_" + ulid(parse_iso(at))
    trace = await _trace(tx, message["id"]) if tracing.active() else None
    delivery = NewWebhook(
        hook_id, message["id"], team_id, event, url, payload, delay, at, trace=trace
    )
    return await insert_event(tx, delivery)


async def queue_client_dlr(
    tx: Tx, row: Row, state: str, status: str, at: str, delay: float
) -> None:
    """Queue the provider-format GET that a drop-in client asked for with its own `dlrurl`."""
    target = json.loads(row["client_dlr"])
    params = {
        "dnis": row["recipient"],
        "username": target.get("username") or "",
        "password_sealed": target.get("password_sealed") or "",  # opened by the worker only
        "command": "deliver",
        "dlvrMsgId": row["id"],
        "dlvrMsgStat": state,
    }
    hook_id = "whk_" + ulid(parse_iso(at))
    await insert_webhook(
        tx,
        NewWebhook(
            hook_id,
            row["id"],
            row["team_id"],
            f"message.{status}",
            target["url"],
            json.dumps(params),
            delay,
            at,
            kind="dlr",
            trace=row["trace"] or tracing.traceparent(),
        ),
    )


async def _trace(tx: Tx, message_id: str) -> str | None:
    """What the webhook's attempts continue: the trace of the send (a delivery report comes
    later, on a request of the provider's), else the current one."""
    return await message_trace(tx, message_id) or tracing.traceparent()
