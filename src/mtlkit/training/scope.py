"""What a step that trains only some of the tasks may change (one-task-per-step schedules).

Such a step must leave everything that belongs only to the other tasks as it was: their heads
(and, with Adam, their moment estimates) and their rows of the loss weighting's parameters.
Both helpers rely only on the graph and on the weighting's ``[T, ...]`` parameter layout, so
they work for every model and every loss weighting.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from mtlkit.losses import TaskLosses

__all__ = ["detach_untrained", "frozen_rows"]


def detach_untrained(tl: TaskLosses, trained: Sequence[bool]) -> TaskLosses:
    """Cut the losses of untrained tasks out of the graph.

    An unlabelled task's loss is ``0 * pred.sum()``: it keeps the graph, so every head would get a
    zero gradient and optimizers with momentum or weight decay would still move it. Detached, the
    parameters that only other tasks reach get no gradient at all (``None``) and optimizers skip
    them, state included. Parameters that the trained task's loss reaches (shared layers, or
    another task's tower it depends on, as in ESMM) are trained as usual.
    """
    items = tuple(item if keep else item.detach() for item, keep in zip(tl.items, trained))
    return TaskLosses(torch.stack(items), tl.counts, items)


@contextmanager
def frozen_rows(module: nn.Module, frozen: Sequence[int], num_tasks: int) -> Iterator[None]:
    """Parameters of ``module`` with one row per task (shape ``[T, ...]``) keep rows ``frozen``.

    For loss weightings with per-task learnable parameters (uncertainty's log-variances,
    IMTL-L's scales): an untrained task's row has a zero gradient, but a shared optimizer with
    momentum would still move it; its value is restored after the optimizer step.
    """
    params = [p for p in module.parameters() if p.requires_grad and p.ndim >= 1 and p.shape[0] == num_tasks]
    if not frozen or not params:
        yield
        return
    saved = [
        (p, idx, p.detach()[idx].clone()) for p in params for idx in [torch.tensor(frozen, device=p.device)]
    ]
    yield
    with torch.no_grad():
        for p, idx, value in saved:
            p[idx] = value
