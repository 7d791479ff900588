"""CAGrad: conflict-averse gradient descent (Liu et al., 2021)."""

from __future__ import annotations

from typing import Literal

import numpy as np

from mtlkit.aggregation._checks import check_choice, check_float
from mtlkit.aggregation._solvers import Precision, cagrad_weights
from mtlkit.aggregation._weighting import GramianWeightedAggregator, GramianWeighting

__all__ = ["CAGrad", "CAGradWeighting"]


class CAGradWeighting(GramianWeighting):
    """CAGrad's ``v`` (``d = J^T v``) for radius ``c``, times the ``rescale`` factor."""

    def __init__(self, c: float, rescale: Literal[0, 1, 2]) -> None:
        self.c = c
        self.rescale: Literal[0, 1, 2] = rescale
        self.factor = (1.0, 1.0 / (1.0 + c**2), 1.0 / (1.0 + c))[rescale]

    def extra_repr(self) -> str:
        return f"c={self.c}, rescale={self.rescale}"

    def fixed(self, num_rows: int) -> np.ndarray | None:
        if self.c == 0.0:  # the mean
            return np.full(num_rows, self.factor / num_rows)
        if num_rows == 1:  # g0 + c ||g0|| g0 / ||g0||
            return np.full(1, (1.0 + self.c) * self.factor)
        return None

    def __call__(self, gramian: np.ndarray, /, *, precision: Precision) -> np.ndarray:
        return cagrad_weights(gramian, self.c, precision) * self.factor


class CAGrad(GramianWeightedAggregator):
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

    Pareto-stationary rows (0 in their convex hull) with ``c >= 1``: the optimum
    ``max_d min_i g_i . d`` is 0, attained by ``d = 0`` (inside the ball), while the mean usually
    conflicts with a task; the paper's formula is undefined there (``g_w* = 0``), and the update
    is 0, as TorchJD's. "0 in the hull" means MGDA's min-norm point is shorter than
    ``10 sqrt(eps)`` times the longest row (``eps`` of the Jacobian's dtype; a norm computed from
    a Gramian is exact to about ``sqrt(eps)``). With ``c < 1`` and ``g_w* = 0`` the update is ``g_0``.

    Departures from the authors' code: (1) ``scipy.optimize.minimize`` (SLSQP from the uniform
    start, with ``+1e-8`` inside the square root and in ``lambda``'s denominator) is replaced by
    the exact solve above; (2) the update at Pareto-stationary rows with ``c >= 1`` is 0 (theirs
    depends on where SLSQP stops, with ``1e-8`` added to ``||g_w||``); (3) the result
    is on the scale of the **mean** gradient, as in the paper: the authors' training scripts
    multiply it by ``T`` ("to match the sum loss"), so use a ``T`` times larger learning rate
    to reproduce their runs.
    """

    def __init__(self, *, c: float = 0.5, rescale: Literal[0, 1, 2] = 1) -> None:
        c = check_float("CAGrad", "c", c, low=0.0)
        check_choice("CAGrad", "rescale", rescale, (0, 1, 2))
        super().__init__(CAGradWeighting(c, rescale))
        self.c = c
        self.rescale: Literal[0, 1, 2] = rescale
