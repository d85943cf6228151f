"""Time formatting and quota periods: the cached fast paths agree with the obvious ones."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from gateway.platform.clock import iso, periods

instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(st.lists(instants, min_size=1, max_size=20))
def test_iso_is_rfc3339_utc_with_milliseconds(ats: list[datetime]) -> None:
    for at in ats:
        assert iso(at) == at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z"
        assert iso(at.astimezone(ZoneInfo("Africa/Kigali"))) == iso(at)


@given(
    st.sampled_from(["Africa/Kigali", "Europe/London", "America/Sao_Paulo", "Pacific/Apia"]),
    instants,
    st.lists(st.integers(min_value=-3 * 86400, max_value=3 * 86400), min_size=1, max_size=30),
)
def test_periods_follow_the_local_calendar(zone: str, start: datetime, steps: list[int]) -> None:
    """Instants that walk forwards and back across midnights and DST changes."""
    tz = ZoneInfo(zone)
    at = start
    for step in steps:
        at += timedelta(seconds=step)
        local = at.astimezone(tz)
        assert periods(at, tz) == (local.strftime("%Y-%m-%d"), local.strftime("%Y-%m"))


def test_periods_change_at_kigali_midnight() -> None:
    tz = ZoneInfo("Africa/Kigali")  # UTC+2
    before = datetime(2026, 11, 30, 21, 59, 59, 999000, tzinfo=UTC)
    assert periods(before, tz) == ("2026-11-30", "2026-11")
    assert periods(before + timedelta(milliseconds=1), tz) == ("2026-12-01", "2026-12")
    assert periods(before, tz) == ("2026-11-30", "2026-11")
