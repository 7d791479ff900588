"""One argument checker for every constructor: ``check(name, value, ok, constraint)`` raises
:class:`~mtlkit.errors.ArgumentError` (``"<name> must be <constraint>; got <value>."``).

The helpers cover the usual constraints; a config error built from one names the dotted path
(``model.num_experts: must be an int >= 1; got 0.``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from mtlkit.errors import ArgumentError

__all__ = [
    "check",
    "check_model_args",
    "in_unit_interval",
    "non_negative",
    "positive",
    "positive_int",
    "positive_ints",
    "probability",
]


def check(name: str, value: Any, ok: bool, constraint: str, hint: str = "", *, who: str = "") -> None:
    """Raise :class:`ArgumentError` unless ``ok`` (``who``: the component, for the message)."""
    if not ok:
        raise ArgumentError(name, value, constraint, hint, who=who)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(name: str, value: Any, *, minimum: int = 1, who: str = "") -> int:
    """An ``int >= minimum`` (sizes, counts)."""
    check(name, value, _int(value) and value >= minimum, f"an int >= {minimum}", who=who)
    return int(value)


def positive_ints(name: str, values: Any, *, allow_empty: bool = True, who: str = "") -> list[int]:
    """A list of ints >= 1 (hidden layer sizes)."""
    ok = isinstance(values, Iterable) and not isinstance(values, (str, bytes))
    items = list(values) if ok else []
    ok = ok and all(_int(v) and v >= 1 for v in items) and (allow_empty or bool(items))
    check(name, values, ok, "a list of ints >= 1" + ("" if allow_empty else " (at least one)"), who=who)
    return items


def positive(name: str, value: Any, *, who: str = "") -> float:
    """A finite number > 0."""
    check(name, value, _number(value) and math.isfinite(value) and value > 0, "a finite number > 0", who=who)
    return float(value)


def non_negative(name: str, value: Any, *, who: str = "") -> float:
    """A finite number >= 0."""
    check(
        name, value, _number(value) and math.isfinite(value) and value >= 0, "a finite number >= 0", who=who
    )
    return float(value)


def probability(name: str, value: Any, *, who: str = "") -> float:
    """A probability in [0, 1) (dropout rates: 1 would drop everything)."""
    check(name, value, _number(value) and 0 <= value < 1, "a probability in [0, 1)", who=who)
    return float(value)


def in_unit_interval(name: str, value: Any, *, closed: bool = True, who: str = "") -> float:
    """A number in [0, 1] (``closed``) or (0, 1)."""
    ok = _number(value) and (0 <= value <= 1 if closed else 0 < value < 1)
    check(name, value, ok, "a number in [0, 1]" if closed else "a number in (0, 1)", who=who)
    return float(value)


def check_model_args(who: str, /, **args: Any) -> None:
    """Check a model builder's arguments by their conventional names: ``num_*`` and ``k`` are
    ints >= 1 (or a list / ``{task: int}`` of them), ``*_dims`` and ``channels`` lists of ints >= 1,
    ``dropout`` a probability in [0, 1)."""
    for name, value in args.items():
        if name.startswith("num_") or name == "k":
            if isinstance(value, dict):
                for key, v in value.items():
                    positive_int(f"{name}.{key}", v, who=who)
            elif isinstance(value, (list, tuple)):
                positive_ints(name, value, allow_empty=False, who=who)
            else:
                positive_int(name, value, who=who)
        elif name.endswith("_dims") or name in ("channels", "kernel_sizes"):
            positive_ints(name, value, who=who)
        elif name == "dropout":
            probability(name, value, who=who)
        else:
            raise TypeError(f"check_model_args: no convention for argument {name!r}.")
