"""FAMO: fast adaptive multitask optimisation (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from mtlkit.registries import WEIGHTINGS
from mtlkit.state import TrainState
from mtlkit.tasks import Task
from mtlkit.weighting._base import LossWeighting, WeightedLoss

__all__ = ["FAMO"]


class FAMO(LossWeighting):
    """Fast Adaptive Multitask Optimization: balanced loss decrease at O(1) cost per task.

    Paper: B. Liu, Y. Feng, P. Stone, Q. Liu, "FAMO: Fast Adaptive Multitask Optimization",
    NeurIPS 2023 (https://arxiv.org/abs/2306.03792); authors' code: github.com/Cranial-XIX/FAMO.

    With task logits ``w`` (initialised to 0), ``z = softmax(w)`` and ``D_k = L_k - m_k + ε``
    (``m_k``: a known lower bound of the loss, 0 by default), the objective is
    ``Σ_k (z_k / c) log D_k`` with ``c = Σ_k z_k / D_k`` held constant, i.e. task ``k`` is weighted
    ``z_k / (c D_k)`` (the weights sum to 1). After each optimizer step the losses are
    recomputed on the same batch (the trainer does this: ``requires_post_step_losses``) and the
    logits take one Adam step (``lr = w_lr``, L2 weight decay ``γ``) on the gradient
    ``(∂z/∂w)ᵀ δ`` with ``δ_k = log D_k(before) - log D_k(after)``.

    Hyper-parameters (authors' defaults): ``gamma`` γ = 0.01, ``w_lr`` = 0.025, ``eps`` ε = 1e-8,
    ``min_losses`` m = 0. ``update``: ``"same_batch"`` (the authors' code) recomputes the losses
    on the same batch after the step, costing one extra forward pass (no backward);
    ``"next_batch"`` uses the next step's losses (another batch, so a noisier δ) as "after" and
    costs nothing extra. Cost: O(T) per step, on host floats (the ``T`` losses are read once per
    step; the extra forward of ``same_batch`` is one training-step forward without backward,
    about 1.3-1.5x the step time of equal weighting in ``benchmarks/bench_balancing.py``).
    Departures from the authors' code: (1) their ``backward`` also clips the
    shared gradients to norm 1 (``max_norm``); here gradient clipping is the trainer's
    ``grad_clip_norm`` (set it to 1.0 to match); (2) the Adam update of the logits is written out
    in buffers (same formulas as ``torch.optim.Adam``) so it is saved in checkpoints; (3) tasks
    without labels in the batch are left out of the softmax and of the logit update (a batch
    without any label gives the objective 0).
    """

    requires_post_step_losses = True
    requires_all_tasks = True  # z = softmax over the step's tasks: with one task its weight is 1

    def __init__(
        self,
        tasks: Sequence[Task] | Sequence[str],
        *,
        gamma: float = 0.01,
        w_lr: float = 0.025,
        eps: float = 1e-8,
        min_losses: Sequence[float] | None = None,
        update: Literal["same_batch", "next_batch"] = "same_batch",
    ) -> None:
        super().__init__(tasks)
        if update not in ("same_batch", "next_batch"):
            raise ValueError(f"FAMO parameter `update` must be 'same_batch' or 'next_batch'; got {update!r}.")
        self.update = update
        self.requires_post_step_losses = update == "same_batch"
        if gamma < 0:
            raise ValueError(f"FAMO parameter `gamma` must be >= 0; got {gamma!r}.")
        if not w_lr > 0:
            raise ValueError(f"FAMO parameter `w_lr` must be > 0; got {w_lr!r}.")
        if not eps > 0:
            raise ValueError(f"FAMO parameter `eps` must be > 0; got {eps!r}.")
        T = self.num_tasks
        mins = [0.0] * T if min_losses is None else [float(v) for v in min_losses]
        if len(mins) != T:
            raise ValueError(f"FAMO `min_losses` needs one value per task ({T}); got {len(mins)}.")
        self.gamma, self.w_lr, self.eps = float(gamma), float(w_lr), float(eps)
        self.register_buffer("logits", torch.zeros(T))
        self.register_buffer("min_losses", torch.tensor(mins))
        self.register_buffer("exp_avg", torch.zeros(T))
        self.register_buffer("exp_avg_sq", torch.zeros(T))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))
        self.register_buffer("prev_log_d", torch.zeros(T))
        self.register_buffer("prev_present", torch.zeros(T, dtype=torch.bool))
        self.register_buffer("has_prev", torch.zeros((), dtype=torch.bool))

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        # The O(T) bookkeeping runs on T host floats (float64): a few microseconds, where each of
        # the ~40 torch operations it takes on T-element tensors costs a dispatch. Only the
        # differentiable objective is built from torch operations.
        L, P = losses.detach().tolist(), present.tolist()
        if self.update == "next_batch" and bool(self.has_prev):
            self._update_logits(L, P)
        mins = self.min_losses.tolist()
        d = [(lk - mk + self.eps) if pk else 1.0 for lk, mk, pk in zip(L, mins, P)]
        z = _softmax(self.logits.tolist(), P)
        c = sum(zk / dk for zk, dk in zip(z, d))
        coef = [zk / c if c > 0.0 else 0.0 for zk in z]  # d total / d log D_k = z_k / c
        weights = [ck / dk for ck, dk in zip(coef, d)]  # z_k / (c D_k)
        D = torch.where(present, losses - self.min_losses.to(losses.dtype) + self.eps, torch.ones_like(losses))
        total = (losses.new_tensor(coef) * torch.log(D)).sum()
        with torch.no_grad():
            self.prev_log_d.copy_(torch.tensor([math.log(dk) for dk in d]))
            self.prev_present.copy_(present)
            self.has_prev.fill_(True)
        return WeightedLoss(total, losses.new_tensor(weights))

    @torch.no_grad()
    def after_step(
        self, losses: Tensor | None, *, present: Tensor | None = None, state: TrainState | None = None
    ) -> None:
        if losses is None or self.update != "same_batch":
            return
        self._update_logits(losses.detach().tolist(), self.prev_present.tolist())

    @torch.no_grad()
    def _update_logits(self, losses: list[float], present: list[bool]) -> None:
        """One Adam step of the logits on ``(∂z/∂w)ᵀ δ``, δ = log D(before) - log D(after)."""
        mask = [bool(a and b) for a, b in zip(self.prev_present.tolist(), present)]
        mins, prev = self.min_losses.tolist(), self.prev_log_d.tolist()
        logits = self.logits.tolist()
        delta = [
            (pl - math.log(max(lk - mk + self.eps, self.eps))) if mk_ else 0.0
            for pl, lk, mk, mk_ in zip(prev, losses, mins, mask)
        ]
        z = _softmax(logits, mask)
        zd = sum(zk * dk for zk, dk in zip(z, delta))
        grad = [(zk * (dk - zd) + self.gamma * wk) if m else 0.0 for zk, dk, wk, m in zip(z, delta, logits, mask)]
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        self.adam_step += 1
        t = int(self.adam_step)
        m1 = [b1 * a + (1 - b1) * g for a, g in zip(self.exp_avg.tolist(), grad)]
        m2 = [b2 * a + (1 - b2) * g * g for a, g in zip(self.exp_avg_sq.tolist(), grad)]
        self.exp_avg.copy_(torch.tensor(m1))
        self.exp_avg_sq.copy_(torch.tensor(m2))
        # bias-corrected from the stored (float32) moments, as torch.optim.Adam's formulas
        m1, m2 = self.exp_avg.tolist(), self.exp_avg_sq.tolist()
        step = [
            self.w_lr * (a / (1 - b1**t)) / (math.sqrt(v / (1 - b2**t)) + adam_eps) if m else 0.0
            for a, v, m in zip(m1, m2, mask)
        ]
        self.logits.copy_(torch.tensor([w - s for w, s in zip(logits, step)]))

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, gamma={self.gamma}, w_lr={self.w_lr}"


def _softmax(logits: list[float], mask: list[bool]) -> list[float]:
    """Softmax over the ``mask``-ed entries (0 elsewhere; all 0 when nothing is masked in)."""
    top = max((w for w, m in zip(logits, mask) if m), default=None)
    if top is None:
        return [0.0] * len(logits)
    e = [math.exp(w - top) if m else 0.0 for w, m in zip(logits, mask)]
    total = sum(e)
    return [v / total for v in e]


@WEIGHTINGS.register("famo", cls=FAMO)
def famo(
    tasks: Sequence[Task],
    *,
    gamma: float = 0.01,
    w_lr: float = 0.025,
    eps: float = 1e-8,
    update: Literal["same_batch", "next_batch"] = "same_batch",
) -> FAMO:
    """FAMO (Liu et al. 2023): balanced loss decrease with O(1) cost per task."""
    return FAMO(tasks, gamma=gamma, w_lr=w_lr, eps=eps, update=update)
