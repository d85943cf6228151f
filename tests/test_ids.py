"""Ids: Crockford base32 ULIDs that sort by creation time, strictly increasing in a process."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from gateway.platform.ids import _ALPHABET, _encode, _Monotonic, lowest_ulid


def reference_encode(value: int, length: int) -> str:
    """Base32 the slow, obvious way: five bits at a time."""
    return "".join(_ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(length)))


@given(st.integers(min_value=0, max_value=(1 << 80) - 1))
def test_encoding_matches_the_obvious_one(value: int) -> None:
    assert _encode(value, 16) == reference_encode(value, 16)
    assert _encode(value >> 32, 10) == reference_encode(value >> 32, 10)


def test_time_part_is_the_millisecond() -> None:
    at = datetime(2026, 11, 25, 8, 30, 15, 123456, tzinfo=UTC)
    millis = int(at.timestamp() * 1000)
    ulid = _Monotonic().next  # a fresh generator: the process's one has seen other clocks
    assert ulid(at)[:10] == reference_encode(millis, 10)


def test_ids_strictly_increase_within_and_across_milliseconds() -> None:
    at = datetime(2026, 1, 1, tzinfo=UTC)
    ulid = _Monotonic().next
    ids = [ulid(at) for _ in range(5000)]
    ids += [ulid(at + timedelta(milliseconds=1)) for _ in range(100)]
    ids += [ulid(at) for _ in range(100)]  # a clock that steps back keeps the order too
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    assert all(len(i) == 26 and set(i) <= set(_ALPHABET) for i in ids)


def test_lowest_ulid_bounds_an_instant() -> None:
    at = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)
    made = _Monotonic().next(at)
    assert made[:10] == lowest_ulid(at)[:10]
    assert lowest_ulid(at) <= made < lowest_ulid(at + timedelta(milliseconds=1))
