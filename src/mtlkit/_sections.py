"""The component sections of an experiment config, listed once.

Each names a registry family: the config key (``model: {name: mmoe}``), the family's name in
``mtlkit list`` and the section's default. The config schema
(:class:`mtlkit.config.ExperimentConfig`), the component families that validate the sections,
override handling and ``mtlkit list`` are all generated from :data:`SECTIONS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["SECTIONS", "Section"]


@dataclass(frozen=True)
class Section:
    """A component section: ``key`` in the config, ``family`` in ``mtlkit list``, its default
    (``None``: the section is optional and absent by default) or ``required``."""

    key: str
    family: str
    default: dict[str, Any] | None = None
    required: bool = False


SECTIONS: tuple[Section, ...] = (
    Section("data", "datasets", required=True),
    Section("backbone", "backbones"),
    Section("model", "models", required=True),
    Section("weighting", "weightings", {"name": "equal"}),
    Section("aggregator", "aggregators"),
    Section("optimizer", "optimizers", {"name": "adam", "lr": 1e-3}),
    Section("scheduler", "schedulers"),
    Section("schedule", "schedules", {"name": "joint"}),
)
