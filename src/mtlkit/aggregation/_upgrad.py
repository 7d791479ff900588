"""UPGrad: mean of the projections of the task gradients onto the dual cone (Quinton and Rey, 2024)."""

from __future__ import annotations

import numpy as np

from mtlkit.aggregation._solvers import Precision, upgrad_weights
from mtlkit.aggregation._weighting import GramianWeightedAggregator, GramianWeighting

__all__ = ["UPGrad", "UPGradWeighting"]


class UPGradWeighting(GramianWeighting):
    """``w = (1/T) sum_i v_i``, ``v_i = argmin_{v >= e_i} v^T G v`` (exact active sets)."""

    def __call__(self, gramian: np.ndarray, /, *, precision: Precision) -> np.ndarray:
        return upgrad_weights(gramian, precision)


class UPGrad(GramianWeightedAggregator):
    """Unconflicting projection of gradients.

    Paper: P. Quinton, V. Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
    (https://arxiv.org/abs/2406.16232); reference implementation: TorchJD.

    Each row ``g_i`` is projected onto the dual cone of the rows ``{x : J x >= 0}`` and the
    projections are averaged: ``d = (1/T) sum_i pi_J(g_i)``. By the paper's Proposition 1,
    ``pi_J(J^T e_i) = J^T v_i`` with ``v_i = argmin_{v >= e_i} v^T G v`` (``G = J J^T``), so the
    weights are ``w = (1/T) sum_i v_i`` and ``d = J^T w``. ``d`` has a non-negative inner product
    with every row (it lies in the dual cone), and ``d = mean`` when no two rows conflict.

    Each ``v_i`` is computed **exactly** by a Lawson-Hanson active-set method (a non-negative
    least-squares problem in ``v - e_i``), written for this library; it handles singular
    Gramians (identical or linearly dependent rows) without regularisation. The projections do
    not depend on the rows' lengths, so the solves run on the unit-diagonal (cosine) Gramian:
    a row 1e12 times shorter than another is projected as accurately as an equal one.

    Hyper-parameters: none (TorchJD's ``pref_vector`` is fixed to uniform, the paper's UPGrad).

    Cost: one ``T x T`` Gramian, one device-to-host copy, ``T`` small active-set solves
    (each a few ``O(T^3)`` steps).

    Departures from the reference implementation (TorchJD, and LibMTL's copy): they normalise
    ``G`` by its trace, add ``1e-4 I`` and call the ``quadprog`` solver, which perturbs the
    solution; here the unregularised problem is solved exactly.
    """

    def __init__(self) -> None:
        super().__init__(UPGradWeighting())
