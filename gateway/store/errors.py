"""The store's own errors; the layer above decides what they mean to a client."""

from __future__ import annotations


class StoreError(Exception):
    """Something the database refused or could not do."""


class StoreClosed(StoreError):
    """The store was closed (the gateway is stopping)."""


class NotFound(StoreError):
    """The row to change does not exist."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"no {kind} {key!r}")
        self.kind = kind
        self.key = key


class Duplicate(StoreError):
    """A row with this key exists already (a unique key refused the insert)."""

    def __init__(self, kind: str, key: str) -> None:
        super().__init__(f"{kind} {key!r} already exists")
        self.kind = kind
        self.key = key


class Refused(StoreError):
    """The database refused a write by one of its own rules (a PostgreSQL function raised
    `code`); nothing of the write was kept."""

    def __init__(self, code: str) -> None:
        super().__init__(f"refused by the database ({code})")
        self.code = code


class DatabaseUnavailable(StoreError):
    """The write was not made: the database could not take it now; retrying later may work."""


class DatabaseBusy(DatabaseUnavailable):
    """Another process held the database's write lock for longer than the gateway waits."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"another process held the database's write lock for over {seconds:g} s")
        self.seconds = seconds


class DatabaseUnreachable(DatabaseUnavailable):
    """The database server could not be reached (PostgreSQL down, restarting, network lost).

    `committed_unknown` is set when the connection was lost while COMMIT was on its way: the
    write may have been made.
    """

    def __init__(self, reason: str, *, committed_unknown: bool = False) -> None:
        super().__init__(f"the database cannot be reached ({reason})")
        self.committed_unknown = committed_unknown


class SchemaTooNew(StoreError):
    """The database was migrated by a newer gateway than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the database's schema is version {found}, newer than this gateway's {known}: "
            "run the newer gateway (the database was left unchanged)"
        )
