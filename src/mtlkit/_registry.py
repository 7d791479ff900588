"""Typed registries: one per component family (models, loss weightings, presets, datasets).

Configs name registry entries (``model: {name: mmoe}``); users extend a family with
``MODELS.register("mine")(my_builder)``. Registering a name twice raises.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from mtlkit.errors import UnknownComponentError

__all__ = ["Registry"]

T = TypeVar("T", bound=Callable[..., Any])


class Registry(Generic[T]):
    """A name -> builder mapping for one family of components.

    Args:
        kind: what the family is called in messages ("model", "loss weighting").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._aliases: dict[str, str] = {}

    def register(self, name: str, *, aliases: tuple[str, ...] = ()) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name`` (lowercase snake case) and ``aliases``."""

        def deco(obj: T) -> T:
            for key in (name, *aliases):
                if key in self._entries or key in self._aliases:
                    raise ValueError(f"{self.kind} {key!r} is already registered; pick another name.")
            self._entries[name] = obj
            for alias in aliases:
                self._aliases[alias] = name
            return obj

        return deco

    def unregister(self, name: str) -> None:
        """Remove ``name`` and its aliases (e.g. a component registered by a test)."""
        key = self.canonical(name)
        del self._entries[key]
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

    def summary(self, name: str) -> str:
        """The first line of the builder's docstring."""
        doc = inspect.getdoc(self.get(name)) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and (name in self._entries or name in self._aliases)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"
