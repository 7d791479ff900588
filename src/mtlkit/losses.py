"""Per-task losses of a batch, as one vector ordered like the tasks."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from mtlkit.errors import ShapeError
from mtlkit.tasks import Task

__all__ = ["TaskLosses", "task_losses"]


class TaskLosses(NamedTuple):
    """``losses [T]`` (differentiable), ``counts [T]`` (labelled elements per task) and ``items``,
    the same losses as separate scalars.

    Pass the whole ``TaskLosses`` to :func:`mtlkit.backward`: gradient-level methods then take
    each task's gradient from its own scalar, so a task's backward pass never walks through the
    other tasks' graphs (differentiating ``losses[k]`` of the stacked vector would).
    """

    losses: Tensor
    counts: Tensor
    items: tuple[Tensor, ...] = ()

    @property
    def present(self) -> Tensor:
        """``[T]`` bool: the task had at least one label in the batch."""
        return self.counts > 0


def task_losses(
    tasks: Sequence[Task],
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None = None,
) -> TaskLosses:
    """Masked mean loss of every task on one batch.

    A task whose targets are absent from ``targets`` (e.g. a batch from another task's
    dataset), and an evaluation-only task (``Task(train=False)``), gets loss 0 and count 0, so
    weightings and aggregators treat it as absent from the batch. No host synchronisation
    happens here.

    Raises:
        ShapeError: a model output is missing or has the wrong shape for its task.
    """
    losses, counts = [], []
    ref: Tensor | None = None
    for task in tasks:
        if task.output_key not in outputs:
            raise ShapeError(
                f"Model output is missing task {task.output_key!r} (got keys: "
                f"{', '.join(map(repr, sorted(outputs)))}). Check Task(output=...) or the model's tasks."
            )
        pred = outputs[task.output_key]
        ref = pred if ref is None else ref
        if task.target_key not in targets or not task.train:
            zero = pred.sum() * 0.0  # keeps the graph (and device/dtype) without touching labels
            losses.append(zero)
            counts.append(torch.zeros((), dtype=zero.dtype, device=zero.device))
            continue
        mask = masks.get(task.name) if masks else None
        loss, count = task.compute_loss(pred, targets[task.target_key], mask)
        losses.append(loss)
        counts.append(count.to(loss.dtype))
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in losses))
    items = tuple(t.to(dtype) for t in losses)
    return TaskLosses(torch.stack(items), torch.stack([c.to(dtype) for c in counts]), items)
