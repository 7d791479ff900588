"""GradVac: gradient vaccine toward EMA target similarities (Wang et al., 2021)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._checks import check_float, check_int
from mtlkit.aggregation._device import gramian_of, grow_square, random_orders, to_device, work_dtype
from mtlkit.state import TrainState

__all__ = ["GradVac"]

_EDGE = 1e-8  # keeps 1 - phi_hat^2 > 0 in the correction (phi_hat -> 1 needs an infinite step)


class GradVac(Aggregator):
    """Gradient vaccine: raise each pair's gradient similarity to an adaptive target.

    Paper: Z. Wang, Y. Tsvetkov, O. Firat, Y. Cao, "Gradient Vaccine: Investigating and
    Improving Multi-task Optimization in Massively Multilingual Models", ICLR 2021
    (https://arxiv.org/abs/2010.05874).

    Each task pair keeps a target cosine similarity ``phi_hat_ij`` (an EMA, starting at 0). For
    each task ``i``, ``g_i'`` starts at ``g_i``; for each other task ``j`` in a random order,
    with ``phi_ij = cos(g_i', g_j)``: if ``phi_ij < phi_hat_ij``, ``g_j`` is added with the
    weight that makes the cosine exactly ``phi_hat_ij``,
    ``||g_i'|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (||g_j|| sqrt(1 - phi_hat^2))``;
    then ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi_ij``. The update is ``sum_i g_i'``
    (PCGrad is the special case of a fixed target 0). Computed on the Gramian with a coefficient
    matrix, as :class:`PCGrad`; the targets are kept in a ``[num_tasks, num_tasks]`` buffer
    indexed by task (``rows``), saved in checkpoints.

    Randomness: one random order of the other tasks per task and call, drawn from
    ``state.generator`` (deterministic for ``T <= 2``).

    Args:
        beta: the paper's EMA rate ``beta`` in ``[0, 1]`` (default 0.01, the paper's value).
        num_tasks: number of tasks (the buffer grows on demand if omitted).

    Cost: one ``T x T`` Gramian on the device, one device-to-host copy of it (and of the
    targets), then ``T - 1`` vectorised ``O(T^2)`` steps in float64 on the host.

    Departures: the authors released no code. (1) One similarity target per task pair for the
    whole shared gradient: the paper's per-layer granularity is not offered (the aggregator
    sees one flattened Jacobian); (2) the EMA is updated for every visited pair, as in the
    paper's algorithm and LibMTL's current code (older LibMTL versions updated it only when the
    correction fired); (3) LibMTL and TorchJD
    default to ``beta = 0.5``; (4) ``phi_hat`` is clipped to ``1 - 1e-8`` inside the correction
    and pairs with a zero gradient are skipped (no NaN), instead of adding ``1e-8`` to the
    denominators.
    """

    stochastic = True

    def __init__(self, *, beta: float = 0.01, num_tasks: int | None = None) -> None:
        super().__init__()
        self.beta = check_float("GradVac", "beta", beta, low=0.0, high=1.0)
        n = 0 if num_tasks is None else check_int("GradVac", "num_tasks", num_tasks, low=1)
        self.register_buffer("phi_hat", torch.zeros(n, n, dtype=torch.float64))

    def extra_repr(self) -> str:
        return f"beta={self.beta}"

    def reset(self) -> None:
        """Reset every target similarity to 0."""
        self.phi_hat.zero_()

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        saved = state_dict.get(prefix + "phi_hat")
        if isinstance(saved, Tensor):  # adopt the saved number of tasks
            self.phi_hat = torch.zeros_like(saved, device=self.phi_hat.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        T = jacobian.shape[0]
        device = jacobian.device
        dt = work_dtype(device)
        idx = np.asarray([int(r) for r in rows.tolist()], dtype=np.int64)  # the task of each row
        self.phi_hat = grow_square(self.phi_hat, int(idx.max()) + 1, device=device, dtype=dt)
        if T == 1:
            return Aggregation(jacobian[0], torch.ones(1, dtype=jacobian.dtype, device=device))
        # the whole T x T problem runs on the host in float64: the Gramian and the targets go
        # there once, the weights and the updated targets come back
        phi_hat = self.phi_hat.detach().to("cpu", torch.float64).numpy().copy()
        target = phi_hat[np.ix_(idx, idx)]
        G = gramian_of(jacobian).detach().to("cpu", torch.float64).numpy()
        norm = np.sqrt(np.maximum(np.diag(G), 0.0))
        orders = random_orders(T, state.generator).numpy()
        C = np.eye(T)  # g_i' = sum_k C[i, k] g_k
        ar = np.arange(T)
        for s in range(T - 1):
            j = orders[:, s]
            inner = (C * G[j]).sum(1)  # g_i' . g_j
            norm_i = np.sqrt(np.maximum(((C @ G) * C).sum(1), 0.0))  # ||g_i'||
            norm_j = norm[j]
            valid = (norm_i > 0) & (norm_j > 0)
            denom = np.where(valid, norm_i * norm_j, 1.0)
            phi = np.clip(np.where(valid, inner / denom, 0.0), -1.0, 1.0)
            goal = target[ar, j]
            g = np.clip(goal, -1.0 + _EDGE, 1.0 - _EDGE)
            root_g = np.sqrt(1 - g * g)
            step = norm_i * (g * np.sqrt(1 - phi * phi) - phi * root_g) / (np.where(valid, norm_j, 1.0) * root_g)
            C[ar, j] += np.where(valid & (phi < goal), step, 0.0)
            target[ar, j] = np.where(valid, (1 - self.beta) * goal + self.beta * phi, goal)
        phi_hat[np.ix_(idx, idx)] = target
        self.phi_hat.copy_(torch.from_numpy(phi_hat))
        w = to_device(C.sum(0), jacobian)
        return Aggregation(w @ jacobian, w)
