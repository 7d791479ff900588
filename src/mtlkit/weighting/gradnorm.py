"""GradNorm: gradient normalisation for adaptive loss balancing (Chen et al., ICML 2018)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlkit.registries import WEIGHTINGS
from mtlkit.state import TrainState
from mtlkit.tasks import Task
from mtlkit.weighting._base import LossWeighting, WeightedLoss

__all__ = ["GradNorm"]


class GradNorm(LossWeighting):
    """Learn task weights so that the tasks' gradient norms train at balanced rates.

    Paper: Z. Chen, V. Badrinarayanan, C.-Y. Lee, A. Rabinovich, "GradNorm: Gradient
    Normalization for Adaptive Loss Balancing in Deep Multitask Networks", ICML 2018
    (https://arxiv.org/abs/1711.02257), Algorithm 1.

    With learnable weights ``w_k`` (initialised to 1), ``G_k = ||∇ w_k L_k|| = w_k ||∇ L_k||``,
    ``Ḡ = mean_k G_k``, inverse training rates ``r_k = L̃_k / mean_j L̃_j`` with
    ``L̃_k = L_k(t) / L_k(0)``, the weights minimise ``L_grad = Σ_k |G_k - Ḡ r_k^α|`` with the
    target ``Ḡ r_k^α`` held constant; the model minimises ``Σ_k w_k L_k`` (weights held
    constant). After every optimizer step the weights are renormalised to sum to ``T``.

    Hyper-parameter: ``alpha`` α (the restoring-force strength; paper: 0.12–3, e.g. 1.5).
    The gradients ``∇ L_k`` are taken with respect to the run's gradient target: the shared
    parameters, or (much cheaper, close to the paper's "last shared layer") the shared
    representation with ``gradient_target="representation"``. Cost: one retained backward
    pass per task (through the heads only with the representation target).
    Departures: the paper takes the norms at the last shared layer's weights; mtlkit uses the
    gradient target (all shared parameters, or the shared representation). ``L_k(0)`` is
    recorded on the first step where task ``k`` has labels; tasks without labels in a batch
    are left out of ``L_grad``; weights are clamped at 1e-6 before renormalising.

    Args:
        tasks: the tasks, in loss order.
        alpha: α >= 0.
    """

    requires_gradients = True

    def __init__(self, tasks: Sequence[Task] | Sequence[str], *, alpha: float = 1.5) -> None:
        super().__init__(tasks)
        if not alpha >= 0:
            raise ValueError(f"GradNorm parameter `alpha` must be >= 0; got {alpha!r}.")
        self.alpha = float(alpha)
        self.loss_weights = nn.Parameter(torch.ones(self.num_tasks))
        self.register_buffer("initial_losses", torch.full((self.num_tasks,), float("nan")))

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        assert jacobian is not None  # forward() guarantees it for requires_gradients
        L = losses.detach()
        with torch.no_grad():
            first = torch.isnan(self.initial_losses) & present
            self.initial_losses.copy_(
                torch.where(first, L.to(self.initial_losses.dtype), self.initial_losses)
            )
        w = self.loss_weights.to(losses.dtype)
        norms = jacobian.norm(dim=1).to(losses.dtype)  # ||∇ L_k||, 0 for absent tasks
        grad_norms = w * norms  # G_k (differentiable in w only)
        k = present.sum().clamp_min(1).to(losses.dtype)
        ratio = torch.where(
            present, L / self.initial_losses.to(L.dtype).clamp_min(1e-12), torch.zeros_like(L)
        )
        rate = ratio / (ratio.sum() / k).clamp_min(1e-12)
        mean_norm = (torch.where(present, grad_norms, torch.zeros_like(grad_norms)).sum() / k).detach()
        target = (mean_norm * rate.pow(self.alpha)).detach()
        l_grad = torch.where(present, (grad_norms - target).abs(), torch.zeros_like(grad_norms)).sum()
        wd = w.detach()
        return WeightedLoss((wd * losses).sum(), wd, aux=l_grad)

    @torch.no_grad()
    def after_step(
        self, losses: Tensor | None, *, present: Tensor | None = None, state: TrainState | None = None
    ) -> None:
        w = self.loss_weights.clamp_min(1e-6)
        self.loss_weights.copy_(w * (self.num_tasks / w.sum()))

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, alpha={self.alpha}"


@WEIGHTINGS.register("gradnorm", cls=GradNorm)
def gradnorm(tasks: Sequence[Task], *, alpha: float = 1.5) -> GradNorm:
    """GradNorm (Chen et al. 2018): learned weights balancing gradient norms and training rates."""
    return GradNorm(tasks, alpha=alpha)
