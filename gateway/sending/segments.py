"""SMS segment counting for GSM-7 and UCS-2 texts; pure."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# GSM 03.38 basic character set (one septet each) and extension table (escape + char: two).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")

SINGLE = {"gsm7": 160, "ucs2": 70}
MULTI = {"gsm7": 153, "ucs2": 67}

Encoding = Literal["gsm7", "ucs2"]


@dataclass(frozen=True)
class SegmentInfo:
    """How a text travels: its encoding, its segment count and its length in units."""

    encoding: Encoding
    segments: int
    units: int


def _units(text: str, encoding: Encoding) -> list[int]:
    """Units per character: septets for GSM-7, UTF-16 code units for UCS-2."""
    if encoding == "gsm7":
        return [2 if ch in GSM7_EXTENSION else 1 for ch in text]
    return [2 if ord(ch) > 0xFFFF else 1 for ch in text]


def encoding_of(text: str) -> Encoding:
    """GSM-7 when every character is in the GSM-7 alphabet, else UCS-2."""
    return "gsm7" if all(ch in GSM7_BASIC or ch in GSM7_EXTENSION for ch in text) else "ucs2"


def count(text: str) -> SegmentInfo:
    """Count the segments of `text`; an escape pair or surrogate pair is never split."""
    encoding = encoding_of(text)
    units = _units(text, encoding)
    total = sum(units)
    if total <= SINGLE[encoding]:
        return SegmentInfo(encoding, 1 if text else 0, total)
    per_part = MULTI[encoding]
    segments, used = 1, 0
    for width in units:
        if used + width > per_part:
            segments += 1
            used = 0
        used += width
    return SegmentInfo(encoding, segments, total)
