"""MGDA: the min-norm point of the convex hull of the task gradients (Sener and Koltun, 2018)."""

from __future__ import annotations

import numpy as np

from mtlkit.aggregation._solvers import Precision, min_norm_simplex
from mtlkit.aggregation._weighting import GramianWeightedAggregator, GramianWeighting

__all__ = ["MGDA", "MGDAWeighting"]


class MGDAWeighting(GramianWeighting):
    """``w* = argmin_{w >= 0, sum w = 1} w^T G w`` (exact, Wolfe's algorithm)."""

    def __call__(self, gramian: np.ndarray, /, *, precision: Precision) -> np.ndarray:
        return min_norm_simplex(gramian)


class MGDA(GramianWeightedAggregator):
    """Multiple-gradient descent: the minimum-norm convex combination of the task gradients.

    Paper: O. Sener, V. Koltun, "Multi-Task Learning as Multi-Objective Optimization",
    NeurIPS 2018 (https://arxiv.org/abs/1810.04650), after Désidéri's MGDA (2012).

    The update is ``d = J^T w*`` with ``w* = argmin_{w >= 0, sum w = 1} ||J^T w||^2``: the point
    of the convex hull of the rows closest to the origin. ``d`` has a non-negative inner product
    with every row (``g_i . d >= ||d||^2``), so no task's loss increases to first order; ``d = 0``
    exactly when the rows are Pareto-stationary. With ``gradient_target="representation"``
    the rows are gradients w.r.t. the shared representation: the paper's MGDA-UB.

    The problem is solved **exactly** on the ``T x T`` Gramian with Wolfe's min-norm-point
    algorithm (finite active-set method, float64 on the CPU), not with Frank-Wolfe iterations;
    its stopping test is relative to the terms it compares and its linear solves are scaled
    per row, so rows whose norms differ by 1e12 give the min-norm point to relative precision.

    Hyper-parameters: none.

    Cost: one ``T x T`` Gramian on the device, one device-to-host copy of it, and a few
    ``O(T^3)`` solves (at most a few ``T`` active-set steps).

    Departures from the authors' code (``MinNormSolver``): (1) the exact solution replaces
    their closed form for 2 tasks plus at most 250 Frank-Wolfe steps; (2) their optional
    gradient normalisations (``l2``, ``loss``, ``loss+``) are not offered (scale the losses with
    a loss weighting instead); (3) when every row is zero the weights are uniform.
    Weights: ``w*`` (they sum to 1; the authors multiply them by ``T`` in some scripts).
    """

    def __init__(self) -> None:
        super().__init__(MGDAWeighting())
