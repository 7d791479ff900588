"""Equal and static loss weights."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from mtlkit.errors import UnknownComponentError
from mtlkit.registries import WEIGHTINGS
from mtlkit.state import TrainState
from mtlkit.tasks import Task
from mtlkit.weighting._base import LossWeighting, WeightedLoss

__all__ = ["EqualWeighting", "StaticWeighting"]


class EqualWeighting(LossWeighting):
    """Joint training: the plain sum of task losses (every weight 1)."""

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        weights = torch.ones_like(losses)
        return WeightedLoss(losses.sum(), weights)


class StaticWeighting(LossWeighting):
    """Fixed weights: ``sum_k w_k L_k``.

    Args:
        tasks: the tasks, in loss order.
        weights: ``{task: weight}`` (tasks not named get 1.0) or one weight per task.
    """

    def __init__(
        self, tasks: Sequence[Task] | Sequence[str], weights: Mapping[str, float] | Sequence[float]
    ) -> None:
        super().__init__(tasks)
        if isinstance(weights, Mapping):
            unknown = [k for k in weights if k not in self.task_names]
            if unknown:
                raise UnknownComponentError("task in `weights`", unknown[0], self.task_names)
            values = [float(weights.get(t, 1.0)) for t in self.task_names]
        else:
            values = [float(w) for w in weights]
            if len(values) != self.num_tasks:
                raise ValueError(
                    f"StaticWeighting expects {self.num_tasks} weights (tasks {list(self.task_names)}); "
                    f"got {len(values)}."
                )
        bad = [w for w in values if not math.isfinite(w) or w < 0]
        if bad:
            raise ValueError(f"StaticWeighting weights must be finite and >= 0; got {bad[0]!r}.")
        self.register_buffer("weights", torch.tensor(values, dtype=torch.float32))

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        w = self.weights.to(losses.dtype)
        return WeightedLoss((w * losses).sum(), w.detach().clone())


@WEIGHTINGS.register("equal", aliases=("sum", "joint"), cls=EqualWeighting)
def equal(tasks: Sequence[Task]) -> EqualWeighting:
    """Equal weighting: the sum of task losses."""
    return EqualWeighting(tasks)


@WEIGHTINGS.register("static", aliases=("fixed",), cls=StaticWeighting)
def static(tasks: Sequence[Task], *, weights: dict[str, float]) -> StaticWeighting:
    """Static weights {task: w}: the weighted sum of task losses."""
    return StaticWeighting(tasks, weights)
