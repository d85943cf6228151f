"""Segment counting: GSM-7 and UCS-2, extension characters, pairs never split."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sending.segments import GSM7_BASIC, GSM7_EXTENSION, count


@pytest.mark.parametrize(
    ("text", "encoding", "segments"),
    [
        ("a", "gsm7", 1),
        ("a" * 160, "gsm7", 1),
        ("a" * 161, "gsm7", 2),
        ("a" * 306, "gsm7", 2),
        ("a" * 307, "gsm7", 3),
        ("€" * 80, "gsm7", 1),  # 160 septets
        ("€" * 81, "gsm7", 2),  # 162 septets
        ("a" * 152 + "€", "gsm7", 1),  # 154 septets fit one SMS
        ("a" * 152 + "€" + "a" * 151, "gsm7", 2),  # the pair moves to part two: 152 + 153
        ("a" * 152 + "€" + "a" * 152, "gsm7", 3),  # 306 septets, yet the pair cannot straddle
        ("ñÑüÜ@£$¥", "gsm7", 1),
        ("é" * 70 + "ç", "ucs2", 2),  # ç (lower case) is not GSM-7
        ("ç" * 70, "ucs2", 1),
        ("ç" * 71, "ucs2", 2),
        ("ç" * 134, "ucs2", 2),
        ("ç" * 135, "ucs2", 3),
        ("😀" * 35, "ucs2", 1),  # 70 UTF-16 units
        ("😀" * 36, "ucs2", 2),
        ("a" * 66 + "😀", "ucs2", 1),  # 68 units fit one segment
    ],
)
def test_known_counts(text: str, encoding: str, segments: int) -> None:
    info = count(text)
    assert (info.encoding, info.segments) == (encoding, segments)


def test_surrogate_pair_is_not_split() -> None:
    # 66 units then an emoji (2 units) then enough to need parts: the emoji moves to part two.
    assert count("ç" * 66 + "😀" + "ç" * 65).segments == 2  # 66 | 2 + 65
    assert count("ç" * 66 + "😀" + "ç" * 66).segments == 3  # 134 units, but 66 | 67 | 1


GSM = sorted(GSM7_BASIC | GSM7_EXTENSION)


@given(st.text(alphabet=GSM, min_size=1, max_size=2000))
def test_gsm7_segments_bound_the_septets(text: str) -> None:
    info = count(text)
    septets = sum(2 if ch in GSM7_EXTENSION else 1 for ch in text)
    assert info.encoding == "gsm7" and info.units == septets
    if septets <= 160:
        assert info.segments == 1
    else:
        # Never fewer parts than the septets need, and at most one extra for moved pairs.
        assert -(-septets // 153) <= info.segments <= -(-septets // 152)


@given(st.text(min_size=1, max_size=800))
def test_any_text_is_counted_consistently(text: str) -> None:
    info = count(text)
    assert info.segments >= 1
    if info.encoding == "ucs2":
        units = len(text.encode("utf-16-le")) // 2
        assert info.units == units
        assert info.segments == 1 if units <= 70 else -(-units // 67) <= info.segments
