"""IMTL-G: equal projections of the update onto every unit task gradient (Liu et al., 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._solvers import gramian_of, imtl_g_weights, to_device, to_host
from mtlkit.state import TrainState

__all__ = ["IMTLG"]


class IMTLG(Aggregator):
    """Impartial multi-task learning, gradient balance (IMTL-G).

    Paper: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao, W. Zhang,
    "Towards Impartial Multi-task Learning", ICLR 2021 (https://openreview.net/forum?id=IMPnRXEWpvr).

    Finds ``alpha`` with ``sum(alpha) = 1`` such that ``d = J^T alpha`` has the same projection
    onto every unit task gradient ``u_i = g_i / ||g_i||`` (``d . u_i = d . u_j``): the closed
    form ``alpha_{2:T} = g_1 U^T (D U^T)^{-1}``, ``D = [g_1 - g_i]``, ``U = [u_1 - u_i]``. It is
    solved here on the ``T x T`` Gramian as the equivalent, task-symmetric linear system
    ``[N G, -1; 1^T, 0] [alpha; c] = [0; 1]`` with ``N = diag(1 / ||g_i||)``.

    Hyper-parameters: none. Only the gradient part of IMTL (IMTL-G) is implemented; IMTL-L's
    learnable loss scales are a loss weighting, not an aggregator.

    Cost: one ``T x T`` Gramian, one device-to-host copy, one ``(T+1) x (T+1)`` solve.

    Departures from the authors' formulation and LibMTL/Nash-MTL's code: (1) singular systems
    (identical or linearly dependent gradients) take the minimum-norm least-squares solution
    instead of inverting ``D U^T + 1e-8 I``; (2) a zero task gradient (undefined direction) gets
    weight 0 instead of producing NaN; all-zero gradients give uniform weights.
    """

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        if jacobian.shape[0] == 1:
            return Aggregation(jacobian[0], torch.ones(1, dtype=jacobian.dtype, device=jacobian.device))
        alpha = to_device(imtl_g_weights(to_host(gramian_of(jacobian))), jacobian)
        return Aggregation(alpha @ jacobian, alpha)
