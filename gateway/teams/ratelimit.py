"""Per-team request rate limits: token buckets kept in memory; pure but for the clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per team: `rate` requests a second, bursts of up to max(1, rate)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, team_id: str, rate: float | None) -> float:
        """0 if the request may go ahead (a token is taken), else seconds until one is free."""
        if rate is None or rate <= 0:
            self._buckets.pop(team_id, None)
            return 0.0
        capacity = max(1.0, rate)
        now = self._clock()
        bucket = self._buckets.get(team_id)
        if bucket is None:
            bucket = self._buckets[team_id] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate


def retry_after(wait: float) -> str:
    """A Retry-After value: whole seconds, at least 1, at most a day."""
    return str(min(86_400, max(1, math.ceil(min(wait, 86_400.0)))))
