"""Deleting what is older than the retention period, a small chunk per write."""

from __future__ import annotations

from .db import Store

CHUNK = 2000

# Each statement deletes at most one chunk of old rows, oldest first, walking an index (or the
# rowid, which grows with time), so a write never holds the database for long. Webhooks still
# pending are kept, and so are their messages (a delivery may still need them), and so are
# messages still waiting in the queue (a send_at may be weeks ahead). Usage
# counters are never touched: billing for an old month still answers.
_STATEMENTS = (
    (
        "webhooks",
        "DELETE FROM webhooks WHERE id IN (SELECT id FROM webhooks WHERE message_id < ?"
        " AND status != 'pending' ORDER BY message_id LIMIT ?)",
    ),
    (
        "messages",
        "DELETE FROM messages WHERE id IN (SELECT m.id FROM messages m WHERE m.id < ?"
        " AND m.status NOT IN ('queued', 'scheduled')"
        " AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.message_id = m.id)"
        " ORDER BY m.id LIMIT ?)",
    ),
    (
        "dlr_reports",
        "DELETE FROM dlr_reports WHERE id IN (SELECT id FROM dlr_reports"
        " WHERE received_at < ? ORDER BY id LIMIT ?)",
    ),
)


async def delete_older_than(
    store: Store, message_id_bound: str, received_before: str, chunk: int = CHUNK
) -> dict[str, int]:
    """Delete messages (with their events) created before the ULID bound, their finished
    webhook deliveries, and delivery reports received before `received_before`; how many of
    each."""
    deleted: dict[str, int] = {}
    for table, sql in _STATEMENTS:
        bound = received_before if table == "dlr_reports" else message_id_bound
        total = 0
        while True:
            count = await store.run(sql, (bound, chunk))
            total += count
            if count < chunk:
                break
        deleted[table] = total
    return deleted
