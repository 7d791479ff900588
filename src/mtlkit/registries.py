"""The component registries. Configs name entries; users add their own with ``register``.

Example:
    >>> from mtlkit.registries import MODELS
    >>> "mmoe" in MODELS
    True
"""

from __future__ import annotations

from mtlkit._registry import Registry

__all__ = ["AGGREGATORS", "DATASETS", "MODELS", "WEIGHTINGS"]

MODELS: Registry = Registry("model")
"""Model builders ``(input_dim, tasks, **params) -> MultiTaskModel``."""

WEIGHTINGS: Registry = Registry("loss weighting")
"""Loss-weighting builders ``(tasks, **params) -> LossWeighting``."""

AGGREGATORS: Registry = Registry("gradient aggregator")
"""Aggregator builders ``(tasks, **params) -> Aggregator``."""

DATASETS: Registry = Registry("dataset")
"""Dataset builders ``(**params) -> DataSplits``."""
