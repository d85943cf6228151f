"""MSISDN normalisation to the provider's form (country code, no '+'); pure."""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat, PhoneNumberType

_SMS_TYPES = frozenset({PhoneNumberType.MOBILE, PhoneNumberType.FIXED_LINE_OR_MOBILE})


@dataclass(frozen=True)
class BadNumber:
    """One rejected recipient: its position in the request, what was sent, and why."""

    index: int
    value: object
    reason: str


# Rwandan mobile numbers in the forms people write them (libphonenumber's RW mobile pattern is
# 7[237-9] and seven digits): answered without a full parse, which is most of a send's cost.
_RW_MOBILE = re.compile(r"(?:\+?250|0)?(7[237-9][0-9]{7})")
_SEPARATORS = str.maketrans("", "", " -().")


@functools.lru_cache(maxsize=65536)
def normalise(raw: str, default_region: str, allowed_regions: tuple[str, ...]) -> str:
    """Return `raw` as digits with country code (e.g. 250788123456); raise ValueError with why."""
    if default_region == "RW" and "RW" in allowed_regions:
        fast = _RW_MOBILE.fullmatch(raw.strip().translate(_SEPARATORS))
        if fast:
            return "250" + fast.group(1)
    return _parse(raw, default_region, allowed_regions)


def _parse(raw: str, default_region: str, allowed_regions: tuple[str, ...]) -> str:
    """The full libphonenumber path."""
    text = raw.strip()
    if not text:
        raise ValueError("empty number")
    if len(text) > 32:
        raise ValueError("too long to be a phone number")
    try:
        number = phonenumbers.parse(text, default_region)
    except NumberParseException as exc:
        raise ValueError("not a phone number") from exc
    if not phonenumbers.is_valid_number(number):
        raise ValueError("not a valid phone number")
    region = phonenumbers.region_code_for_number(number)
    if region not in allowed_regions:
        raise ValueError(f"numbers in {region or 'that region'} are not enabled on this gateway")
    if phonenumbers.number_type(number) not in _SMS_TYPES:
        raise ValueError("not a mobile number")
    return phonenumbers.format_number(number, PhoneNumberFormat.E164).lstrip("+")


def normalise_all(
    values: list[object], default_region: str, allowed_regions: tuple[str, ...]
) -> tuple[list[str], list[BadNumber]]:
    """Normalise and de-duplicate recipients, keeping first-seen order; collect every bad entry."""
    good: dict[str, None] = {}
    bad: list[BadNumber] = []
    for index, value in enumerate(values):
        if not isinstance(value, str):
            bad.append(BadNumber(index, value, "must be a string"))
            continue
        try:
            good.setdefault(normalise(value, default_region, allowed_regions), None)
        except ValueError as exc:
            bad.append(BadNumber(index, value, str(exc)))
    return list(good), bad
