"""CAGrad: conflict-averse gradient descent (Liu et al., 2021)."""

from __future__ import annotations

from typing import Literal

import numpy as np
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._solvers import (
    cagrad_weights,
    check_choice,
    check_float,
    gramian_of,
    to_device,
    to_host,
)
from mtlkit.state import TrainState

__all__ = ["CAGrad"]


class CAGrad(Aggregator):
    """Conflict-averse gradient: maximise the worst task improvement near the mean gradient.

    Paper: B. Liu, X. Liu, X. Jin, P. Stone, Q. Liu, "Conflict-Averse Gradient Descent for
    Multi-task Learning", NeurIPS 2021 (https://arxiv.org/abs/2110.14048).

    The update solves ``max_d min_i g_i . d`` subject to ``||d - g_0|| <= c ||g_0||``, with
    ``g_0`` the mean gradient. Through its dual (the paper's eq. 6):
    ``w* = argmin_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||`` with ``g_w = J^T w``, and
    ``d = g_0 + (c ||g_0|| / ||g_w*||) g_w*``, then divided by ``1 + c^2`` (``rescale=1``).

    The dual is solved on the ``T x T`` Gramian to machine precision without a generic
    solver: for a fixed auxiliary ``beta`` it is the min-norm point of the shifted rows
    ``g_i + beta g_0`` (solved exactly by Wolfe's algorithm, as for :class:`MGDA`), and the
    optimal ``beta`` is the unique crossing of ``||g_w(beta)|| = c ||g_0|| beta``, found by a
    bracketing regula-falsi search.

    Args:
        c: the paper's ``c >= 0``, the radius of the ball around ``g_0`` relative to ``||g_0||``
            (default 0.5, the authors' default; ``c = 0`` gives the mean gradient).
        rescale: as in the authors' code: 0 returns ``d``, 1 (default) ``d / (1 + c^2)``,
            2 ``d / (1 + c)``.

    Cost: one ``T x T`` Gramian, one device-to-host copy, and about 10 exact min-norm solves
    on shifted ``T x T`` Gramians (each warm-started from the previous one's support).

    Departures from the authors' code: (1) ``scipy.optimize.minimize`` (SLSQP from the uniform
    start, with ``+1e-8`` inside the square root and in ``lambda``'s denominator) is replaced by
    the exact solve above; when ``g_w* = 0`` (``||g_w*|| < 1e-7`` times the largest gradient
    norm: below that, the norm computed from the Gramian is round-off) the update is ``g_0``;
    that is the case whenever ``c > 1`` and 0 is in the gradients' convex hull (tested); (2) the result
    is on the scale of the **mean** gradient, as in the paper: the authors' training scripts
    multiply it by ``T`` ("to match the sum loss"), so use a ``T`` times larger learning rate
    to reproduce their runs.
    """

    def __init__(self, *, c: float = 0.5, rescale: Literal[0, 1, 2] = 1) -> None:
        super().__init__()
        self.c = check_float("CAGrad", "c", c, low=0.0)
        check_choice("CAGrad", "rescale", rescale, (0, 1, 2))
        self.rescale: Literal[0, 1, 2] = rescale

    def extra_repr(self) -> str:
        return f"c={self.c}, rescale={self.rescale}"

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        T = jacobian.shape[0]
        factor = (1.0, 1.0 / (1.0 + self.c**2), 1.0 / (1.0 + self.c))[self.rescale]
        if self.c == 0.0:
            w = np.full(T, 1.0 / T)
        else:
            G = to_host(gramian_of(jacobian))
            wstar, lam = cagrad_weights(G, self.c)
            w = np.full(T, 1.0 / T) + lam * wstar
        weights = to_device(w * factor, jacobian)
        return Aggregation(weights @ jacobian, weights)
