"""The suppression list (SPEC 9): numbers not to be texted, for one team or for every team.

A row's `team_id` is the team's id, or `*` for every team. The send's lookup reads the primary
key (team, number) for the team and for `*`, so it costs the same at ten entries as at a million
(bench/suppressions.py). Every change is audited in its own transaction.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import audit
from .audit import Actor
from .db import Row, Sql, Store, Tx
from .shared import with_clock

GLOBAL = "*"

# One row (the matches as "list number,..."), so that a send's lookup can be read on the
# loop's own thread (Store.read_now: microseconds on SQLite, no hand-off to the reader's).
_BLOCKED = Sql(
    "SELECT group_concat(team_id || ' ' || number, ',') AS found FROM suppressions"
    " WHERE team_id IN (?1, '*') AND number IN (SELECT value FROM json_each(?2))",
    "SELECT string_agg(team_id || ' ' || number, ',') AS found FROM suppressions"
    " WHERE team_id IN ($1, '*')"
    " AND number = ANY(ARRAY(SELECT jsonb_array_elements_text($2::jsonb)))",
)
# A send to one number (most of them: one-time passwords) asks for it alone, without the JSON.
_BLOCKED_ONE = Sql(
    "SELECT group_concat(team_id || ' ' || number, ',') AS found FROM suppressions"
    " WHERE team_id IN (?1, '*') AND number = ?2",
    "SELECT string_agg(team_id || ' ' || number, ',') AS found FROM suppressions"
    " WHERE team_id IN ($1, '*') AND number = $2",
)
QUICK_LOOKUP = 100  # recipients: up to this many, on the loop's thread; more, on the reader's


async def blocked(store: Store, team_id: str, numbers: Sequence[str]) -> dict[str, str]:
    """Which of `numbers` are suppressed for the team: number -> `team` or `global` (a number on
    both lists is `global`, the one an OTP does not pass)."""
    if not numbers:
        return {}
    if len(numbers) == 1:
        row = await store.read_now(_BLOCKED_ONE, (team_id, numbers[0]))
    elif len(numbers) <= QUICK_LOOKUP:
        row = await store.read_now(_BLOCKED, (team_id, json.dumps(list(numbers))))
    else:
        row = await store.fetchone(_BLOCKED, (team_id, json.dumps(list(numbers))))
    found: dict[str, str] = {}
    if row is None or not row["found"]:
        return found
    for match in str(row["found"]).split(","):
        list_key, _, number = match.partition(" ")
        if list_key == GLOBAL:
            found[number] = "global"
        else:
            found.setdefault(number, "team")
    return found


@dataclass(frozen=True)
class Entry:
    """One suppressed number."""

    team: str | None  # None: every team
    number: str
    reason: str | None
    created_at: str
    created_by: str

    def public(self) -> dict[str, Any]:
        """The suppression object of the API."""
        return {
            "number": self.number,
            "team": self.team,
            "scope": "global" if self.team is None else "team",
            "reason": self.reason,
            "created_at": self.created_at,
            "created_by": self.created_by,
        }


def _entry(row: Row) -> Entry:
    team = row["team_id"]
    return Entry(
        None if team == GLOBAL else team,
        row["number"],
        row["reason"],
        row["created_at"],
        row["created_by"],
    )


def _key(team: str | None) -> str:
    return GLOBAL if team is None else team


# (a change of reason only: the same again changes nothing, and writes no audit entry)
_ADD = with_clock(
    "INSERT INTO suppressions (team_id, number, reason, created_at, created_by)"
    " VALUES (?1, ?2, ?3, {now}, ?4)"
    " ON CONFLICT (team_id, number) DO UPDATE SET reason = excluded.reason"
    " WHERE suppressions.reason {differs} excluded.reason",
    differs=Sql("IS NOT", "IS DISTINCT FROM"),
)
_ONE = "SELECT * FROM suppressions WHERE team_id = ? AND number = ?"


async def add(
    store: Store, team: str | None, number: str, reason: str | None, actor: Actor
) -> tuple[Entry, bool]:
    """Suppress a number for a team (None: every team), or change its reason; the entry and
    whether it is new. A change writes one audit entry; the same again writes none."""
    return await store.write(_add, _key(team), number, reason, actor)


async def _add(
    tx: Tx, key: str, number: str, reason: str | None, actor: Actor
) -> tuple[Entry, bool]:
    before = await tx.fetchone(_ONE, (key, number))
    changed = await tx.execute(_ADD, (key, number, reason, actor.name))
    row = await tx.fetchone(_ONE, (key, number))
    assert row is not None
    entry = _entry(row)
    if changed:
        await audit.append(
            tx,
            actor,
            "suppression.added" if before is None else "suppression.updated",
            f"{key}:{number}",
            team_id=entry.team,
            before=None if before is None else {"reason": before["reason"]},
            after={"number": number, "scope": entry.public()["scope"], "reason": reason},
        )
    return entry, before is None


async def remove(store: Store, team: str | None, number: str, actor: Actor) -> bool:
    """Lift a suppression; False if there was none (and nothing is written)."""
    return await store.write(_remove, _key(team), number, actor)


async def _remove(tx: Tx, key: str, number: str, actor: Actor) -> bool:
    row = await tx.fetchone(_ONE, (key, number))
    if row is None:
        return False
    await tx.execute("DELETE FROM suppressions WHERE team_id = ? AND number = ?", (key, number))
    entry = _entry(row)
    await audit.append(
        tx,
        actor,
        "suppression.removed",
        f"{key}:{number}",
        team_id=entry.team,
        before={"number": number, "scope": entry.public()["scope"], "reason": entry.reason},
    )
    return True


async def page(store: Store, team: str | None, after: str | None, limit: int) -> list[Entry]:
    """A page of one list (a team's, or None: the global one), by number, after `after`."""
    rows = await store.fetchall(
        "SELECT * FROM suppressions WHERE team_id = ? AND number > ? ORDER BY number LIMIT ?",
        (_key(team), after or "", limit),
    )
    return [_entry(r) for r in rows]


async def page_all(store: Store, after: tuple[str, str] | None, limit: int) -> list[Entry]:
    """A page of every list, by (list, number), after the `after` key (the global list's key
    is `*`, first)."""
    if after is None:
        rows = await store.fetchall(
            "SELECT * FROM suppressions ORDER BY team_id, number LIMIT ?", (limit,)
        )
    else:
        rows = await store.fetchall(
            "SELECT * FROM suppressions WHERE (team_id, number) > (?, ?)"
            " ORDER BY team_id, number LIMIT ?",
            (*after, limit),
        )
    return [_entry(r) for r in rows]


def key_of(entry: Entry) -> tuple[str, str]:
    """An entry's place in page_all's order."""
    return _key(entry.team), entry.number


_IMPORT = with_clock(
    "INSERT INTO suppressions (team_id, number, reason, created_at, created_by)"
    " SELECT ?1, value, ?2, {now}, ?3 FROM json_each(?4) WHERE true"
    " ON CONFLICT (team_id, number) DO NOTHING"
)
_IMPORT_PG = with_clock(
    "INSERT INTO suppressions (team_id, number, reason, created_at, created_by)"
    " SELECT ?1, value, ?2, {now}, ?3 FROM jsonb_array_elements_text(?4::jsonb)"
    " ON CONFLICT (team_id, number) DO NOTHING"
)
_IMPORT_EITHER = Sql(_IMPORT.sqlite, _IMPORT_PG.postgresql)


async def import_numbers(
    store: Store, team: str | None, numbers: Sequence[str], reason: str | None, actor: Actor
) -> tuple[int, int]:
    """Suppress many numbers at once (one statement, one transaction, one audit entry): how
    many were added and how many were on the list already."""
    return await store.write(_import, _key(team), list(dict.fromkeys(numbers)), reason, actor)


async def _import(
    tx: Tx, key: str, numbers: list[str], reason: str | None, actor: Actor
) -> tuple[int, int]:
    added = await tx.execute(
        _IMPORT_EITHER, (key, reason, actor.name, json.dumps(numbers, separators=(",", ":")))
    )
    already = len(numbers) - added
    if added:
        await audit.append(
            tx,
            actor,
            "suppression.imported",
            key,
            team_id=None if key == GLOBAL else key,
            after={
                "scope": "global" if key == GLOBAL else "team",
                "added": added,
                "already": already,
                "reason": reason,
            },
        )
    return added, already
