"""Registry builders for the aggregators."""

from __future__ import annotations

from collections.abc import Sequence

from mtlkit.aggregation._base import Mean, Sum
from mtlkit.registries import AGGREGATORS
from mtlkit.tasks import Task

__all__ = ["AGGREGATORS"]


@AGGREGATORS.register("mean")
def mean(tasks: Sequence[Task]) -> Mean:
    """Mean of the task gradients (linear scalarisation; the reference point)."""
    return Mean()


@AGGREGATORS.register("sum")
def sum_(tasks: Sequence[Task]) -> Sum:
    """Sum of the task gradients (identical to backpropagating the summed loss)."""
    return Sum()
