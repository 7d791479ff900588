"""The component registries. Configs name entries; users add their own with ``register``.

Example:
    >>> from mtlkit.registries import MODELS
    >>> "mmoe" in MODELS
    True
"""

from __future__ import annotations

from mtlkit._registry import Registry

__all__ = ["AGGREGATORS", "BACKBONES", "DATASETS", "MODELS", "SCHEDULES", "WEIGHTINGS"]

MODELS: Registry = Registry("model")
"""Model builders ``(input_dim, tasks, *, input_layer=None, **params) -> MultiTaskModel``.

A builder may also declare ``input_spec`` to receive the dataset's input spec (e.g. models with
their own image backbone); configs inject ``input_dim``, ``input_spec``, ``input_layer`` and
``tasks`` when the builder's signature names them."""

BACKBONES: Registry = Registry("backbone")
"""Backbone builders ``(input_spec, **params) -> nn.Module`` with an ``out_features`` attribute."""

WEIGHTINGS: Registry = Registry("loss weighting")
"""Loss-weighting builders ``(tasks, **params) -> LossWeighting``."""

AGGREGATORS: Registry = Registry("gradient aggregator")
"""Aggregator builders ``(tasks, **params) -> Aggregator``."""

DATASETS: Registry = Registry("dataset")
"""Dataset builders ``(**params) -> DataSplits``."""

SCHEDULES: Registry = Registry("training schedule")
"""Training-schedule builders ``(**params) -> TaskSchedule`` (joint, mixed, alternating, sampling)."""
