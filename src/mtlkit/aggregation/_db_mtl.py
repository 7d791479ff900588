"""DB-MTL: dual balancing of loss scales and gradient magnitudes (Lin et al., 2023)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._checks import check, check_float, check_int
from mtlkit.aggregation._device import task_slots
from mtlkit.state import TrainState

__all__ = ["DBMTL"]


class DBMTL(Aggregator):
    """Dual-balancing multi-task learning.

    Paper: B. Lin, W. Jiang, F. Ye, Y. Zhang, P. Chen, Y.-C. Chen, S. Liu, J. T. Kwok,
    "Dual-Balancing for Multi-Task Learning", 2023 (https://arxiv.org/abs/2308.12029);
    reference implementation: LibMTL's ``DB_MTL`` (by the same authors).

    Loss-scale balancing: the rows are gradients of ``log L_k`` (``loss_transform = "log"``,
    applied by :func:`mtlkit.backward`: row ``k`` is scaled by ``1 / L_k``). Gradient-magnitude
    balancing: each task keeps an EMA ``g_hat_k <- beta_t g_hat_k + (1 - beta_t) g_k`` with
    ``beta_t = beta / t^sigma`` (``t`` the call count, from 1; ``g_hat_k`` starts at 0), and the
    update is ``sum_k (max_j ||g_hat_j|| / ||g_hat_k||) g_hat_k``: every task contributes with
    the largest EMA norm. The EMAs live in a ``[num_tasks, P]`` buffer indexed by task
    (``rows``); a task without labels in a batch keeps its EMA unchanged.

    Args:
        beta: the EMA rate ``beta`` in ``[0, 1)`` (default 0.9, the authors' default).
        sigma: the decay exponent ``sigma >= 0`` of ``beta_t`` (default 0: a constant rate).
        num_tasks: number of tasks (the buffer grows on demand if omitted).

    Cost: ``O(T P)`` elementwise work and a ``[num_tasks, P]`` buffer (one EMA per task, as in
    the authors' code); no Gramian, no host synchronisation.

    Departures from the authors' code: (1) tasks with zero EMA get weight 0 instead of dividing
    by ``norm + 1e-8`` (scale-independent); (2) the log transform divides the gradient by
    ``max(L_k, 1e-8)`` (LibMTL: ``log(L_k + 1e-8)``); (3) LibMTL refuses representation
    gradients; here, with ``gradient_target="representation"``, the EMA averages the
    representation gradients of successive batches (different samples: a departure from the
    method's intent) and is reset when their size changes (e.g. a smaller last batch).
    Returns no row weights: the update is a combination of the EMAs, not of the rows.
    """

    loss_transform: ClassVar[Literal["identity", "log"]] = "log"

    def __init__(self, *, beta: float = 0.9, sigma: float = 0.0, num_tasks: int | None = None) -> None:
        super().__init__()
        self.beta = check_float("DBMTL", "beta", beta, low=0.0, high=1.0)
        check("DBMTL", "beta", beta, ok=self.beta < 1.0, constraint="a float in [0, 1)")
        self.sigma = check_float("DBMTL", "sigma", sigma, low=0.0)
        self.num_tasks = None if num_tasks is None else check_int("DBMTL", "num_tasks", num_tasks, low=1)
        self._step = 0
        self.register_buffer("grad_ema", torch.zeros(0, 0))

    def extra_repr(self) -> str:
        return f"beta={self.beta}, sigma={self.sigma}"

    def reset(self) -> None:
        """Forget the EMAs and the step count."""
        self._step = 0
        self.grad_ema = torch.zeros(0, 0, device=self.grad_ema.device)

    def get_extra_state(self) -> Any:
        return {"step": self._step}

    def set_extra_state(self, state: Any) -> None:
        self._step = int(state["step"])

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        saved = state_dict.get(prefix + "grad_ema")
        if isinstance(saved, Tensor):  # adopt the saved shape (number of tasks, P)
            self.grad_ema = torch.zeros_like(saved, device=self.grad_ema.device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _buffer(self, jacobian: Tensor, needed: int) -> Tensor:
        buf = self.grad_ema
        P = jacobian.shape[1]
        if buf.ndim != 2 or buf.shape[1] != P or buf.dtype != jacobian.dtype or buf.device != jacobian.device:
            n = max(needed, self.num_tasks or 0)
            if buf.ndim == 2 and buf.shape[1] == P:  # same size, other dtype or device: keep it
                buf = buf.to(device=jacobian.device, dtype=jacobian.dtype)
            else:
                buf = jacobian.new_zeros(n, P)
        if buf.shape[0] < needed:
            buf = torch.cat([buf, buf.new_zeros(needed - buf.shape[0], P)])
        self.grad_ema = buf
        return buf

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        slots, needed = task_slots(rows, jacobian.device)
        buf = self._buffer(jacobian, needed)
        self._step += 1
        beta_t = self.beta / self._step**self.sigma
        if isinstance(slots, slice):  # a view of the buffer: update it in place, one pass
            ema = buf[slots].lerp_(jacobian, 1.0 - beta_t)
        else:
            ema = buf[slots].lerp_(jacobian, 1.0 - beta_t)
            buf[slots] = ema
        norms = torch.linalg.vector_norm(ema, dim=1)
        safe = torch.where(norms > 0, norms, torch.ones_like(norms))
        alpha = torch.where(norms > 0, norms.max() / safe, torch.zeros_like(norms))
        return Aggregation(alpha @ ema, None)
