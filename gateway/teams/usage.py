"""The usage views: a team's current day and month, and the billing report as JSON or CSV."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from ..errors import ValidationFailed
from ..platform.clock import periods
from ..platform.ids import lowest_ulid
from ..store import Store
from ..store.queue import reserved
from ..store.reads import test_counts
from ..store.teams import Team
from ..store.usage import TeamMonth, month_report, period_usage
from .quota import remaining

CSV_COLUMNS = ("team", "messages", "segments", "cost", "currency")
_MONTH = re.compile(r"(\d{4})-(0[1-9]|1[0-2])")


async def team_usage(store: Store, team: Team, now: datetime, tz: ZoneInfo) -> dict[str, Any]:
    """GET /usage: the team's current day and month in the gateway's time zone."""
    day, month = periods(now, tz)
    used = await period_usage(store, team.id, [day, month])
    d, m = used[day], used[month]
    # Queued and scheduled messages count in `used` from acceptance; this much of it waits.
    in_day, in_month = await reserved(store, team.id, day, month)
    # A test token's sends are in no counter: counted apart, from the messages themselves.
    local = now.astimezone(tz)
    starts = {
        "day": datetime(local.year, local.month, local.day, tzinfo=tz),
        "month": datetime(local.year, local.month, 1, tzinfo=tz),
    }
    tests = await test_counts(
        store, team.id, {p: "msg_" + lowest_ulid(at) for p, at in starts.items()}
    )
    return {
        "team": team.id,
        "timezone": tz.key,
        "currency": "RWF",
        "day": {
            "period": day,
            "limit": team.daily_limit,
            "used": d.segments,
            "remaining": remaining(team.daily_limit, d.segments),
            "reserved": in_day.segments,
            "test": tests["day"],
        },
        "month": {
            "period": month,
            "limit": team.monthly_limit,
            "used": m.segments,
            "remaining": remaining(team.monthly_limit, m.segments),
            "budget": team.monthly_budget,
            "cost": m.cost,
            "budget_remaining": remaining(team.monthly_budget, m.cost),
            "reserved": in_month.segments,
            "reserved_cost": in_month.cost,
            "test": tests["month"],
        },
    }


def check_month(value: str | None, now: datetime, tz: ZoneInfo) -> str:
    """A 'YYYY-MM' month, the current one (in the gateway's zone) when absent."""
    if value is None:
        return periods(now, tz)[1]
    if not _MONTH.fullmatch(value):
        raise ValidationFailed(
            "month must look like 2026-11",
            code="invalid_parameter",
            extra={"errors": [{"field": "month", "reason": "must be YYYY-MM"}]},
        )
    return value


async def billing_report(store: Store, month: str, tz: ZoneInfo) -> dict[str, Any]:
    """GET /admin/usage as JSON: one entry per team, and the totals."""
    rows = await month_report(store, month)
    return {
        "month": month,
        "timezone": tz.key,
        "currency": "RWF",
        "data": [_row(r) for r in rows],
        "totals": {
            "messages": sum(r.messages for r in rows),
            "segments": sum(r.segments for r in rows),
            "cost": sum(r.cost for r in rows),
        },
    }


def _row(row: TeamMonth) -> dict[str, Any]:
    return {
        "team": row.team,
        "name": row.name,
        "messages": row.messages,
        "segments": row.segments,
        "cost": row.cost,
        "currency": "RWF",
    }


def report_csv(report: dict[str, Any]) -> str:
    """The billing report as CSV: `team,messages,segments,cost,currency`, one row per team."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for row in report["data"]:
        writer.writerow([row[c] for c in CSV_COLUMNS])
    return out.getvalue()


def report_table(report: dict[str, Any], month: str, tz_name: str) -> str:
    """A billing report as an aligned text table with a total row (the CLI's `usage`)."""
    header = ("TEAM", "MESSAGES", "SEGMENTS", "COST (RWF)")
    rows = [header] + [
        (r["team"], str(r["messages"]), str(r["segments"]), str(r["cost"])) for r in report["data"]
    ]
    totals = report["totals"]
    rows.append(("total", str(totals["messages"]), str(totals["segments"]), str(totals["cost"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"Usage for {month} ({tz_name})"]
    for row in rows:
        lines.append(
            "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )
        )
    return "\n".join(lines)
