"""Time-ordered identifiers (ULID layout) so ids sort by creation time."""

from __future__ import annotations

import random
import threading
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_MAX_MILLIS = (1 << 48) - 1
_MAX_RANDOM = (1 << 80) - 1


# Crockford base32, ten bits (two characters) at a time through a table.
_PAIRS = tuple(_ALPHABET[i >> 5] + _ALPHABET[i & 31] for i in range(1024))


def _encode(value: int, length: int) -> str:
    """`value` as `length` (even) Crockford base32 characters, most significant first."""
    pairs = _PAIRS
    return "".join([pairs[(value >> shift) & 1023] for shift in range(length * 5 - 10, -1, -10)])


def _millis(at: datetime) -> int:
    return min(max(int(at.timestamp() * 1000), 0), _MAX_MILLIS)


class _Monotonic:
    """ULIDs that strictly increase within this process, even in the same millisecond."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = (0, 0)
        self._prefix = _encode(0, 10)  # the time part of the last id, reused within its ms
        # Ids need to be unique and ordered, not secret (access is checked on every read), so a
        # PRNG seeded from the OS is enough and spares a system call per id.
        self._random = random.Random()

    def next(self, at: datetime) -> str:
        millis = _millis(at)
        with self._lock:
            last_millis, last_random = self._last
            if millis <= last_millis and last_random < _MAX_RANDOM:
                # Same (or an earlier) millisecond: step the random part so order is kept.
                millis, rand = last_millis, last_random + 1 + self._random.getrandbits(16)
                rand = min(rand, _MAX_RANDOM)
                prefix = self._prefix
            else:
                rand = self._random.getrandbits(79)  # headroom for increments
                prefix = self._prefix = _encode(millis, 10)
            self._last = (millis, rand)
        return prefix + _encode(rand, 16)


ulid = _Monotonic().next


def lowest_ulid(at: datetime) -> str:
    """The smallest ULID of instant `at`, for turning a time bound into an id bound."""
    return _encode(_millis(at), 10) + _encode(0, 16)
