"""Deleting what is older than the retention period, a small chunk per write."""

from __future__ import annotations

from .db import Sql, Statement, Store

CHUNK = 2000

# Each statement deletes at most one chunk of old rows, oldest first, walking an index (or the
# rowid, which grows with time), so a write never holds the database for long. Webhooks still
# pending are kept, and so are their messages (a delivery may still need them), and so are
# messages still waiting in the queue (a send_at may be weeks ahead). Usage
# counters are never touched: billing for an old month still answers.
_STATEMENTS: tuple[tuple[str, Statement], ...] = (
    (
        "webhooks",
        "DELETE FROM webhooks WHERE id IN (SELECT id FROM webhooks WHERE message_id < ?"
        " AND status != 'pending' ORDER BY message_id LIMIT ?)",
    ),
    (
        # usage alerts' webhooks belong to no message: by their own (time-ordered) id, along
        # webhooks_message's NULL entries
        "alert_webhooks",
        "DELETE FROM webhooks WHERE id IN (SELECT id FROM webhooks WHERE message_id IS NULL"
        " AND id < ? AND status != 'pending' LIMIT ?)",
    ),
    (
        "messages",
        # OFFSET 0 keeps PostgreSQL from making the NOT EXISTS a hash anti-join over every
        # webhook: it stays a probe of webhooks_message per old message (SQLite's plan anyway)
        Sql(
            *(
                "DELETE FROM messages WHERE id IN (SELECT m.id FROM messages m WHERE m.id < ?"  # noqa: S608 - a fixed fence
                " AND m.status NOT IN ('queued', 'scheduled')"
                f" AND NOT EXISTS (SELECT 1 FROM webhooks w WHERE w.message_id = m.id{fence})"
                " ORDER BY m.id LIMIT ?)"
                for fence in ("", " OFFSET 0")
            )
        ),
    ),
    (
        "dlr_reports",
        # along dlr_reports_received (schema 14): the last chunk stops at the bound instead of
        # reading every newer report
        "DELETE FROM dlr_reports WHERE id IN (SELECT id FROM dlr_reports"
        " WHERE received_at < ? ORDER BY received_at LIMIT ?)",
    ),
)


async def delete_older_than(
    store: Store, message_id_bound: str, received_before: str, chunk: int = CHUNK
) -> dict[str, int]:
    """Delete messages (with their events) created before the ULID bound, their finished
    webhook deliveries (and usage alerts' from before it), and delivery reports received before
    `received_before`; how many of each. The audit log and the usage alerts themselves are
    never deleted."""
    deleted: dict[str, int] = {}
    for table, sql in _STATEMENTS:
        bound = {
            "dlr_reports": received_before,
            "alert_webhooks": "whk_" + message_id_bound.removeprefix("msg_"),
        }.get(table, message_id_bound)
        total = 0
        while True:
            count = await store.run(sql, (bound, chunk))
            total += count
            if count < chunk:
                break
        deleted[table] = total
    return deleted
