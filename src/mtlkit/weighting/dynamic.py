"""Loss weightings driven by training progress or randomness: DWA, RLW, GLS, IMTL-L."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from mtlkit.registries import WEIGHTINGS
from mtlkit.state import TrainState
from mtlkit.tasks import Task
from mtlkit.weighting._base import LossWeighting, WeightedLoss

__all__ = ["DWA", "GLS", "IMTLL", "RLW"]


class DWA(LossWeighting):
    """Dynamic Weight Average.

    Paper: S. Liu, E. Johns, A. J. Davison, "End-to-End Multi-Task Learning with Attention",
    CVPR 2019 (https://arxiv.org/abs/1803.10704), eq. 7.

    ``λ_k(t) = T exp(w_k(t-1) / τ) / Σ_i exp(w_i(t-1) / τ)`` with ``w_k(t-1) = L_k(t-1) / L_k(t-2)``,
    where ``L_k(e)`` is task ``k``'s mean training loss over epoch ``e``. The weights are constant
    within an epoch and uniform (all 1) in the first two epochs. Hyper-parameter: ``temperature``
    τ (paper: 2). Cost: O(T) per step. Departure: a task with no labels in one of the two last
    epochs gets the ratio 1.

    Args:
        tasks: the tasks, in loss order.
        temperature: τ > 0; larger is closer to uniform.
    """

    def __init__(self, tasks: Sequence[Task] | Sequence[str], *, temperature: float = 2.0) -> None:
        super().__init__(tasks)
        if not temperature > 0:
            raise ValueError(f"DWA parameter `temperature` must be > 0; got {temperature!r}.")
        self.temperature = float(temperature)

    def weights_for(self, state: TrainState) -> list[float]:
        T = self.num_tasks
        if len(state.epoch_losses) < 2:
            return [1.0] * T
        prev, prev2 = state.epoch_losses[-1], state.epoch_losses[-2]
        ratios = [
            a / b if (math.isfinite(a) and math.isfinite(b) and b > 0) else 1.0 for a, b in zip(prev, prev2)
        ]
        scaled = [r / self.temperature for r in ratios]
        top = max(scaled)
        exps = [math.exp(s - top) for s in scaled]
        total = sum(exps)
        return [T * e / total for e in exps]

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        w = torch.tensor(self.weights_for(state), dtype=losses.dtype, device=losses.device)
        return WeightedLoss((w * losses).sum(), w)

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, temperature={self.temperature}"


class RLW(LossWeighting):
    """Random Loss Weighting.

    Paper: B. Lin, F. Ye, Y. Zhang, I. W. Tsang, "Reasonable Effectiveness of Random Weighting: A
    Litmus Test for Multi-Task Learning", TMLR 2022 (https://arxiv.org/abs/2111.10603).

    Every step draws ``ε ~ N(0, I_T)`` and uses ``λ = softmax(ε)`` (weights sum to 1). Random
    numbers come from the trainer's seeded generator (``state.generator``), so runs reproduce.
    Cost: O(T) per step. Departure: tasks without labels in the batch are left out of the softmax.
    """

    requires_all_tasks = True  # softmax over the step's tasks: with one task the weight is 1

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        eps = torch.randn(self.num_tasks, generator=state.generator, dtype=torch.float64)
        eps = eps.to(losses.device, losses.dtype).masked_fill(~present, float("-inf"))
        w = torch.softmax(eps, dim=0).nan_to_num()  # all tasks absent: 0 weights, no NaN
        return WeightedLoss((w * losses).sum(), w)


class GLS(LossWeighting):
    """Geometric Loss Strategy: the geometric mean of the task losses.

    Paper: S. Chennupati, G. Sistu, S. Yogamani, S. A. Rawashdeh, "MultiNet++: Multi-Stream
    Feature Aggregation and Geometric Loss Strategy for Multi-Task Learning", CVPR Workshops 2019
    (https://arxiv.org/abs/1904.08492).

    ``L = (Π_k L_k)^(1/T)``, computed as ``exp(mean_k log L_k)``; its gradient weights each task
    by ``L / (T L_k)`` (reported as ``weights``). Cost: O(T). Departure: only the tasks with labels
    in the batch enter the product (T counts them), and losses are clamped at 1e-12 before the log.
    """

    requires_all_tasks = True  # the product over one task is that task's loss: equal weighting

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        k = present.sum().clamp_min(1).to(losses.dtype)
        logs = torch.where(present, torch.log(losses.clamp_min(1e-12)), torch.zeros_like(losses))
        total = torch.exp(logs.sum() / k)
        w = torch.where(
            present, total.detach() / (k * losses.detach().clamp_min(1e-12)), torch.zeros_like(losses)
        )
        return WeightedLoss(torch.where(present.any(), total, losses.sum() * 0), w)


class IMTLL(LossWeighting):
    """IMTL-L: the loss-balancing half of Impartial Multi-Task Learning.

    Paper: L. Liu, Y. Li, Z. Kuang, J.-H. Xue, Y. Chen, W. Yang, Q. Liao, W. Zhang, "Towards
    Impartial Multi-task Learning", ICLR 2021 (https://openreview.net/forum?id=IMPnRXEWpvr), eq. 4.

    Each task has a learnable scale ``s_k`` (initialised to 0) and contributes
    ``e^{s_k} L_k - s_k``; at the optimum over ``s_k`` the scaled loss ``e^{s_k} L_k`` equals 1 for
    every task, so all tasks' losses are brought to the same scale. Cost: O(T). The gradient part
    (IMTL-G) is the aggregator ``imtl_g``; combine both with ``weighting: imtl_l`` plus
    ``aggregator: imtl_g``. Departure: tasks without labels in the batch contribute nothing.
    """

    def __init__(self, tasks: Sequence[Task] | Sequence[str]) -> None:
        super().__init__(tasks)
        self.scales = nn.Parameter(torch.zeros(self.num_tasks))

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        s = self.scales.to(losses.dtype)
        w = torch.exp(s)
        terms = torch.where(present, w * losses - s, torch.zeros_like(losses))
        return WeightedLoss(terms.sum(), w.detach())


@WEIGHTINGS.register("dwa", cls=DWA)
def dwa(tasks: Sequence[Task], *, temperature: float = 2.0) -> DWA:
    """DWA (Liu et al. 2019): weights from the ratio of the last two epoch losses."""
    return DWA(tasks, temperature=temperature)


@WEIGHTINGS.register("rlw", aliases=("random",), cls=RLW)
def rlw(tasks: Sequence[Task]) -> RLW:
    """RLW (Lin et al. 2022): random weights softmax(N(0, I)) every step."""
    return RLW(tasks)


@WEIGHTINGS.register("gls", aliases=("geometric",), cls=GLS)
def gls(tasks: Sequence[Task]) -> GLS:
    """GLS (Chennupati et al. 2019): the geometric mean of the task losses."""
    return GLS(tasks)


@WEIGHTINGS.register("imtl_l", cls=IMTLL)
def imtl_l(tasks: Sequence[Task]) -> IMTLL:
    """IMTL-L (Liu et al. 2021): learnable loss scales e^s L - s."""
    return IMTLL(tasks)
