"""Exceptions raised by mtlkit.

Every exception derives from :class:`MtlkitError` and from the builtin it refines, so
``except ValueError`` keeps working. Messages follow one template:
``<who> <expects> <constraint>; got <value>.`` followed by a hint on how to fix it.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "ArgumentError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DistributedError",
    "IncompatibleComponentsError",
    "MtlkitError",
    "RunDirectoryError",
    "ShapeError",
    "UnknownComponentError",
    "did_you_mean",
]


class MtlkitError(Exception):
    """Base class of every error raised on purpose by mtlkit."""


class ConfigError(MtlkitError, ValueError):
    """A configuration (YAML file, preset or ``key=value`` override) is invalid.

    ``problems`` holds one ``"dotted.path: message"`` line per problem; all of them are
    collected before raising, so a user fixes a config in one pass.
    """

    def __init__(self, problems: Iterable[str], *, source: str | None = None) -> None:
        self.problems = list(problems)
        self.source = source
        where = f" in {source}" if source else ""
        n = len(self.problems)
        head = f"{n} problem{'s' if n != 1 else ''}{where}:"
        super().__init__("\n".join([head, *(f"  - {p}" for p in self.problems)]))


class UnknownComponentError(MtlkitError, KeyError):
    """A registry lookup used a name that is not registered."""

    def __init__(self, kind: str, name: str, available: Iterable[str]) -> None:
        self.kind, self.name = kind, name
        self.available = sorted(available)
        self.message = f"Unknown {kind} {name!r}.{did_you_mean(name, self.available)} Available: " + (
            ", ".join(self.available) or "(none)"
        )
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


class IncompatibleComponentsError(MtlkitError, ValueError):
    """Two components that cannot work together were combined (says why, and what to use instead)."""


class ShapeError(MtlkitError, ValueError):
    """A tensor has the wrong shape or dtype for the task, model or method it was given to."""


class DataError(MtlkitError, ValueError):
    """Data is invalid: NaN or out-of-range labels, inconsistent lengths, missing tasks."""


class CheckpointError(MtlkitError, RuntimeError):
    """A checkpoint cannot be read or does not match the model / trainer it is loaded into."""


class RunDirectoryError(MtlkitError, OSError):
    """A run directory cannot be written: in use by another process, not writable, a file where a
    folder is expected, or the disk is full. The message names the path and the fix."""

    def __str__(self) -> str:  # the message, also when errno/filename are set
        return str(self.args[0]) if self.args else super().__str__()


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` if none is close."""
    close = difflib.get_close_matches(str(name), list(choices), n=1, cutoff=0.6)
    return f" Did you mean {close[0]!r}?" if close else ""


class DistributedError(MtlkitError, RuntimeError):
    """Multi-process training cannot start as asked (environment, devices, process group)."""


class ArgumentError(MtlkitError, ValueError):
    """A constructor argument breaks its constraint (``num_experts must be an int >= 1; got 0.``).

    ``name`` is the argument's name and ``value`` what was passed, so that a config error can
    name the dotted path of the value (``model.num_experts``).
    """

    def __init__(self, name: str, value: object, constraint: str, hint: str = "", *, who: str = "") -> None:
        self.name, self.value, self.constraint, self.hint = name, value, constraint, hint
        self.who = who
        head = f"{who} {name}" if who else name
        super().__init__(f"{head} must be {constraint}; got {value!r}.{' ' + hint if hint else ''}")
