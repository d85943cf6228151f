"""The schema's numbered versions: one file per version for each database, applied in order.

Version N means the same tables on both; a database newer than this list refuses to start.
"""

from __future__ import annotations

from typing import NamedTuple


class Migration(NamedTuple):
    """One schema version's file for each database."""

    sqlite: str
    postgresql: str


MIGRATIONS = tuple(Migration(f"schema_{n}.sql", f"postgres_{n}.sql") for n in range(1, 18))
