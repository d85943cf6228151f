"""Time: the injectable clock, ISO formatting, and quota periods in the gateway's time zone."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

Clock = Callable[[], datetime]


def utcnow() -> datetime:
    """The real clock: an aware UTC datetime."""
    return datetime.now(UTC)


_iso_second: tuple[datetime | None, str] = (None, "")  # the last whole second, formatted


def iso(at: datetime) -> str:
    """RFC 3339 UTC with milliseconds, e.g. 2026-11-24T08:00:00.000Z."""
    if at.tzinfo is not UTC:
        at = at.astimezone(UTC)
    global _iso_second
    second = at.replace(microsecond=0)
    cached, text = _iso_second
    if second != cached:
        text = second.isoformat()[:19]
        _iso_second = (second, text)
    return f"{text}.{at.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (a naive one counts as UTC); ValueError if bad."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


_period_cache: dict[ZoneInfo, tuple[datetime, datetime, tuple[str, str]]] = {}


def periods(at: datetime, tz: ZoneInfo) -> tuple[str, str]:
    """The quota day ('2026-11-24') and month ('2026-11') that instant `at` falls in."""
    cached = _period_cache.get(tz)
    if cached is not None and cached[0] <= at < cached[1]:
        return cached[2]
    local = at.astimezone(tz)
    names = local.strftime("%Y-%m-%d"), local.strftime("%Y-%m")
    # Valid from this instant (not local midnight, which a DST gap can move) to the next day.
    _period_cache[tz] = (at, next_day_start(at, tz), names)
    return names


def next_day_start(at: datetime, tz: ZoneInfo) -> datetime:
    """The instant the next quota day begins."""
    local = at.astimezone(tz)
    start = datetime(local.year, local.month, local.day, tzinfo=tz) + timedelta(days=1)
    return start.replace(hour=0)


def next_month_start(at: datetime, tz: ZoneInfo) -> datetime:
    """The instant the next quota month begins."""
    local = at.astimezone(tz)
    year, month = (local.year + 1, 1) if local.month == 12 else (local.year, local.month + 1)
    return datetime(year, month, 1, tzinfo=tz)


def time_bound(text: str) -> str | None:
    """A time a caller gives as a filter (ISO 8601: `2026-12-01`, `2026-12-01T08:00:00Z`,
    with an offset or UTC when none is given) as the stored ISO text; None if it is not one."""
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return iso(value.astimezone(UTC))
    except (ValueError, OverflowError):  # not a time, or one outside the calendar in UTC
        return None


def next_month(month: str) -> str:
    """The month after a YYYY-MM month: '2026-12' -> '2027-01'."""
    year, number = int(month[:4]), int(month[5:7])
    return f"{year + number // 12}-{number % 12 + 1:02d}"
