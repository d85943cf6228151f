"""Time-ordered identifiers (ULID layout) so ids sort by creation time."""

from __future__ import annotations

import base64
import random
import threading
from datetime import datetime

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_MAX_MILLIS = (1 << 48) - 1
_MAX_RANDOM = (1 << 80) - 1


# Crockford base32 through the C base32 codec: RFC 4648's alphabet, translated.
_TO_CROCKFORD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET)


def _encode(value: int, length: int) -> str:
    """`value` as `length` Crockford base32 characters (5 bits each, most significant first)."""
    bits = length * 5
    pad = -bits % 8  # shift left so the characters fall on whole bytes
    raw = (value << pad).to_bytes((bits + pad) // 8, "big")
    return base64.b32encode(raw).decode()[:length].translate(_TO_CROCKFORD)


def _millis(at: datetime) -> int:
    return min(max(int(at.timestamp() * 1000), 0), _MAX_MILLIS)


class _Monotonic:
    """ULIDs that strictly increase within this process, even in the same millisecond."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = (0, 0)
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
            else:
                rand = self._random.getrandbits(79)  # headroom for increments
            self._last = (millis, rand)
        return _encode(millis, 10) + _encode(rand, 16)


ulid = _Monotonic().next


def lowest_ulid(at: datetime) -> str:
    """The smallest ULID of instant `at`, for turning a time bound into an id bound."""
    return _encode(_millis(at), 10) + _encode(0, 16)
