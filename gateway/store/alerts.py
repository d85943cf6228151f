"""Usage alerts (SPEC 8): the row that makes each alert once, and the webhooks it queues, in the
transaction of the reservation (or refusal) that crossed the threshold.

This is SQLite's side; PostgreSQL's gateway_reserve_group() applies the same rule in
gateway_usage_crossings() and gateway_usage_alert() (postgres_15.sql).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..platform.clock import parse_iso
from ..platform.ids import ulid
from .db import Store, Tx
from .outbox import NewWebhook, insert_event, insert_webhook
from .shared import with_clock

THRESHOLD_REACHED = "usage.threshold_reached"
LIMIT_REACHED = "usage.limit_reached"
# The limit a refusal names (teams/quota.py) as an alert's limit_kind.
KIND_OF_QUOTA = {"daily_limit": "daily", "monthly_limit": "monthly", "monthly_budget": "budget"}


@dataclass(frozen=True)
class Alert:
    """One alert as it is stored and sent."""

    team_id: str
    period: str
    limit_kind: str  # daily | monthly | budget
    type: str
    threshold: int
    limit: int
    used: int


def crossed(thresholds: Sequence[int], limit: int | None, before: int, after: int) -> list[int]:
    """The thresholds (percent of `limit`) that use going from `before` to `after` crosses."""
    if limit is None or after == before:
        return []
    return [t for t in thresholds if before * 100 < t * limit <= after * 100]


_INSERT = with_clock(
    "INSERT INTO usage_alerts (team_id, period, limit_kind, type, threshold, limit_value, used,"
    " at) VALUES (?, ?, ?, ?, ?, ?, ?, {now}) ON CONFLICT DO NOTHING RETURNING at"
)


def payload(alert: Alert, at: str) -> str:
    """The webhook body of an alert."""
    body = {
        "type": alert.type,
        "timestamp": at,
        "data": {
            "team": alert.team_id,
            "period": alert.period,
            "limit_kind": alert.limit_kind,
            "threshold": alert.threshold,
            "limit": alert.limit,
            "used": alert.used,
        },
    }
    return json.dumps(body, ensure_ascii=False, separators=(",", ":"))


async def fire(tx: Tx, alert: Alert, team_url: str | None, operator_url: str | None) -> bool:
    """Store the alert and queue its webhooks, unless it fired before in this period; whether
    it fires now."""
    row = await tx.fetchone(
        _INSERT,
        (
            alert.team_id,
            alert.period,
            alert.limit_kind,
            alert.type,
            alert.threshold,
            alert.limit,
            alert.used,
        ),
    )
    if row is None:
        return False
    at = row["at"]
    body = payload(alert, at)
    hook_id = "whk_" + ulid(parse_iso(at))
    await insert_event(
        tx, NewWebhook(hook_id, None, alert.team_id, alert.type, team_url or "", body, 0, at)
    )
    if operator_url:
        hook_id = "whk_" + ulid(parse_iso(at))
        await insert_webhook(
            tx,
            NewWebhook(
                hook_id, None, alert.team_id, alert.type, operator_url, body, 0, at, "operator"
            ),
        )
    return True


async def team_url(tx: Tx, team_id: str) -> str | None:
    """The team's webhook URL."""
    row = await tx.fetchone("SELECT callback_url FROM teams WHERE id = ?", (team_id,))
    return row["callback_url"] if row else None


async def fired(
    store: Store, since_period: str, until_period: str, team: str | None = None
) -> list[dict[str, Any]]:
    """The alerts of the periods from `since_period` (a month, say) up to `until_period`,
    newest first (the dashboard's list for this month), of one team or of all."""
    if team is None:
        rows = await store.fetchall(
            "SELECT * FROM usage_alerts WHERE period >= ? AND period < ?"
            " ORDER BY at DESC LIMIT 500",
            (since_period, until_period),
        )
    else:  # the primary key's first column
        rows = await store.fetchall(
            "SELECT * FROM usage_alerts WHERE team_id = ? AND period >= ? AND period < ?"
            " ORDER BY at DESC LIMIT 500",
            (team, since_period, until_period),
        )
    return [
        {
            "team": r["team_id"],
            "period": r["period"],
            "limit_kind": r["limit_kind"],
            "type": r["type"],
            "threshold": r["threshold"],
            "limit": r["limit_value"],
            "used": r["used"],
            "at": r["at"],
        }
        for r in rows
    ]
