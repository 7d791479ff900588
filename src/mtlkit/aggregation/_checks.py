"""Argument checks of the aggregators' constructors: one message template for every method.

Every refusal reads ``"<Owner> parameter `<name>` must be <constraint>; got <value!r>."`` and is
a ``ValueError`` (the registry builders and the config validation pass it through unchanged).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

__all__ = ["check", "check_choice", "check_float", "check_int"]


def check(owner: str, name: str, value: object, *, ok: bool, constraint: str) -> None:
    """Raise ``ValueError`` naming ``owner``'s parameter ``name``, the ``constraint`` and ``value``
    unless ``ok``."""
    if not ok:
        raise ValueError(f"{owner} parameter `{name}` must be {constraint}; got {value!r}.")


def check_float(
    owner: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a float (finite, not a bool, within the bounds), else :func:`check`'s error."""
    if low is not None and high is not None:
        constraint = f"a float in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        constraint = f"a float {'>' if low_open else '>='} {low:g}"
    else:
        constraint = "a finite float"
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (low is None or (v > low if low_open else v >= low)) and (
            high is None or (v < high if high_open else v <= high)
        )
    check(owner, name, value, ok=ok, constraint=constraint)
    return float(value)  # type: ignore[arg-type]


def check_int(owner: str, name: str, value: object, *, low: int) -> int:
    """``value`` as an int ``>= low`` (not a bool), else :func:`check`'s error."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
    check(owner, name, value, ok=ok, constraint=f"an int >= {low}")
    return int(value)  # type: ignore[call-overload]


def check_choice(owner: str, name: str, value: object, choices: Sequence[object]) -> None:
    """:func:`check`'s error unless ``value`` is one of ``choices`` (a bool never is)."""
    allowed = ", ".join(repr(c) for c in choices)
    check(
        owner,
        name,
        value,
        ok=value in choices and not isinstance(value, bool),
        constraint=f"one of {allowed}",
    )
