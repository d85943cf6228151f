"""Statements that the message and the delivery-report writes share."""

from __future__ import annotations

from .db import Sql


def append_event(status: str, at: str) -> Sql:
    """`events` with {"status", "at"} appended, from the placeholders `status` and `at`."""
    return Sql(
        sqlite=f"json_insert(events, '$[#]', json_object('status', {status}, 'at', {at}))",
        # the list is never empty (it starts with `sending`): append before its closing `]`
        postgresql=f"left(events, -1) || ',' || json_build_object('status', {status}::text,"
        f" 'at', {at}::text)::text || ']'",
    )


# Settling a batch and applying its delivery reports take turns on PostgreSQL (a report that
# arrives while its batch settles on another replica is then either applied by the settlement
# or finds its message settled); on SQLite every write transaction already does.
LOCK_BATCH = "SELECT pg_advisory_xact_lock(hashtext(?))"
