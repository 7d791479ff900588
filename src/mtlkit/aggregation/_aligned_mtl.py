"""Aligned-MTL: align the principal components of the task gradients (Senushkin et al., 2023)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._solvers import aligned_weights, check_choice, gramian_of, to_device, to_host
from mtlkit.state import TrainState

__all__ = ["AlignedMTL"]

ScaleMode = Literal["min", "median", "rmse"]


class AlignedMTL(Aggregator):
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
        super().__init__()
        check_choice("AlignedMTL", "scale_mode", scale_mode, ("min", "median", "rmse"))
        self.scale_mode: ScaleMode = scale_mode

    def extra_repr(self) -> str:
        return f"scale_mode={self.scale_mode!r}"

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        if jacobian.shape[0] == 1:
            return Aggregation(jacobian[0], torch.ones(1, dtype=jacobian.dtype, device=jacobian.device))
        G = gramian_of(jacobian)
        w = aligned_weights(to_host(G), eps=torch.finfo(torch.float32).eps, scale_mode=self.scale_mode)
        weights = to_device(w, jacobian)
        return Aggregation(weights @ jacobian, weights)
