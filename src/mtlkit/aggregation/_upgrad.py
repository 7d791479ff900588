"""UPGrad: mean of the projections of the task gradients onto the dual cone (Quinton and Rey, 2024)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._solvers import gramian_of, to_device, to_host, upgrad_weights
from mtlkit.state import TrainState

__all__ = ["UPGrad"]


class UPGrad(Aggregator):
    """Unconflicting projection of gradients.

    Paper: P. Quinton, V. Rey, "Jacobian Descent for Multi-Objective Optimization", 2024
    (https://arxiv.org/abs/2406.16232); reference implementation: TorchJD.

    Each row ``g_i`` is projected onto the dual cone of the rows ``{x : J x >= 0}`` and the
    projections are averaged: ``d = (1/T) sum_i pi_J(g_i)``. By the paper's Proposition 1,
    ``pi_J(J^T e_i) = J^T v_i`` with ``v_i = argmin_{v >= e_i} v^T G v`` (``G = J J^T``), so the
    weights are ``w = (1/T) sum_i v_i`` and ``d = J^T w``. ``d`` has a non-negative inner product
    with every row (it lies in the dual cone), and ``d = mean`` when no two rows conflict.

    Each ``v_i`` is computed **exactly** by a Lawson-Hanson active-set method on the Gramian
    (a non-negative least-squares problem in ``v - e_i``), written for this library; it
    handles singular Gramians (identical or linearly dependent rows) without regularisation.

    Hyper-parameters: none (TorchJD's ``pref_vector`` is fixed to uniform, the paper's UPGrad).

    Cost: one ``T x T`` Gramian, one device-to-host copy, ``T`` small active-set solves
    (each a few ``O(T^3)`` steps).

    Departures from the reference implementation (TorchJD, and LibMTL's copy): they normalise
    ``G`` by its trace, add ``1e-4 I`` and call the ``quadprog`` solver, which perturbs the
    solution; here the unregularised problem is solved exactly (after scaling ``G`` by its
    largest diagonal entry, which does not change the solution).
    """

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        T = jacobian.shape[0]
        if T == 1:
            return Aggregation(jacobian[0], torch.ones(1, dtype=jacobian.dtype, device=jacobian.device))
        weights = to_device(upgrad_weights(to_host(gramian_of(jacobian))), jacobian)
        return Aggregation(weights @ jacobian, weights)
