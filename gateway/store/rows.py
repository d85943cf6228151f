"""Turning rows into API objects."""

from __future__ import annotations

from typing import Any

import aiosqlite

from ..jsonio import loads


def resource(row: aiosqlite.Row) -> dict[str, Any]:
    """The API's message object from a row."""
    error = None
    if row["error_code"]:
        error = {"code": row["error_code"], "detail": row["error_detail"]}
    return {
        "id": row["id"],
        "batch_id": row["batch_id"],
        "to": row["recipient"],
        "text": row["text"],
        "sender": row["sender"],
        "reference": row["reference"],
        "status": row["status"],
        "segments": row["segments"],
        "encoding": row["encoding"],
        "cost": row["cost"],
        "currency": "RWF",
        "provider_message_id": row["provider_message_id"],
        "error": error,
        "created_at": row["created_at"],
        "sent_at": row["sent_at"],
        "completed_at": row["completed_at"],
        "events": loads(row["events"]),
    }
