"""What a suppression request must be: the number, the reason, a CSV import. Pure."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

from ..errors import ValidationFailed
from ..platform.settings import Settings
from . import numbers

MAX_REASON = 500
MAX_IMPORT = 100_000
MAX_LISTED = 100  # invalid lines named in an import's 422 (the count is always given)


def check_number(raw: str, settings: Settings) -> str:
    """A number to suppress, normalised as a recipient is (so `0788 123 456` and
    `+250788123456` are one entry)."""
    try:
        return numbers.normalise(raw, settings.default_region, settings.allowed_regions)
    except ValueError as exc:
        raise ValidationFailed(
            f"number: {exc}",
            code="invalid_number",
            extra={"errors": [{"field": "number", "reason": str(exc)}]},
        ) from None


def check_reason(value: object) -> str | None:
    """A reason: absent, or a string of at most 500 characters."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_REASON:
        raise ValidationFailed(
            f"reason: must be a string of at most {MAX_REASON} characters",
            extra={"errors": [{"field": "reason", "reason": "at most 500 characters"}]},
        )
    return value.strip() or None


@dataclass(frozen=True)
class Parsed:
    """An import's numbers, normalised, in file order (duplicates kept once)."""

    numbers: list[str]
    lines: int  # lines that held a number


def parse_import(text: str, settings: Settings) -> Parsed:
    """A CSV of numbers, one a line in the first column (an optional header `number`, blank
    lines and further columns ignored). All or nothing: any invalid line makes the 422
    `invalid_lines` that names each (up to 100, with the count), and nothing is imported."""
    found: dict[str, None] = {}
    errors: list[dict[str, object]] = []
    bad = 0
    lines = 0
    for index, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cell = row[0].strip() if row else ""
        if not cell or (index == 1 and cell.lower() in ("number", "phone", "msisdn")):
            continue
        lines += 1
        try:
            found.setdefault(
                numbers.normalise(cell, settings.default_region, settings.allowed_regions), None
            )
        except ValueError as exc:
            bad += 1
            if len(errors) < MAX_LISTED:
                errors.append(
                    {
                        "field": f"line {index}",
                        "line": index,
                        "value": cell[:40],
                        "reason": str(exc),
                    }
                )
    if bad:
        raise ValidationFailed(
            f"{bad} of {lines} lines are not valid numbers; nothing was imported",
            code="invalid_lines",
            extra={"errors": errors, "invalid": bad},
        )
    if lines > MAX_IMPORT:
        raise ValidationFailed(
            f"at most {MAX_IMPORT} numbers in one import; this file has {lines}",
            code="too_many_lines",
            extra={"errors": [{"field": "body", "reason": f"at most {MAX_IMPORT} numbers"}]},
        )
    if not lines:
        raise ValidationFailed(
            "the file holds no numbers (one a line, in the first column)",
            code="invalid_lines",
            extra={"errors": [{"field": "body", "reason": "no numbers"}], "invalid": 0},
        )
    return Parsed(list(found), lines)
