"""The queue of accepted sends: claiming due messages, putting them back, ending them unsent,
the dispatchers' shared pace, and what the queue holds."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..platform.clock import parse_iso
from .db import Row, Sql, Store, Tx
from .rows import resource
from .shared import append_event, now_plus, with_clock
from .usage import UsageDelta, bump

WAITING = ("queued", "scheduled")
_WAITING_SQL = "('queued', 'scheduled')"

# The batch of the oldest due message, then up to ?5 of that batch's due messages, moved to
# `sending` under the dispatcher's lease: from here they are handed to the provider at once,
# and settle (or are swept to `unknown`) exactly as a direct send's are. On PostgreSQL, rows
# another replica is claiming are skipped, not waited for.
# Due and unexpired by the database's clock (`{now}`): a replica whose own clock runs ahead
# sends nothing early and expires nothing early. (`?1` is this process's time, for the
# timeline only.)
_OLDEST_DUE = with_clock(
    f"SELECT team_id, batch_id FROM messages WHERE status IN {_WAITING_SQL}"  # noqa: S608 - fixed SQL fragments only
    " AND next_attempt_at <= {now} AND expires_at > {now}{lock} ORDER BY next_attempt_at, id"
    " LIMIT 1",
    # one replica claims a batch at a time (so a batch goes out in as few calls as it can):
    # a batch another replica is claiming is skipped, as its locked rows are below
    lock=Sql("", " AND pg_try_advisory_xact_lock(hashtext('queue:' || batch_id))"),
)
_CLAIM = with_clock(
    "UPDATE messages SET status = 'sending', owner = ?2, events = {append}"  # noqa: S608
    f" WHERE status IN {_WAITING_SQL} AND id IN (SELECT id FROM messages"
    f" WHERE team_id = ?3 AND batch_id = ?4 AND status IN {_WAITING_SQL}"
    " AND next_attempt_at <= {now} AND expires_at > {now} ORDER BY id LIMIT ?5{lock})"
    " RETURNING *",
    append=append_event("'sending'", "?1"),
    lock=Sql("", " FOR UPDATE SKIP LOCKED"),
)


async def claim_due(tx: Tx, owner: str, now: str, limit: int, leading: bool = False) -> list[Row]:
    """Claim up to `limit` due, unexpired messages of one batch (the oldest due first) for
    `owner` to hand to the provider now; their rows as claimed (oldest id first). With
    `leading`, only while `owner` is still the dispatcher."""
    if leading and not await holds_lead(tx, owner):
        return []
    oldest = await tx.fetchone(_OLDEST_DUE)
    if oldest is None:
        return []
    rows = await tx.fetchall(_CLAIM, (now, owner, oldest["team_id"], oldest["batch_id"], limit))
    return sorted(rows, key=lambda r: r["id"])


_REQUEUE = with_clock(
    "UPDATE messages SET status = 'queued', owner = NULL, next_attempt_at = {retry_at},"
    " events = ?2, error_code = ?3, error_detail = ?4, attempts = attempts + 1"
    " WHERE id = ?5 AND status = 'sending' AND owner = ?6",
    retry_at=now_plus("?1"),
)


async def requeue(
    tx: Tx, owner: str, rows: Sequence[Row], delay: float, code: str, detail: str
) -> int:
    """Put claimed messages back in the queue (the provider certainly did not take them), to
    be tried again `delay` seconds from now (the database's clock); their timeline loses the
    `sending` the claim added and their `error` says why they wait. How many were still
    `owner`'s to put back."""
    moved = 0
    for row in rows:
        events = json.loads(row["events"])[:-1]
        moved += await tx.execute(
            _REQUEUE, (float(delay), json.dumps(events), code, detail, row["id"], owner)
        )
    return moved


_END_UNSENT = Sql(
    *(
        "UPDATE messages SET status = ?1, charged_segments = 0, cost = 0, completed_at = ?2,"  # noqa: S608
        f" error_code = ?3, error_detail = ?4, client_dlr = NULL, events = {append}"
        f" WHERE id = ?5 AND status IN {_WAITING_SQL}"
        for append in append_event("?1", "?2")
    )
)


async def end_unsent(
    tx: Tx, rows: Sequence[Row], status: str, at: str, code: str, detail: str
) -> list[dict[str, Any]]:
    """End waiting messages without sending them (`expired` or `canceled`): each is refunded
    its reservation, in this transaction. The messages changed, as the API now shows them (one
    that left the queue meanwhile is left alone)."""
    ended: list[dict[str, Any]] = []
    deltas: dict[str, dict[str, UsageDelta]] = defaultdict(lambda: defaultdict(UsageDelta))
    for row in sorted(rows, key=lambda r: r["id"]):
        if not await tx.execute(_END_UNSENT, (status, at, code, detail, row["id"])):
            continue
        for period in (row["day"], row["month"]):
            d = deltas[row["team_id"]][period]
            d.messages -= int(row["charged_segments"] > 0 or row["cost"] > 0)
            d.segments -= row["charged_segments"]
            d.cost -= row["cost"]
        changed = dict(resource(row))
        changed.update(
            status=status,
            cost=0,
            completed_at=at,
            error={"code": code, "detail": detail},
            events=[*changed["events"], {"status": status, "at": at}],
        )
        ended.append(changed)
    for team_id in sorted(deltas):  # every writer locks counters in the same order
        await bump(tx, team_id, deltas[team_id])
    return ended


_LOCK = Sql(sqlite="", postgresql=" FOR UPDATE")


async def waiting_rows(
    tx: Tx, where: str | Sql, params: Sequence[Any], limit: int = 500
) -> list[Row]:
    """Waiting messages matching `where` (fixed SQL with placeholders, the same for both
    databases or a pair), locked on PostgreSQL."""
    both = Sql(where, where) if isinstance(where, str) else where
    return await tx.fetchall(
        Sql(
            *(
                f"SELECT * FROM messages WHERE status IN {_WAITING_SQL} AND {condition}"  # noqa: S608
                f" ORDER BY id LIMIT {int(limit)}{lock}"
                for condition, lock in zip(both, _LOCK, strict=True)
            )
        ),
        params,
    )


async def expiring(tx: Tx, limit: int = 500) -> list[Row]:
    """Waiting messages whose validity has ended by the database's clock."""
    return await waiting_rows(tx, with_clock("expires_at <= {now}"), (), limit)


_ANY_EXPIRING = with_clock(
    f"SELECT 1 FROM messages WHERE status IN {_WAITING_SQL} AND expires_at <= {{now}} LIMIT 1"  # noqa: S608
)


async def any_expiring(store: Store) -> bool:
    """Whether a waiting message's validity has ended by the database's clock (a read: the
    write that ends them is only made when there is something to end)."""
    return await store.fetchone(_ANY_EXPIRING) is not None


_LEAD = with_clock(
    "UPDATE dispatcher SET holder = ?1, until = {epoch} + ?2 WHERE id = 1 AND (holder = ?1"
    " OR holder IS NULL OR until < {epoch} OR holder NOT IN (SELECT id FROM processes))"
)


async def lead(store: Store, me: str, seconds: float) -> bool:
    """Take (or keep) the dispatcher's role for `seconds`: True if `me` holds it now. It is
    free when no one holds it, its holder let it lapse, or its holder's lease is gone. The
    database's clock decides, so replicas whose clocks differ agree."""
    return bool(await store.run(_LEAD, (me, float(seconds))))


async def resign(store: Store, me: str) -> None:
    """Give the dispatcher's role up (another process may take it at once)."""
    await store.run(
        "UPDATE dispatcher SET holder = NULL, until = 0 WHERE id = 1 AND holder = ?", (me,)
    )


async def holds_lead(tx: Tx, me: str) -> bool:
    """Whether `me` is still the dispatcher (inside the claim's transaction)."""
    return (
        await tx.fetchone("SELECT 1 FROM dispatcher WHERE id = 1 AND holder = ?", (me,)) is not None
    )


@dataclass(frozen=True)
class QueueStats:
    """What waits in the queue: messages by status, and when the longest-waiting one that is
    due became due (None if none is due yet), with the database's time of the look."""

    depth: dict[str, int]
    oldest_due_at: str | None
    now: str = ""

    def age(self) -> float | None:
        """Seconds the oldest due message has waited past its due time (None: none is due)."""
        if self.oldest_due_at is None:
            return None
        return max(0.0, (parse_iso(self.now) - parse_iso(self.oldest_due_at)).total_seconds())


_OLDEST = with_clock(
    f"SELECT MIN(due_at) AS due_at, {{now}} AS now FROM messages WHERE status IN {_WAITING_SQL}"  # noqa: S608
    " AND due_at <= {now}"
)


# One pass over the waiting rows alone, no GROUP BY sort; on SQLite along the partial
# messages_next_attempt (its planner, without statistics, would take messages_team_status and
# read every message's entry).
_DEPTH = Sql(
    *(
        "SELECT COALESCE(SUM(CASE WHEN status = 'queued' THEN 1 ELSE 0 END), 0) AS queued,"  # noqa: S608 - fixed SQL fragments only
        " COALESCE(SUM(CASE WHEN status = 'scheduled' THEN 1 ELSE 0 END), 0) AS scheduled"
        f" FROM messages{hint} WHERE status IN {_WAITING_SQL}"
        for hint in (" INDEXED BY messages_next_attempt", "")
    )
)


# Both in one statement, so they agree: read apart, a batch the dispatcher takes in between (and
# puts back) could be counted waiting and yet give no oldest due time.
_STATS = Sql(
    *(
        f"SELECT d.queued, d.scheduled, o.due_at, o.now FROM ({depth}) AS d, ({oldest}) AS o"  # noqa: S608 - fixed SQL fragments only
        for depth, oldest in zip(_DEPTH, _OLDEST, strict=True)
    )
)


async def stats(store: Store) -> QueueStats:
    """The queue's depth by status, and the oldest due message's due time."""
    row = await store.fetchone(_STATS)
    assert row is not None  # aggregates always have their row
    depth = {status: int(row[status]) for status in WAITING}
    return QueueStats(depth, row["due_at"], row["now"])


# Without sqlite_stat1 (the gateway never runs ANALYZE: on a million rows it holds the write lock
# for seconds) SQLite's planner takes messages_expiring for the range and sorts every waiting
# row; named, messages_next_attempt is walked in order and the first unexpired row ends it.
_NEXT_ATTEMPT = with_clock(
    "SELECT next_attempt_at, {now} AS now FROM messages{hint}"  # noqa: S608 - fixed SQL fragments only
    f" WHERE status IN {_WAITING_SQL}"
    " AND expires_at > {now} ORDER BY next_attempt_at, id LIMIT 1",
    hint=Sql(" INDEXED BY messages_next_attempt", ""),
)


async def next_attempt(store: Store) -> float | None:
    """Seconds (by the database's clock) until the dispatcher may next take a waiting message
    that has not expired: 0 or less when one is due now; None if nothing waits."""
    row = await store.fetchone(_NEXT_ATTEMPT)
    if row is None:
        return None
    return (parse_iso(row["next_attempt_at"]) - parse_iso(row["now"])).total_seconds()


async def reserved(
    store: Store, team_id: str, day: str, month: str
) -> tuple[UsageDelta, UsageDelta]:
    """What the team's waiting messages hold reserved in `day` and in `month`."""
    rows = await store.fetchall(
        "SELECT day, month, COUNT(*) AS n, SUM(charged_segments) AS segments, SUM(cost) AS cost"  # noqa: S608
        f" FROM messages WHERE team_id = ? AND status IN {_WAITING_SQL} AND month = ?"
        " GROUP BY day, month",
        (team_id, month),
    )
    in_day, in_month = UsageDelta(), UsageDelta()
    for r in rows:
        for total, match in ((in_day, r["day"] == day), (in_month, True)):
            if match:
                total.messages += int(r["n"])
                total.segments += int(r["segments"] or 0)
                total.cost += int(r["cost"] or 0)
    return in_day, in_month
