"""MGDA: the min-norm point of the convex hull of the task gradients (Sener and Koltun, 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._solvers import gramian_of, min_norm_simplex, to_device, to_host
from mtlkit.state import TrainState

__all__ = ["MGDA"]


class MGDA(Aggregator):
    """Multiple-gradient descent: the minimum-norm convex combination of the task gradients.

    Paper: O. Sener, V. Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018 (https://arxiv.org/abs/1810.04650), after Désidéri's MGDA (2012).

    The update is ``d = J^T w*`` with ``w* = argmin_{w >= 0, sum w = 1} ||J^T w||^2``: the point
    of the convex hull of the rows closest to the origin. ``d`` has a non-negative inner product
    with every row (``g_i . d >= ||d||^2``), so no task's loss increases to first order; ``d = 0``
    exactly when the rows are Pareto-stationary. With ``gradient_target="representation"``
    the rows are gradients w.r.t. the shared representation: the paper's MGDA-UB.

    The problem is solved **exactly** on the ``T x T`` Gramian with Wolfe's min-norm-point
    algorithm (finite active-set method, float64 on the CPU), not with Frank-Wolfe iterations.

    Hyper-parameters: none.

    Cost: one ``T x T`` Gramian on the device, one device-to-host copy of it, and a few
    ``O(T^3)`` solves (at most a few ``T`` active-set steps).

    Departures from the authors' code (``MinNormSolver``): (1) the exact solution replaces
    their closed form for 2 tasks plus at most 250 Frank-Wolfe steps; (2) their optional
    gradient normalisations (``l2``, ``loss``, ``loss+``) are not offered (scale the losses with
    a loss weighting instead); (3) when every row is zero the weights are uniform.
    Weights: ``w*`` (they sum to 1; the authors multiply them by ``T`` in some scripts).
    """

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        if jacobian.shape[0] == 1:
            return Aggregation(jacobian[0], torch.ones(1, dtype=jacobian.dtype, device=jacobian.device))
        w = to_device(min_norm_simplex(to_host(gramian_of(jacobian))), jacobian)
        return Aggregation(w @ jacobian, w)
