"""A consistent copy of a live SQLite database, with SQLite's online backup API."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

PAGES_PER_STEP = 4096  # 16 MiB at SQLite's default page size: the writer waits at most a step


class BackupError(Exception):
    """The copy could not be made; the message is one line for the operator."""


def backup(
    source: str,
    dest: str,
    progress: Callable[[int, int], None],
    pages_per_step: int = PAGES_PER_STEP,
) -> tuple[int, str]:
    """Copy `source` to a new file `dest` while the gateway may be writing it; (pages, result
    of `PRAGMA integrity_check` on the copy). `progress(copied, total)` follows the copy."""
    if not Path(source).is_file():
        raise BackupError(f"no database at {source}")
    if Path(dest).exists():
        raise BackupError(f"{dest} exists already; give a new file name")
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True)
    try:
        src.execute("PRAGMA busy_timeout=10000")
        dst = sqlite3.connect(dest)
        try:

            def step(_status: int, remaining: int, total: int) -> None:
                progress(total - remaining, total)

            # One read transaction for the whole copy: every step reads the same snapshot (a
            # WAL reader never blocks the server's writes), so the copy is consistent and is
            # not restarted by the writes made meanwhile.
            src.execute("BEGIN")
            src.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            src.backup(dst, pages=pages_per_step, progress=step)
            src.execute("COMMIT")
            pages = int(dst.execute("PRAGMA page_count").fetchone()[0])
            check = str(dst.execute("PRAGMA integrity_check").fetchone()[0])
        finally:
            dst.close()
    except sqlite3.Error as exc:
        Path(dest).unlink(missing_ok=True)
        raise BackupError(f"the backup failed: {exc}") from None
    finally:
        src.close()
    return pages, check
