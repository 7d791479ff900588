"""Gradient aggregation: per-task gradients (Jacobian ``[T, P]``) -> one update ``[P]``.

Every class is callable as ``aggregator(jacobian)``; :func:`mtlkit.backward` builds the
Jacobian (w.r.t. the shared parameters or the shared representation) and writes the result.
"""

from mtlkit.aggregation._base import Aggregation, Aggregator, Mean, Sum, gramian
from mtlkit.aggregation.registry import AGGREGATORS

__all__ = ["AGGREGATORS", "Aggregation", "Aggregator", "Mean", "Sum", "gramian"]
