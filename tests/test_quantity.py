"""Kubernetes quantities are parsed by apimachinery's rules, exactly, and never crash."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kata_debug.sizing import quantity as q


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0),
        ("1", 1),
        ("500m", Fraction(1, 2)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("1.", 1),  # apimachinery accepts a trailing dot
        ("100m", Fraction(1, 10)),
        ("1500m", Fraction(3, 2)),
        ("1k", 1000),
        ("1M", 10**6),
        ("1G", 10**9),
        ("1T", 10**12),
        ("1P", 10**15),
        ("1E", 10**18),  # a bare E is exa, not an exponent
        ("1Ki", 1024),
        ("800Mi", 800 * 2**20),
        ("1.5Gi", 3 * 2**29),
        ("1Ti", 2**40),
        ("1Pi", 2**50),
        ("1Ei", 2**60),
        ("1e3", 1000),
        ("1E3", 1000),
        ("1e-3", Fraction(1, 1000)),
        ("1e+3", 1000),
        ("12e0", 12),
        ("5n", Fraction(5, 10**9)),
        ("5u", Fraction(5, 10**6)),
        ("+2", 2),
        ("-2", -2),
        ("007", 7),
        ("0.000", 0),
        ("Gi", 0),  # apimachinery quirk: no digits reads as zero
    ],
)
def test_valid_quantities(text: str, value: Fraction) -> None:
    assert q.parse_quantity(text) == value


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1GB",
        "1K",
        "1 Gi",
        " 1",
        "1Gi ",
        "abc",
        "1.5.0",
        "1e",
        "1Mi3",
        "1Ee3",
        "1i",
        "1,5",
        "0x10",
        "1e999999",
        "${MEMORY}",
    ],
)
def test_invalid_quantities_raise_quantity_error(text: str) -> None:
    with pytest.raises(q.QuantityError):
        q.parse_quantity(text)


def test_yaml_numbers_are_read_as_their_json_text() -> None:
    assert q.parse(1) == 1
    assert q.parse(0.5) == Fraction(1, 2)
    assert q.parse(2.0) == 2
    for bad in (True, None, [1], {"a": 1}, float("nan")):
        with pytest.raises(q.QuantityError):
            q.parse(bad)


def test_rounding_matches_milli_value_and_value() -> None:
    assert q.milli_value(q.parse_quantity("0.0001")) == 1  # MilliValue rounds up
    assert q.milli_value(q.parse_quantity("1.5")) == 1500
    assert q.int_value(q.parse_quantity("1.5")) == 2
    assert q.int_value(q.parse_quantity("1G")) // 2**20 == 953  # "1G adds 953 MiB"


def test_templates_are_recognised() -> None:
    assert q.is_templated("${memory_size}")
    assert q.is_templated("{{ .Values.memory }}")
    assert not q.is_templated("1Gi")
    assert not q.is_templated(1)


SUFFIXES = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "m": Fraction(1, 1000)}


@given(st.integers(min_value=0, max_value=10**12), st.sampled_from(sorted(SUFFIXES)))
def test_integer_with_suffix(n: int, suffix: str) -> None:
    assert q.parse_quantity(f"{n}{suffix}") == n * SUFFIXES[suffix]


@given(st.text(max_size=12))
def test_arbitrary_text_never_crashes(text: str) -> None:
    try:
        value = q.parse_quantity(text)
    except q.QuantityError:
        return
    assert isinstance(value, Fraction)
