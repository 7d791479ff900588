"""PCGrad: project conflicting gradients (Yu et al., 2020)."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._device import gramian_of, random_orders, to_device
from mtlkit.state import TrainState

__all__ = ["PCGrad"]


class PCGrad(Aggregator):
    """Gradient surgery: remove from each task gradient its conflicting components.

    Paper: T. Yu, S. Kumar, A. Gupta, S. Levine, K. Hausman, C. Finn, "Gradient Surgery for
    Multi-Task Learning", NeurIPS 2020 (https://arxiv.org/abs/2001.06782).

    For each task ``i``, ``g_i^PC`` starts at ``g_i``; for each other task ``j`` in a random
    order, if ``g_i^PC . g_j < 0`` it is projected onto the normal plane of ``g_j``:
    ``g_i^PC -= (g_i^PC . g_j / ||g_j||^2) g_j``. The update is ``sum_i g_i^PC`` (the paper's
    Algorithm 1). Every ``g_i^PC`` stays in the span of the rows, so the whole procedure runs on
    the ``T x T`` Gramian with a coefficient matrix ``C`` (``g_i^PC = sum_k C_ik g_k``); the
    result is the weighted sum ``J^T w`` with ``w = C^T 1``. With two tasks the result never has a
    negative inner product with either task gradient.

    Randomness: one random order of the other tasks per task and call, drawn from
    ``state.generator`` (deterministic for ``T <= 2``).

    Hyper-parameters: none.

    Cost: one ``T x T`` Gramian on the device, one device-to-host copy of it, then ``T - 1``
    vectorised ``O(T^2)`` steps in float64 on the host (a few microseconds each, where the same
    loop in torch costs a few dispatches or kernel launches per step).

    Departures from the authors' code: (1) their TensorFlow code shuffles the tasks once per
    step for all tasks and includes ``j = i``; the paper's per-task random order over
    ``j != i`` is used (as in the PyTorch ports); (2) the projections are computed through the
    Gramian instead of on ``P``-sized vectors (mathematically identical).
    """

    stochastic = True

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        T = jacobian.shape[0]
        if T == 1:
            return Aggregation(jacobian[0], torch.ones(1, dtype=jacobian.dtype, device=jacobian.device))
        G = gramian_of(jacobian).detach().to("cpu", torch.float64).numpy()
        sq = np.maximum(np.diag(G), np.finfo(np.float64).tiny)
        orders = random_orders(T, state.generator).numpy()
        C = np.eye(T)  # g_i^PC = sum_k C[i, k] g_k
        ar = np.arange(T)
        for s in range(T - 1):
            j = orders[:, s]
            inner = (C * G[j]).sum(1)  # g_i^PC . g_j for every i at once
            C[ar, j] -= np.where(inner < 0, inner / sq[j], 0.0)
        w = to_device(C.sum(0), jacobian)
        return Aggregation(w @ jacobian, w)
