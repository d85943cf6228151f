"""SQL that the message and the delivery-report writes share."""

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
