"""Aligned-MTL: align the principal components of the task gradients (Senushkin et al., 2023)."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from mtlkit.aggregation._checks import check_choice
from mtlkit.aggregation._solvers import Precision, aligned_weights
from mtlkit.aggregation._weighting import GramianWeightedAggregator, GramianWeighting

__all__ = ["AlignedMTL", "AlignedMTLWeighting"]

ScaleMode = Literal["min", "median", "rmse"]

_EPS = float(torch.finfo(torch.float32).eps)  # the authors' rank rule uses float32's eps whatever the dtype


class AlignedMTLWeighting(GramianWeighting):
    """``w = sigma V Lambda^{-1/2} V^T 1`` from ``G = V Lambda V^T`` (rank-truncated)."""

    def __init__(self, scale_mode: ScaleMode = "min") -> None:
        self.scale_mode: ScaleMode = scale_mode

    def extra_repr(self) -> str:
        return f"scale_mode={self.scale_mode!r}"

    def __call__(self, gramian: np.ndarray, /, *, precision: Precision) -> np.ndarray:
        return aligned_weights(gramian, eps=_EPS, scale_mode=self.scale_mode)


class AlignedMTL(GramianWeightedAggregator):
    """Aligned-MTL: make the gradient system's condition number 1, then sum.

    Paper: D. Senushkin, N. Patakin, A. Kuznetsov, A. Konushin, "Independent Component
    Alignment for Multi-Task Learning", CVPR 2023 (https://arxiv.org/abs/2305.19000).

    With ``G = J J^T = V Lambda V^T`` (rank ``R``), the rows are replaced by
    ``J_hat = sigma (V Lambda^{-1/2} V^T) J`` (the Procrustes solution: an orthogonal system with
    equal singular values ``sigma``) and summed: ``d = J^T w`` with
    ``w = sigma V Lambda^{-1/2} V^T 1``. Eigenvalues below ``max(Lambda) * T * eps`` are dropped,
    with float32's ``eps`` whatever the dtype, as in the authors' code (``torch.finfo().eps``).

    Args:
        scale_mode: ``sigma^2`` is the smallest kept eigenvalue (``"min"``, default, the paper's
            choice), their median (``"median"``, the lower median as ``torch.median``) or their
            mean (``"rmse"``).

    Cost: one ``T x T`` Gramian, one device-to-host copy, one ``T x T`` eigendecomposition.

    Departures from the authors' code: none in the formula; the eigendecomposition runs in
    float64 on the CPU (theirs in the Jacobian's dtype on its device). All-zero gradients give
    zero weights (theirs: NaN).
    """

    def __init__(self, *, scale_mode: ScaleMode = "min") -> None:
        check_choice("AlignedMTL", "scale_mode", scale_mode, ("min", "median", "rmse"))
        super().__init__(AlignedMTLWeighting(scale_mode))
        self.scale_mode: ScaleMode = scale_mode
