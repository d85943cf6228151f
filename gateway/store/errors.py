"""The store's own errors; the layer above decides what they mean to a client."""

from __future__ import annotations


class StoreError(Exception):
    """Something the database refused or could not do."""


class StoreClosed(StoreError):
    """The store was closed (the gateway is stopping)."""


class DatabaseBusy(StoreError):
    """Another process held the database's write lock for longer than the gateway waits."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"another process held the database's write lock for over {seconds:g} s")
        self.seconds = seconds


class SchemaTooNew(StoreError):
    """The database was migrated by a newer gateway than this one."""

    def __init__(self, found: int, known: int) -> None:
        super().__init__(
            f"the database's schema is version {found}, newer than this gateway's {known}: "
            "run the newer gateway (the database was left unchanged)"
        )
