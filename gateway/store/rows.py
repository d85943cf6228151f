"""Turning stored values into API objects: the message object is built here and nowhere else."""

from __future__ import annotations

from typing import Any

import aiosqlite

from ..platform.jsonio import loads

# Every status a message can have, in the order a timeline goes through them.
STATUSES = (
    "scheduled",
    "queued",
    "sending",
    "sent",
    "delivered",
    "undelivered",
    "failed",
    "unknown",
    "expired",
    "canceled",
)


def message_object(
    *,
    id: str,
    batch_id: str,
    to: str,
    text: str,
    sender: str | None,
    reference: str | None,
    status: str,
    segments: int,
    encoding: str,
    cost: int,
    provider_message_id: str | None,
    error_code: str | None,
    error_detail: str | None,
    created_at: str,
    sent_at: str | None,
    completed_at: str | None,
    events: list[dict[str, Any]],
    metadata: str | None = None,
    test: bool = False,
) -> dict[str, Any]:
    """The API's message object (`metadata` as stored: JSON text, or None)."""
    return {
        "id": id,
        "batch_id": batch_id,
        "to": to,
        "text": text,
        "sender": sender,
        "reference": reference,
        "status": status,
        "segments": segments,
        "encoding": encoding,
        "cost": cost,
        "currency": "RWF",
        "provider_message_id": provider_message_id,
        "error": {"code": error_code, "detail": error_detail} if error_code else None,
        "created_at": created_at,
        "sent_at": sent_at,
        "completed_at": completed_at,
        "events": events,
        "metadata": loads(metadata) if metadata else None,
        "test": test,
    }


def resource(row: aiosqlite.Row) -> dict[str, Any]:
    """The API's message object from a stored row."""
    return message_object(
        id=row["id"],
        batch_id=row["batch_id"],
        to=row["recipient"],
        text=row["text"],
        sender=row["sender"],
        reference=row["reference"],
        status=row["status"],
        segments=row["segments"],
        encoding=row["encoding"],
        cost=row["cost"],
        provider_message_id=row["provider_message_id"],
        error_code=row["error_code"],
        error_detail=row["error_detail"],
        created_at=row["created_at"],
        sent_at=row["sent_at"],
        completed_at=row["completed_at"],
        events=loads(row["events"]),
        metadata=row["metadata"],
        test=bool(row["test"]),
    )
