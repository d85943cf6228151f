"""The store's group commit: concurrent writes share a transaction, yet fail one by one."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from gateway.store import Store


def put(conn: sqlite3.Connection, key: str, fail: bool) -> str:
    conn.execute("INSERT INTO meta (key, value) VALUES (?, 'v')", (key,))
    if fail:
        raise ValueError(f"refused {key}")
    return key


async def test_a_failing_write_is_undone_alone(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store.db"))
    await store.open()
    try:
        results = await asyncio.gather(
            *(store.write(put, f"k{n}", n % 3 == 0) for n in range(30)), return_exceptions=True
        )
        for n, result in enumerate(results):
            if n % 3 == 0:
                assert isinstance(result, ValueError)
            else:
                assert result == f"k{n}"
        rows = await store.fetchall("SELECT key FROM meta WHERE key LIKE 'k%'")
        assert sorted(r["key"] for r in rows) == sorted(f"k{n}" for n in range(30) if n % 3)
        # A write that breaks a constraint is refused too, and the store goes on.
        with pytest.raises(sqlite3.IntegrityError):
            await store.write(put, "k1", False)
        assert await store.write(put, "after", False) == "after"
    finally:
        await store.close()
