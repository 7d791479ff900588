"""The loss-weighting interface: task losses ``[T]`` -> one scalar to differentiate."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from mtlkit.errors import ShapeError
from mtlkit.state import TrainState
from mtlkit.tasks import Task

__all__ = ["LossWeighting", "WeightedLoss"]


class WeightedLoss(NamedTuple):
    """Result of a loss weighting.

    Attributes:
        total: the scalar that is differentiated (it includes regularisers such as the
            log-variance term of uncertainty weighting).
        weights: detached ``[T]`` weights applied to the task losses. With a gradient
            aggregator (or a gradient-based weighting) the task gradients are scaled by them.
        aux: an objective that only trains the weighting's own parameters (GradNorm's
            ``L_grad``); ``None`` for most methods.
    """

    total: Tensor
    weights: Tensor
    aux: Tensor | None = None


class LossWeighting(nn.Module, ABC):
    """Maps the vector of task losses ``[T]`` to a scalar objective.

    Subclasses implement :meth:`combine`. Learnable weightings hold ordinary
    ``nn.Parameter``s; the trainer optimises them in their own parameter group. A weighting
    never calls ``backward`` (see :func:`mtlkit.backward`), so it composes with any model,
    gradient aggregator and training scheme.

    Class attributes:
        requires_gradients: :meth:`combine` receives the per-task gradients (``jacobian``,
            ``[T, P]``, zero rows for tasks without labels), e.g. GradNorm.
        requires_post_step_losses: the trainer calls :meth:`after_step` with the task losses
            recomputed (without gradients) on the same batch after the optimizer step (FAMO).
        requires_all_tasks: the method weighs the tasks against each other within a step, so it
            is meaningless when a step trains one task (RLW, GLS, FAMO: the weight would always be
            1); training schedules with one task per step refuse it. Methods that need
            gradients (``requires_gradients``) are refused there too.

    Args:
        tasks: the tasks (or task names), in the order of the loss vector.
    """

    requires_gradients: ClassVar[bool] = False
    requires_post_step_losses: ClassVar[bool] = False
    requires_all_tasks: ClassVar[bool] = False

    def __init__(self, tasks: Sequence[Task] | Sequence[str]) -> None:
        super().__init__()
        names = tuple(t.name if isinstance(t, Task) else str(t) for t in tasks)
        if not names:
            raise ValueError(f"{type(self).__name__} needs at least one task.")
        if len(set(names)) != len(names):
            raise ValueError(f"{type(self).__name__}: task names must be unique; got {list(names)}.")
        self.task_names: tuple[str, ...] = names

    @property
    def num_tasks(self) -> int:
        return len(self.task_names)

    @abstractmethod
    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        """Combine ``losses [T]``; ``present [T]`` (bool) is False for tasks with no label in the batch."""

    def after_step(
        self, losses: Tensor | None, *, present: Tensor | None = None, state: TrainState | None = None
    ) -> None:
        """Called by the trainer after each optimizer step (``losses``: see ``requires_post_step_losses``)."""

    def forward(
        self,
        losses: Tensor,
        /,
        *,
        present: Tensor | None = None,
        state: TrainState | None = None,
        jacobian: Tensor | None = None,
    ) -> WeightedLoss:
        T = self.num_tasks
        if not isinstance(losses, Tensor) or losses.shape != (T,):
            shape = tuple(losses.shape) if isinstance(losses, Tensor) else type(losses).__name__
            raise ShapeError(
                f"{type(self).__name__} expects `losses` of shape ({T},) (one per task: "
                f"{', '.join(self.task_names)}); got {shape}."
            )
        if present is None:
            present = torch.ones(T, dtype=torch.bool, device=losses.device)
        elif present.shape != (T,):
            raise ShapeError(
                f"{type(self).__name__} expects `present` of shape ({T},); got {tuple(present.shape)}."
            )
        if self.requires_gradients and jacobian is None:
            raise ValueError(
                f"{type(self).__name__} needs the per-task gradients; call it through mtlkit.backward "
                "(or pass jacobian=...)."
            )
        return self.combine(losses, present.to(torch.bool), state or TrainState(), jacobian)

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}"
