"""The gradient-aggregation interface: Jacobian ``[T, P]`` -> one update direction ``[P]``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from mtlkit.errors import ShapeError
from mtlkit.state import TrainState

__all__ = ["Aggregation", "Aggregator", "gramian"]


class Aggregation(NamedTuple):
    """Result of an aggregator.

    Attributes:
        vector: the combined gradient ``[P]``.
        weights: ``[T]`` when the result is a weighted sum of the rows (MGDA, IMTL-G, Nash-MTL...),
            else ``None`` (PCGrad, GradDrop...). Detached, for logging.
    """

    vector: Tensor
    weights: Tensor | None


class Aggregator(nn.Module, ABC):
    """Combines per-task gradients (the rows of a Jacobian) into one update direction.

    ``aggregator(jacobian)`` returns the combined gradient ``[P]``; :meth:`aggregate` also
    returns the row weights when there are any. Rows are the gradients of the (already
    weighted) task losses with respect to the shared parameters or the shared representation;
    tasks without labels in a batch are removed before the call, so the number of rows can be
    smaller than the number of tasks: ``rows`` (a CPU long tensor) then says which task each
    row belongs to, for methods that keep per-task state (``None`` means rows ``0..K-1``).

    The Jacobian is valid during the call only: the Trainer writes every step's Jacobian into
    the same memory (:class:`mtlkit.autograd.GradientWorkspace`), so a method copies what it
    keeps for later steps (as DB-MTL's EMA does) and never stores the tensor or a view of it.

    Class attributes:
        loss_transform: ``"log"`` when the method differentiates ``log L_k`` instead of ``L_k``
            (DB-MTL); :func:`mtlkit.backward` applies it by scaling row ``k`` by ``1 / L_k``.
        stochastic: the method draws random numbers (from ``state.generator``).
        requires_all_tasks: the method combines several tasks' gradients of the same step, so
            training schedules that train one task per step refuse it.
    """

    loss_transform: ClassVar[Literal["identity", "log"]] = "identity"
    stochastic: ClassVar[bool] = False
    requires_all_tasks: ClassVar[bool] = True

    def forward(
        self, jacobian: Tensor, /, *, state: TrainState | None = None, rows: Tensor | None = None
    ) -> Tensor:
        return self.aggregate(jacobian, state=state, rows=rows).vector

    def aggregate(
        self, jacobian: Tensor, /, *, state: TrainState | None = None, rows: Tensor | None = None
    ) -> Aggregation:
        """Validate ``jacobian`` ``[K, P]`` and combine it."""
        if not isinstance(jacobian, Tensor) or jacobian.ndim != 2 or jacobian.shape[0] < 1:
            shape = tuple(jacobian.shape) if isinstance(jacobian, Tensor) else type(jacobian).__name__
            raise ShapeError(
                f"{type(self).__name__} expects a Jacobian of shape (T, P) with T >= 1 task gradients as rows; "
                f"got {shape}."
            )
        if rows is None:
            rows = torch.arange(jacobian.shape[0])
        elif rows.shape != (jacobian.shape[0],):
            raise ShapeError(
                f"{type(self).__name__}: `rows` must name one task per Jacobian row ({jacobian.shape[0]}); "
                f"got shape {tuple(rows.shape)}."
            )
        return self.combine(jacobian, state or TrainState(), rows)

    @abstractmethod
    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        """Combine the rows of ``jacobian`` ``[K, P]``; ``rows[k]`` is the task index of row ``k``."""


def gramian(jacobian: Tensor) -> Tensor:
    """``J J^T`` ``[T, T]`` (computed in the Jacobian's dtype and device)."""
    return jacobian @ jacobian.T


class Mean(Aggregator):
    """The mean of the task gradients (plain linear scalarisation, the reference point)."""

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        T = jacobian.shape[0]
        w = torch.full((T,), 1.0 / T, dtype=jacobian.dtype, device=jacobian.device)
        return Aggregation(w @ jacobian, w)


class Sum(Aggregator):
    """The sum of the task gradients: identical to backpropagating the summed loss."""

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        w = torch.ones(jacobian.shape[0], dtype=jacobian.dtype, device=jacobian.device)
        return Aggregation(jacobian.sum(0), w)
