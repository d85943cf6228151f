"""The audit log (SPEC 8): one entry per configuration change, appended in the change's own
transaction, each chained by SHA-256 over the one before it.

An entry's hash is SHA-256 of the previous entry's hash, a newline, and the entry's canonical
form: the JSON array of its fields in a fixed order (`CHAINED`), UTF-8, no spaces, `before` and
`after` as the JSON text stored. The chain starts from 64 zeros. `audit_head` holds the last
entry's seq and hash and moves in the same transaction, so appends take turns on its row
(PostgreSQL's row lock; SQLite's write lock) and a removed last entry shows as a missing one.
Nothing here updates or deletes an entry, and the schema's triggers refuse it to anyone else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from .db import Row, Sql, Store, Tx
from .shared import with_clock

GENESIS = "0" * 64
SOURCES = ("api", "dashboard", "cli", "gateway")
CHAINED = (
    "seq",
    "at",
    "actor",
    "source",
    "client",
    "request_id",
    "action",
    "target",
    "team_id",
    "before",
    "after",
)


@dataclass(frozen=True)
class Actor:
    """Who makes a change, from where: the token's subject (or `cli:<OS user>`), the source,
    the client's address and the request's id."""

    name: str
    source: str
    client: str | None = None
    request_id: str | None = None


GATEWAY = Actor("gateway", "gateway")  # the gateway's own changes (the sandbox's demo team)


def _json(fields: Mapping[str, Any] | None) -> str | None:
    if fields is None:
        return None
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def canonical(entry: Mapping[str, Any]) -> bytes:
    """The bytes an entry's hash covers (after the previous hash)."""
    return json.dumps(
        [entry[name] for name in CHAINED], ensure_ascii=False, separators=(",", ":")
    ).encode()


def chain_hash(prev_hash: str, entry: Mapping[str, Any]) -> str:
    """The hash of `entry` chained over `prev_hash`."""
    return hashlib.sha256(prev_hash.encode() + b"\n" + canonical(entry)).hexdigest()


_HEAD = with_clock(
    "SELECT seq, hash, {now} AS now FROM audit_head WHERE one = 1{lock}",
    lock=Sql("", " FOR UPDATE"),
)
_INSERT = (
    "INSERT INTO audit_log (seq, at, actor, source, client, request_id, action, target, team_id,"
    " before, after, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def changes(
    before: Mapping[str, Any], after: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The fields that differ, as they were and as they are."""
    names = [k for k in after if before.get(k) != after.get(k)]
    return {k: before.get(k) for k in names}, {k: after.get(k) for k in names}


async def append(
    tx: Tx,
    actor: Actor,
    action: str,
    target: str,
    *,
    team_id: str | None = None,
    before: Mapping[str, Any] | None = None,
    after: Mapping[str, Any] | None = None,
) -> int:
    """Append one entry in `tx` (the change's own transaction); its seq."""
    head = await tx.fetchone(_HEAD)
    assert head is not None, "audit_head is created with the schema"
    entry = {
        "seq": int(head["seq"]) + 1,
        "at": head["now"],
        "actor": actor.name,
        "source": actor.source,
        "client": actor.client,
        "request_id": actor.request_id,
        "action": action,
        "target": target,
        "team_id": team_id,
        "before": _json(before),
        "after": _json(after),
    }
    digest = chain_hash(head["hash"], entry)
    await tx.execute(_INSERT, (*(entry[name] for name in CHAINED), head["hash"], digest))
    await tx.execute(
        "UPDATE audit_head SET seq = ?, hash = ? WHERE one = 1", (entry["seq"], digest)
    )
    return int(entry["seq"])


def resource(row: Row) -> dict[str, Any]:
    """An entry as the API shows it."""
    return {
        "id": row["seq"],
        "at": row["at"],
        "actor": row["actor"],
        "source": row["source"],
        "client": row["client"],
        "request_id": row["request_id"],
        "action": row["action"],
        "target": row["target"],
        "team": row["team_id"],
        "before": json.loads(row["before"]) if row["before"] is not None else None,
        "after": json.loads(row["after"]) if row["after"] is not None else None,
        "hash": row["hash"],
    }


@dataclass(frozen=True)
class AuditFilter:
    """What `GET /admin/audit` and `sms-gateway audit` narrow the log to."""

    actor: str | None = None
    team: str | None = None
    action: str | None = None
    since: str | None = None  # ISO time, inclusive
    until: str | None = None  # ISO time, exclusive
    before_seq: int | None = None  # the keyset cursor: entries older than this one


async def entries(store: Store, where: AuditFilter, limit: int) -> list[dict[str, Any]]:
    """Entries newest first, at most `limit`; each filter walks its own index by seq."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (
        ("actor", where.actor),
        ("team_id", where.team),
        ("action", where.action),
    ):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if where.since is not None:
        clauses.append("at >= ?")
        params.append(where.since)
    if where.until is not None:
        clauses.append("at < ?")
        params.append(where.until)
    if where.before_seq is not None:
        clauses.append("seq < ?")
        params.append(where.before_seq)
    condition = " AND ".join(clauses) or "1 = 1"
    rows = await store.fetchall(
        f"SELECT * FROM audit_log WHERE {condition} ORDER BY seq DESC LIMIT ?",  # noqa: S608 - fixed column names only
        (*params, limit),
    )
    return [resource(r) for r in rows]


@dataclass(frozen=True)
class Verdict:
    """What `audit verify` found: how many entries, the head, and the first broken link."""

    entries: int
    head_seq: int
    head_hash: str
    broken_seq: int | None = None
    reason: str | None = None

    @property
    def ok(self) -> bool:
        """Whether every link holds."""
        return self.broken_seq is None


PAGE = 5000


async def _pages(store: Store) -> AsyncIterator[list[Row]]:
    after = 0
    while True:
        rows = await store.fetchall(
            "SELECT * FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?", (after, PAGE)
        )
        if not rows:
            return
        yield rows
        after = int(rows[-1]["seq"])


async def verify(store: Store) -> Verdict:
    """Walk the chain from the start; the first entry whose link does not hold, and why."""
    head = await store.fetchone("SELECT seq, hash FROM audit_head WHERE one = 1")
    head_seq, head_hash = (int(head["seq"]), head["hash"]) if head else (0, GENESIS)
    prev_seq, prev_hash, count = 0, GENESIS, 0

    def broken(seq: int, reason: str) -> Verdict:
        return Verdict(count, head_seq, head_hash, seq, reason)

    async for rows in _pages(store):
        for row in rows:
            seq = int(row["seq"])
            if seq != prev_seq + 1:
                return broken(prev_seq + 1, f"entry {prev_seq + 1} is missing")
            if row["prev_hash"] != prev_hash:
                return broken(seq, f"entry {seq} does not follow entry {prev_seq}'s hash")
            entry = {name: row[name] for name in CHAINED}
            if chain_hash(prev_hash, entry) != row["hash"]:
                return broken(seq, f"entry {seq} was altered: its hash does not match it")
            prev_seq, prev_hash = seq, row["hash"]
            count += 1
    if head is None:
        return broken(prev_seq + 1, "the chain's head (audit_head) is gone")
    if prev_seq < head_seq:
        return broken(prev_seq + 1, f"entry {prev_seq + 1} is missing (the head is {head_seq})")
    if prev_seq > head_seq or prev_hash != head_hash:
        return broken(prev_seq, f"the chain's head does not match entry {prev_seq}")
    return Verdict(count, head_seq, head_hash)
