"""SQL that the stores' writes share: the event timeline, and the database's clock."""

from __future__ import annotations

from typing import Any

from .db import Sql


def append_event(status: str, at: str) -> Sql:
    """`events` with {"status", "at"} appended, from the placeholders `status` and `at`."""
    return Sql(
        sqlite=f"json_insert(events, '$[#]', json_object('status', {status}, 'at', {at}))",
        # the list is never empty (it starts with `sending`): append before its closing `]`
        postgresql=f"left(events, -1) || ',' || json_build_object('status', {status}::text,"
        f" 'at', {at}::text)::text || ']'",
    )


# The database's clock, as the gateway's ISO text (2026-11-24T08:00:00.000Z, which sorts as
# time does). Every time one process writes and another compares (leases, claims, due and
# expiry times, Idempotency-Keys) is this one, read in the SQL that compares it, so replicas
# whose own clocks disagree still agree (SPEC section 7, "One clock"). SQLite's is its host's,
# which every process sharing the file shares; PostgreSQL's is the server's.
_PG_FORMAT = '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\''
NOW = Sql(
    sqlite="strftime('%Y-%m-%dT%H:%M:%fZ', 'now')",
    postgresql=f"to_char(clock_timestamp() AT TIME ZONE 'UTC', {_PG_FORMAT})",
)
# The same clock as epoch seconds (a float), for claims kept as numbers.
EPOCH = Sql(
    sqlite="((julianday('now') - 2440587.5) * 86400.0)",
    postgresql="EXTRACT(EPOCH FROM clock_timestamp())::float8",
)


def now_plus(seconds: str) -> Sql:
    """The database's clock `seconds` from now, as ISO text: `seconds` is a placeholder
    (`?2`), or one with a minus sign (`-?2`) for a time in the past."""
    return Sql(
        sqlite=f"strftime('%Y-%m-%dT%H:%M:%fZ', 'now', printf('%.3f seconds', {seconds}))",
        # (`::` binds before the minus: -$2::float8 is -($2::float8), a typed parameter)
        postgresql=f"to_char((clock_timestamp() + make_interval(secs => {seconds}::float8))"
        f" AT TIME ZONE 'UTC', {_PG_FORMAT})",
    )


def with_clock(template: str, **fragments: Sql) -> Sql:
    """`template` with `{now}` (and any other named fragment) written in each dialect."""
    both = {"now": NOW, "epoch": EPOCH, **fragments}
    return Sql(
        sqlite=template.format(**{k: v.sqlite for k, v in both.items()}),
        postgresql=template.format(**{k: v.postgresql for k, v in both.items()}),
    )


def where(*conditions: tuple[str, Any]) -> tuple[str, list[Any]]:
    """The WHERE clause of the `(SQL with one ?, value)` conditions whose value is not None
    (`1 = 1` when none is), and its parameters."""
    kept = [(sql, value) for sql, value in conditions if value is not None]
    return " AND ".join(sql for sql, _ in kept) or "1 = 1", [value for _, value in kept]
