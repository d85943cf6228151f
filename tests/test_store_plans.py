"""Every GET /messages filter is served by an index, newest first, with no sort step: a page
costs the same at a million rows as at ten (the benchmark measures it; this keeps it so)."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from gateway.store.reads import ListFilter, list_query
from gateway.store.sqlite import SqliteStore

FILTERS: dict[str, Any] = {
    "test": True,
    "status": "delivered",
    "to": "250788123456",
    "reference": "order-42",
    "batch_id": "bat_01M8",
    "min_id": "msg_01M8",
    "max_id": "msg_01M9",
    "before_id": "msg_01M85",
}


@pytest.fixture
async def database(tmp_path: Path) -> str:
    path = str(tmp_path / "plans.db")
    store = SqliteStore(path)
    await store.open()  # the real migrations
    await store.close()
    return path


@pytest.mark.parametrize(
    "names",
    [()] + [c for n in (1, 2) for c in itertools.combinations(sorted(FILTERS), n)],
    ids=lambda names: "+".join(names) or "none",
)
def test_list_queries_use_an_index_and_no_sort(database: str, names: tuple[str, ...]) -> None:
    sql, params = list_query("payments", ListFilter(limit=51, **{n: FILTERS[n] for n in names}))
    with sqlite3.connect(database) as conn:
        plan = " | ".join(row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "USING INDEX" in plan or "USING PRIMARY KEY" in plan, plan
    assert "TEMP B-TREE" not in plan, plan  # no sort of the matching rows: keyset order


@pytest.mark.parametrize("one", [True, False], ids=["one recipient", "several"])
def test_the_suppression_lookup_probes_the_primary_key(database: str, one: bool) -> None:
    """The send's lookup (store.suppressions.blocked): a search on (team, number), no scan."""
    from gateway.store.suppressions import _BLOCKED, _BLOCKED_ONE

    sql, number = (_BLOCKED_ONE, "250788000001") if one else (_BLOCKED, '["250788000001"]')
    with sqlite3.connect(database) as conn:
        plan = " | ".join(
            row[3] for row in conn.execute(f"EXPLAIN QUERY PLAN {sql.sqlite}", ("t", number))
        )
    assert "SEARCH suppressions USING PRIMARY KEY (team_id=? AND number=?)" in plan, plan
    assert "SCAN suppressions" not in plan, plan
