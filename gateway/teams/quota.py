"""Quota arithmetic: does a send fit a team's limits? Pure."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """A team's limits; None is unlimited."""

    daily_limit: int | None
    monthly_limit: int | None
    monthly_budget: int | None


@dataclass(frozen=True)
class Usage:
    """What a team has used in the current day and month."""

    day_segments: int
    month_segments: int
    month_cost: int


@dataclass(frozen=True)
class Refusal:
    """The first limit a send would pass."""

    quota: str  # "daily_limit" | "monthly_limit" | "monthly_budget"
    period: str  # "day" | "month"
    limit: int
    used: int
    requested: int

    @property
    def remaining(self) -> int:
        """What is left of the limit (never negative)."""
        return max(self.limit - self.used, 0)


def check(limits: Limits, usage: Usage, segments: int, cost: int) -> Refusal | None:
    """The limit that `segments` more segments costing `cost` RWF would pass, or None."""
    candidates = (
        ("daily_limit", "day", limits.daily_limit, usage.day_segments, segments),
        ("monthly_limit", "month", limits.monthly_limit, usage.month_segments, segments),
        ("monthly_budget", "month", limits.monthly_budget, usage.month_cost, cost),
    )
    for quota, period, limit, used, requested in candidates:
        if limit is not None and used + requested > limit:
            return Refusal(quota, period, limit, used, requested)
    return None


def remaining(limit: int | None, used: int) -> int | None:
    """What is left of a limit, None when unlimited."""
    return None if limit is None else max(limit - used, 0)
