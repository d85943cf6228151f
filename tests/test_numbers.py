"""MSISDN normalisation with phonenumbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.sending.numbers import _parse, normalise, normalise_all

RW = ("RW",)


@pytest.mark.parametrize(
    "raw",
    [
        "0788123456",
        "+250788123456",
        "250788123456",
        "+250 788 123 456",
        "0788-123-456",
        " 078 812 3456 ",
        "+250 (788) 123456",
    ],
)
def test_accepted_forms(raw: str) -> None:
    assert normalise(raw, "RW", RW) == "250788123456"


@pytest.mark.parametrize("prefix", ["72", "73", "78", "79"])
def test_rwandan_mobile_prefixes(prefix: str) -> None:
    assert normalise(f"0{prefix}1234567", "RW", RW) == f"250{prefix}1234567"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("hello", "not a"),
        ("0788", "not a valid"),
        ("07881234567", "not a valid"),
        ("+44 7911 123456", "not enabled"),
        ("0252123456", "not"),
        ("1" * 40, "too long"),
    ],
)
def test_rejected(raw: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        normalise(raw, "RW", RW)


def test_dedupe_keeps_order_and_lists_every_bad_entry() -> None:
    good, bad = normalise_all(["0788123456", "x", "+250788123456", 5, "0722000000"], "RW", RW)
    assert good == ["250788123456", "250722000000"]
    assert [(b.index, b.value) for b in bad] == [(1, "x"), (3, 5)]


@given(
    st.sampled_from(["72", "73", "78", "79"]),
    st.integers(0, 9_999_999),
    st.sampled_from(["0{p}{n}", "+250{p}{n}", "250{p}{n}", "+250 {p} {n}"]),
)
def test_every_form_of_a_mobile_number_normalises_the_same(p: str, n: int, form: str) -> None:
    digits = f"{n:07d}"
    assert normalise(form.format(p=p, n=digits), "RW", RW) == f"250{p}{digits}"


@given(st.text(max_size=40))
def test_never_raises_anything_but_value_error(raw: str) -> None:
    try:
        result = normalise(raw, "RW", RW)
    except ValueError:
        return
    assert result.startswith("2507") and len(result) == 12


@given(
    st.sampled_from(["", "0", "+250", "250", "+ 250", "00250", "+0", "2500", "(0", "+250-"]),
    st.one_of(
        st.text(alphabet="0123456789 -().", min_size=7, max_size=14),
        st.from_regex(r"\A7[0-9][ -]?[0-9]{3}[ -.]?[0-9]{2,5}\Z"),
    ),
)
def test_the_fast_path_agrees_with_libphonenumber(prefix: str, rest: str) -> None:
    raw = prefix + rest
    normalise.cache_clear()
    try:
        fast: str | None = normalise(raw, "RW", RW)
    except ValueError:
        fast = None
    try:
        full: str | None = _parse(raw, "RW", RW)
    except ValueError:
        full = None
    assert fast == full, raw
