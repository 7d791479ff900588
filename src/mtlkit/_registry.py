"""Typed registries: one per component family (models, loss weightings, presets, datasets).

Configs name registry entries (``model: {name: mmoe}``); users extend a family with
``MODELS.register("mine")(my_builder)``. Registering a name twice raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from mtlkit.errors import UnknownComponentError

__all__ = ["CAPABILITY_FLAGS", "Entry", "Registry"]

T = TypeVar("T", bound=Callable[..., Any])

CAPABILITY_FLAGS = ("requires_gradients", "requires_all_tasks", "one_task_per_step", "has_representation")
"""Boolean class attributes an entry reports as its capability flags (when its class sets them)."""


@dataclass(frozen=True)
class Entry:
    """A registered component: its builder and metadata.

    Attributes:
        name: the registered name.
        builder: the callable a config's parameters are passed to.
        cls: the class the builder returns (the builder itself when it is a class; declared with
            ``register(..., cls=...)`` for builder functions; None when undeclared).
        summary: one line (the ``summary=`` given, else the first line of the builder's docstring).
        flags: the capability flags :data:`CAPABILITY_FLAGS` that ``cls`` sets, e.g.
            ``{"requires_gradients": True}``.
    """

    name: str
    builder: Callable[..., Any]
    cls: type | None = None
    summary: str = ""
    flags: Mapping[str, bool] = field(default_factory=dict)


class Registry(Generic[T]):
    """A name -> builder mapping for one family of components.

    Args:
        kind: what the family is called in messages ("model", "loss weighting").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, Entry] = {}
        self._aliases: dict[str, str] = {}

    def register(
        self,
        name: str,
        *,
        aliases: tuple[str, ...] = (),
        cls: type | None = None,
        summary: str | None = None,
    ) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (lowercase snake case) and ``aliases``.

        ``cls``: the class a builder function returns (its capability flags are read from it);
        ``summary``: the one-line description (default: the docstring's first line).
        """

        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is already registered; pick another name.")
            self._entries[name] = obj
            self._meta[name] = _entry(name, obj, cls, summary)
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (e.g. a component registered by a test)."""
        key = self.canonical(name)
        del self._entries[key]
        del self._meta[key]
        for alias in [a for a, target in self._aliases.items() if target == key]:
            del self._aliases[alias]

    def canonical(self, name: str) -> str:
        """The registered name for ``name`` or one of its aliases."""
        key = self._aliases.get(name, name)
        if key not in self._entries:
            raise UnknownComponentError(self.kind, name, self._entries)
        return key

    def get(self, name: str) -> T:
        """The builder registered as ``name``; raises :class:`UnknownComponentError` otherwise."""
        return self._entries[self.canonical(name)]

    def build(self, name: str, /, **kwargs: Any) -> Any:
        """Call the builder with ``kwargs``, checking them against its signature first."""
        obj = self.get(name)
        try:
            inspect.signature(obj).bind(**kwargs)
        except TypeError as exc:
            raise TypeError(f"{self.kind} {name!r}: {exc}") from None
        return obj(**kwargs)

    def names(self) -> list[str]:
        """Registered names, sorted (aliases excluded)."""
        return sorted(self._entries)

    def entry(self, name: str) -> Entry:
        """The metadata of ``name`` (builder, class, summary, capability flags)."""
        return self._meta[self.canonical(name)]

    def summary(self, name: str) -> str:
        """The one-line description of ``name``."""
        return self.entry(name).summary

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _entry(name: str, obj: Callable[..., Any], cls: type | None, summary: str | None) -> Entry:
    if cls is None and inspect.isclass(obj):
        cls = obj
    if summary is None:
        doc = (inspect.getdoc(obj) or "").strip()
        summary = doc.splitlines()[0] if doc else ""
    flags = {f: v for f in CAPABILITY_FLAGS if isinstance(v := getattr(cls, f, None), bool)} if cls else {}
    return Entry(name, obj, cls, summary, flags)
