"""The usage counters: moving them in a write, and reading a team's current periods and the
monthly billing report."""

from __future__ import annotations

from dataclasses import dataclass

from .db import Store, Tx


@dataclass
class UsageDelta:
    """What a change of rows adds to one (team, period) counter."""

    messages: int = 0
    segments: int = 0
    cost: int = 0


async def bump(tx: Tx, team_id: str, deltas: dict[str, UsageDelta]) -> None:
    """Add each period's delta to the team's counters (same transaction as the rows' change)."""
    await tx.executemany(
        "INSERT INTO usage (team_id, period, messages, segments, cost) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (team_id, period) DO UPDATE SET"
        " messages = usage.messages + excluded.messages,"
        " segments = usage.segments + excluded.segments, cost = usage.cost + excluded.cost",
        [
            (team_id, period, d.messages, d.segments, d.cost)
            # month ('2026-11') before day ('2026-11-26'), the order every writer locks them in
            for period, d in sorted(deltas.items())
            if d.messages or d.segments or d.cost
        ],
    )


@dataclass(frozen=True)
class PeriodUsage:
    """What a team used in one period."""

    messages: int
    segments: int
    cost: int


@dataclass(frozen=True)
class TeamMonth:
    """One row of the monthly billing report."""

    team: str
    name: str
    messages: int
    segments: int
    cost: int


async def period_usage(store: Store, team_id: str, periods: list[str]) -> dict[str, PeriodUsage]:
    """The counters of `team_id` for each period (zeros where nothing was sent)."""
    marks = ", ".join("?" for _ in periods)
    rows = await store.fetchall(
        f"SELECT period, messages, segments, cost FROM usage"  # noqa: S608 (placeholders only)
        f" WHERE team_id = ? AND period IN ({marks})",
        (team_id, *periods),
    )
    found = {r["period"]: PeriodUsage(r["messages"], r["segments"], r["cost"]) for r in rows}
    return {p: found.get(p, PeriodUsage(0, 0, 0)) for p in periods}


async def month_report(store: Store, month: str) -> list[TeamMonth]:
    """Every team's messages, segments and cost in `month` ('2026-11'), by team id."""
    rows = await store.fetchall(
        "SELECT t.id, t.name, COALESCE(u.messages, 0) AS messages,"
        " COALESCE(u.segments, 0) AS segments, COALESCE(u.cost, 0) AS cost"
        " FROM teams t LEFT JOIN usage u ON u.team_id = t.id AND u.period = ?"
        " ORDER BY t.id",
        (month,),
    )
    return [TeamMonth(r["id"], r["name"], r["messages"], r["segments"], r["cost"]) for r in rows]


async def day_cost(store: Store, day: str) -> int:
    """What every team was charged on `day` ('2026-11-26'), from the counters."""
    row = await store.fetchone(
        "SELECT CAST(SUM(cost) AS BIGINT) AS cost FROM usage WHERE period = ?", (day,)
    )
    return int(row["cost"] or 0) if row else 0
