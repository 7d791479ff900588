"""The typed middle layer of the Gramian-based aggregators.

A :class:`GramianWeighting` is a pure function ``G`` ``[T, T]`` -> weights ``[T]`` (numpy,
float64, on the host); :class:`GramianWeightedAggregator` wraps one into an
:class:`~mtlkit.aggregation.Aggregator`: it computes the Gramian on the Jacobian's device,
copies it to the host once, calls the weighting, moves the weights back (device and dtype of
the Jacobian), returns ``d = J^T w`` and reports ``w``. Weightings that need no Gramian for a
number of rows (the ``T = 1`` shortcut, CAGrad with ``c = 0``) say so in :meth:`GramianWeighting.fixed`,
and the aggregator then never synchronises with the device.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cache

import numpy as np
import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._device import gramian_of, to_device, to_host
from mtlkit.aggregation._solvers import Precision
from mtlkit.state import TrainState

__all__ = ["GramianWeightedAggregator", "GramianWeighting", "precision_of"]


@cache
def precision_of(dtype: torch.dtype) -> Precision:
    """The :class:`Precision` of a Gramian computed by :func:`gramian_of` for a ``dtype`` Jacobian
    (half precisions are accumulated in float32)."""
    if dtype in (torch.float16, torch.bfloat16) or not dtype.is_floating_point:
        dtype = torch.float32 if dtype.is_floating_point else torch.float64
    info = torch.finfo(dtype)
    return Precision(eps=float(info.eps), tiny=float(info.tiny))


class GramianWeighting(ABC):
    """Row weights from the Gramian ``G = J J^T`` alone (pure: no state, no device, no torch)."""

    def fixed(self, num_rows: int) -> np.ndarray | None:
        """Weights that need no Gramian for ``num_rows`` rows, else ``None`` (default: ``[1]`` for one row)."""
        return np.ones(1) if num_rows == 1 else None

    @abstractmethod
    def __call__(self, gramian: np.ndarray, /, *, precision: Precision) -> np.ndarray:
        """``[T]`` float64 weights for the ``[T, T]`` float64 ``gramian`` computed in ``precision``."""

    def extra_repr(self) -> str:
        """The hyper-parameters, for the aggregator's ``repr``."""
        return ""


class GramianWeightedAggregator(Aggregator):
    """``d = J^T w`` with ``w = weighting(J J^T)``: owns the ``T = 1`` shortcut (the row itself,
    when the weighting's fixed weight is 1), the one device-to-host copy of the Gramian and the
    weights' way back, and reports ``w``."""

    def __init__(self, weighting: GramianWeighting) -> None:
        super().__init__()
        self.weighting = weighting

    def extra_repr(self) -> str:
        return self.weighting.extra_repr()

    def host_weights(self, jacobian: Tensor) -> np.ndarray:
        """The weighting's ``[K]`` float64 weights for ``jacobian`` ``[K, P]``, on the host."""
        w = self.weighting.fixed(jacobian.shape[0])
        if w is None:
            w = self.weighting(to_host(gramian_of(jacobian)), precision=precision_of(jacobian.dtype))
        return w

    def weights(self, jacobian: Tensor) -> Tensor:
        """:meth:`host_weights` on the Jacobian's device and in its dtype."""
        return to_device(self.host_weights(jacobian), jacobian)

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        if jacobian.shape[0] == 1:
            fixed = self.weighting.fixed(1)
            if fixed is not None and fixed[0] == 1.0:  # the row itself: no pass over P
                return Aggregation(jacobian[0], torch.ones(1, dtype=jacobian.dtype, device=jacobian.device))
        w = self.weights(jacobian)
        return Aggregation(w @ jacobian, w)
