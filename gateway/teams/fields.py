"""Validation of team fields for the admin API and the CLI; pure."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from ..delivery.callbacks import CallbackPolicy
from ..errors import ValidationFailed
from ..sending.validation import check_callback_url, valid_sender
from ..store.teams import Team

TEAM_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
LIMIT_FIELDS = ("daily_limit", "monthly_limit", "monthly_budget")
MIN_RATE, MAX_RATE = 0.001, 1e6  # requests a second; below one in 1,000 s is a typo, not a rate
EDITABLE = frozenset(
    {
        "name",
        "active",
        "rate_limit_per_second",
        "callback_url",
        "alert_thresholds",
        "senders",
        *LIMIT_FIELDS,
    }
)
MAX_THRESHOLDS = 10
MAX_SENDERS = 50


def _bad(field: str, reason: str) -> ValidationFailed:
    return ValidationFailed(
        f"{field}: {reason}", extra={"errors": [{"field": field, "reason": reason}]}
    )


def check_team_id(value: Any) -> str:
    """A team id is a slug: lower-case letters, digits, '-' and '_', at most 63 characters."""
    if not isinstance(value, str) or not TEAM_ID.fullmatch(value):
        raise _bad(
            "id",
            "must be a slug: a-z, 0-9, '-' or '_', starting with a letter or digit, "
            "at most 63 characters",
        )
    return value


def check_team_fields(body: Any, *, creating: bool, guard: CallbackPolicy) -> dict[str, Any]:
    """Validate a team body; return the editable fields it sets (plus `id` when creating)."""
    if not isinstance(body, dict):
        raise ValidationFailed("the body must be a JSON object")
    allowed = EDITABLE | {"id"} if creating else EDITABLE
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise ValidationFailed(
            f"unknown field(s): {', '.join(unknown)}",
            code="unknown_field",
            extra={
                "errors": [{"field": f, "reason": "unknown or read-only field"} for f in unknown]
            },
        )
    out: dict[str, Any] = {}
    if creating:
        out["id"] = check_team_id(body.get("id"))
    if "name" in body:
        name = body["name"]
        if not isinstance(name, str) or not name.strip() or len(name) > 200:
            raise _bad("name", "must be a non-empty string of at most 200 characters")
        out["name"] = name.strip()
    if "active" in body:
        if not isinstance(body["active"], bool):
            raise _bad("active", "must be true or false")
        out["active"] = body["active"]
    for field in LIMIT_FIELDS:
        if field in body:
            value = body[field]
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**53
            ):
                raise _bad(field, "must be a non-negative integer or null (unlimited)")
            out[field] = value
    if "rate_limit_per_second" in body:
        value = body["rate_limit_per_second"]
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not MIN_RATE <= value <= MAX_RATE
        ):
            raise _bad(
                "rate_limit_per_second",
                f"must be a number from {MIN_RATE} to {MAX_RATE:g}, or null (unlimited)",
            )
        out["rate_limit_per_second"] = None if value is None else float(value)
    if "callback_url" in body:
        value = body["callback_url"]
        if value is not None and (not isinstance(value, str) or len(value) > 2048):
            raise _bad("callback_url", "must be an http(s) URL or null")
        out["callback_url"] = check_callback_url(value, guard)
    if "alert_thresholds" in body:
        out["alert_thresholds"] = check_thresholds(body["alert_thresholds"])
    if "senders" in body:
        out["senders"] = check_senders(body["senders"])
    return out


def check_senders(value: Any) -> list[str]:
    """Granted sender IDs: a list of at most 50 distinct IDs the provider takes (1-11 letters,
    digits, spaces or .-&_, or a number of up to 15 digits), the first the default; empty: the
    gateway's own sender only."""
    if (
        not isinstance(value, list)
        or len(value) > MAX_SENDERS
        or not all(valid_sender(v) for v in value)
        or len(set(value)) != len(value)
    ):
        raise _bad(
            "senders",
            f"must be a list of at most {MAX_SENDERS} distinct sender IDs (1-11 letters, "
            "digits, spaces or .-&_, or a number of up to 15 digits)",
        )
    return list(value)


def check_thresholds(value: Any) -> list[int]:
    """Alert thresholds: a list of distinct whole percents from 1 to 100 (empty: no alerts
    but the refusal's), sorted."""
    if (
        not isinstance(value, list)
        or len(value) > MAX_THRESHOLDS
        or any(isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100 for v in value)
        or len(set(value)) != len(value)
    ):
        raise _bad(
            "alert_thresholds",
            f"must be a list of at most {MAX_THRESHOLDS} distinct whole percents from 1 to 100",
        )
    return sorted(value)


def teams_table(teams: Sequence[Team]) -> str:
    """The teams as an aligned text table (the CLI's `team list`)."""
    header = (
        "ID",
        "NAME",
        "ACTIVE",
        "DAILY",
        "MONTHLY",
        "BUDGET",
        "ALERTS %",
        "SENDERS",
        "CALLBACK",
    )
    lines = _table(
        header,
        [
            (
                t.id,
                t.name,
                "yes" if t.active else "no",
                _cell(t.daily_limit),
                _cell(t.monthly_limit),
                _cell(t.monthly_budget),
                ",".join(map(str, t.alert_thresholds)) or "-",
                ",".join(t.senders) or "-",
                t.callback_url or "-",
            )
            for t in teams
        ],
    )
    if not teams:
        lines.append("(no teams yet: sms-gateway team create ID)")
    return "\n".join(lines)


def suppressions_table(entries: Sequence[Any]) -> str:
    """Suppression entries (store.suppressions.Entry) as an aligned text table."""
    header = ("NUMBER", "LIST", "REASON", "ADDED", "BY")
    lines = _table(
        header,
        [
            (e.number, e.team or "* (every team)", e.reason or "-", e.created_at, e.created_by)
            for e in entries
        ],
    )
    if not entries:
        lines.append("(no number is suppressed)")
    return "\n".join(lines)


def audit_table(entries: Sequence[dict[str, Any]]) -> str:
    """Audit entries as an aligned text table (the CLI's `audit`)."""
    header = ("ID", "AT", "ACTOR", "SOURCE", "ACTION", "TARGET", "CHANGE")
    lines = _table(
        header,
        [
            (
                str(e["id"]),
                e["at"],
                e["actor"],
                e["source"],
                e["action"],
                e["target"],
                _change(e["before"], e["after"]),
            )
            for e in entries
        ],
    )
    if not entries:
        lines.append("(no entries)")
    return "\n".join(lines)


def _change(before: dict[str, Any] | None, after: dict[str, Any] | None) -> str:
    if before is None or after is None:
        return "-" if after is None else "created"
    return "; ".join(f"{k}: {before.get(k)!r} -> {after.get(k)!r}" for k in after)


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    every = [header, *rows]
    widths = [max(len(r[i]) for r in every) for i in range(len(header))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in every
    ]


def _cell(value: int | None) -> str:
    return "unlimited" if value is None else str(value)
