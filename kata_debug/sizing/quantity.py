"""Kubernetes resource quantities (`500m`, `1.5Gi`, `1e3`), parsed by the apimachinery rules.

Why our own parser: VM sizing hinges on exact values (`1G` is 953 MiB, not 1024), and the
manifests we read are often templates (`${MEMORY}`) or hand-written mistakes (`1GB`,
`1.5.0`). The grammar follows `k8s.io/apimachinery/pkg/api/resource` `parseQuantityString`
and the suffix table of its `suffixer`: an optional sign, digits with an optional fraction,
then one suffix (binary `Ki..Ei`, decimal `n u m k M G T P E`, or an exponent `e3`/`E-2`).
Values are exact fractions; `milli_value` and `int_value` round up like `MilliValue()` and
`Value()` do, which is what the kubelet uses to build CFS quotas and memory limits.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from typing import Any

_BINARY_EXP = {"Ki": 10, "Mi": 20, "Gi": 30, "Ti": 40, "Pi": 50, "Ei": 60}
_DECIMAL_EXP = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_SUFFIX_CHARS = frozenset("eEinumkKMGTP")
_DIGITS = frozenset("0123456789")
# Kubernetes accepts any int64 exponent; past this we would build astronomically large
# integers for values no node can have, so such input is reported instead of evaluated.
_MAX_EXPONENT = 300
_MAX_DIGITS = 1000

ZERO = Fraction(0)


class QuantityError(ValueError):
    """A value that Kubernetes would reject as a quantity (message says why)."""


def is_templated(value: Any) -> bool:
    """True for template placeholders (`${VAR}`, `{{ .Values.x }}`) that only a renderer fills."""
    return isinstance(value, str) and ("${" in value or "{{" in value)


def quantity_text(value: Any) -> str:
    """The quantity string of a YAML/JSON scalar: Kubernetes accepts numbers and strings.

    YAML `cpu: 1` and `cpu: 0.5` arrive as numbers; the API server reads their JSON text.
    Booleans, nulls and collections are rejected like the API server rejects them.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or value is None:
        raise QuantityError(f"{value!r} is not a quantity")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise QuantityError(f"{value!r} is not a quantity")
        return repr(value)
    raise QuantityError(f"a {type(value).__name__} is not a quantity")


def parse(value: Any) -> Fraction:
    """Exact value of a quantity given as a string or a YAML number; raises QuantityError."""
    return parse_quantity(quantity_text(value))


@lru_cache(maxsize=8192)
def parse_quantity(text: str) -> Fraction:
    """Exact value of a quantity string (cached: manifests repeat the same few values)."""
    if not text:
        raise QuantityError("empty quantity")
    if text == "0":
        return ZERO
    end = len(text)
    pos = 0
    negative = False
    if text[0] in "+-":
        negative = text[0] == "-"
        pos = 1
    # Leading zeros carry no value; a string of only sign and zeros is zero (as upstream).
    while pos < end and text[pos] == "0":
        pos += 1
    if pos >= end:
        return ZERO
    start = pos
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    num = text[start:pos] or "0"
    denom = ""
    if pos < end and text[pos] == ".":
        pos += 1
        dstart = pos
        while pos < end and text[pos] in _DIGITS:
            pos += 1
        denom = text[dstart:pos]
    suffix_start = pos
    while pos < end and text[pos] in _SUFFIX_CHARS:
        pos += 1
    if pos < end and text[pos] in "+-":
        pos += 1
    while pos < end and text[pos] in _DIGITS:
        pos += 1
    if pos < end:
        raise QuantityError(
            f"{text!r}: quantities must match the regular expression "
            r"'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'"
        )
    suffix = text[suffix_start:]
    base, exponent = _interpret(text, suffix)
    if len(num) + len(denom) > _MAX_DIGITS:
        raise QuantityError(f"{text!r}: too many digits to evaluate")
    value = Fraction(int(num + denom), 10 ** len(denom))
    if exponent >= 0:
        value *= base**exponent
    else:
        value /= base ** (-exponent)
    return -value if negative else value


def _interpret(text: str, suffix: str) -> tuple[int, int]:
    exp = _DECIMAL_EXP.get(suffix)
    if exp is not None:
        return 10, exp
    exp = _BINARY_EXP.get(suffix)
    if exp is not None:
        return 2, exp
    if len(suffix) > 1 and suffix[0] in "eE":
        digits = suffix[1:]
        body = digits[1:] if digits[0] in "+-" else digits
        if body and all(c in _DIGITS for c in body):
            exp = int(digits)
            if abs(exp) > _MAX_EXPONENT:
                raise QuantityError(f"{text!r}: exponent too large to evaluate")
            return 10, exp
    raise QuantityError(f"{text!r}: unable to parse quantity's suffix {suffix!r}")


def milli_value(q: Fraction) -> int:
    """`Quantity.MilliValue()`: thousandths, rounded up (`0.0001` -> 1m)."""
    return -((-q.numerator * 1000) // q.denominator)


def int_value(q: Fraction) -> int:
    """`Quantity.Value()`: the integer value, rounded up (`1.5` bytes -> 2)."""
    return -((-q.numerator) // q.denominator)
