"""IMTL-G: equal projections of the update onto every unit task gradient (Liu et al., 2021)."""

from __future__ import annotations

import numpy as np

from mtlkit.aggregation._solvers import Precision, imtl_g_weights
from mtlkit.aggregation._weighting import GramianWeightedAggregator, GramianWeighting

__all__ = ["IMTLG", "IMTLGWeighting"]


class IMTLGWeighting(GramianWeighting):
    """``alpha`` with ``sum(alpha) = 1`` and equal projections of ``J^T alpha`` on the unit rows."""

    def __call__(self, gramian: np.ndarray, /, *, precision: Precision) -> np.ndarray:
        return imtl_g_weights(gramian, precision)


class IMTLG(GramianWeightedAggregator):
    """Impartial multi-task learning, gradient balance (IMTL-G).

    Paper: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao, W. Zhang,
    "Towards Impartial Multi-task Learning", ICLR 2021 (https://openreview.net/forum?id=IMPnRXEWpvr).

    Finds ``alpha`` with ``sum(alpha) = 1`` such that ``d = J^T alpha`` has the same projection
    onto every unit task gradient ``u_i = g_i / ||g_i||`` (``d . u_i = d . u_j``): the closed
    form ``alpha_{2:T} = g_1 U^T (D U^T)^{-1}``, ``D = [g_1 - g_i]``, ``U = [u_1 - u_i]``. It is
    solved here on the ``T x T`` Gramian as an equivalent, task-symmetric linear system in the
    weights of the unit rows (``alpha_i = b_i / ||g_i||``, ``C b = t 1`` with ``C`` the cosine
    Gramian, ``sum alpha = 1``), which keeps its accuracy when the rows' norms differ by 1e12.

    Hyper-parameters: none. Only the gradient part of IMTL (IMTL-G) is implemented; IMTL-L's
    learnable loss scales are a loss weighting, not an aggregator.

    Cost: one ``T x T`` Gramian, one device-to-host copy, one ``(T+1) x (T+1)`` solve.

    Departures from the authors' formulation and LibMTL/Nash-MTL's code: (1) singular systems
    (identical or linearly dependent gradients) take the minimum-norm least-squares solution
    instead of inverting ``D U^T + 1e-8 I``; (2) a zero task gradient (undefined direction) gets
    weight 0 instead of producing NaN; all-zero gradients give uniform weights.
    """

    def __init__(self) -> None:
        super().__init__(IMTLGWeighting())
