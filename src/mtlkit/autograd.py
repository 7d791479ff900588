"""The one place in mtlkit that calls ``backward``.

Models, tasks and balancing methods only build tensors; :func:`backward` turns task losses
into ``.grad`` on the parameters. The Trainer calls it, and so can a hand-written loop::

    out = model(x)
    tl = mtlkit.task_losses(tasks, out, targets)
    optimizer.zero_grad()
    mtlkit.backward(tl.losses, weighting=weighting, present=tl.present)
    optimizer.step()
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from mtlkit.state import TrainState
from mtlkit.weighting._base import LossWeighting
from mtlkit.weighting.basic import EqualWeighting

__all__ = ["BackwardResult", "backward"]


class BackwardResult(NamedTuple):
    """What a backward step used, detached, for logging.

    Attributes:
        total: the differentiated scalar.
        weights: ``[T]`` task weights.
        losses: ``[T]`` task losses.
    """

    total: Tensor
    weights: Tensor
    losses: Tensor


def _as_vector(
    losses: Mapping[str, Tensor] | Tensor | Sequence[Tensor], names: Sequence[str] | None
) -> tuple[Tensor, tuple[str, ...] | None, Tensor | None]:
    if isinstance(losses, Tensor):
        return losses, tuple(names) if names else None, None
    if isinstance(losses, Mapping):
        order = tuple(names) if names else tuple(losses)
        unknown = [k for k in losses if k not in order]
        if unknown:
            raise KeyError(f"losses name tasks the weighting does not know: {unknown}; tasks: {list(order)}.")
        ref = next(iter(losses.values()))
        vec = torch.stack([losses[k].reshape(()) if k in losses else ref.new_zeros(()) for k in order])
        present = torch.tensor([k in losses for k in order], device=vec.device)
        return vec, order, present
    vec = torch.stack([t.reshape(()) for t in losses])
    return vec, tuple(names) if names else None, None


def backward(
    losses: Mapping[str, Tensor] | Tensor | Sequence[Tensor],
    /,
    *,
    weighting: LossWeighting | None = None,
    present: Tensor | None = None,
    state: TrainState | None = None,
) -> BackwardResult:
    """Differentiate the balanced multi-task objective and accumulate ``.grad``.

    Args:
        losses: task losses as a ``[T]`` tensor ordered like ``weighting.task_names``, a
            sequence of scalars, or a ``{task: loss}`` dict (absent tasks count as unlabelled).
        weighting: a :class:`~mtlkit.weighting.LossWeighting` (default: equal weights, i.e. the sum).
        present: ``[T]`` bool, False for tasks without a label in the batch (default: all True).
        state: training progress for methods that depend on it.

    Returns:
        :class:`BackwardResult` with the detached total, weights and losses.
    """
    names = weighting.task_names if weighting is not None else None
    vec, order, dict_present = _as_vector(losses, names)
    if weighting is None:
        weighting = EqualWeighting(order or [f"task{i}" for i in range(vec.shape[0])])
    if present is None:
        present = dict_present
    out = weighting(vec, present=present, state=state)
    if out.total.requires_grad:
        out.total.backward()
    return BackwardResult(out.total.detach(), out.weights.detach(), vec.detach())
