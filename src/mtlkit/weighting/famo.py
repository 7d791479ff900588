"""FAMO: fast adaptive multitask optimisation (Liu et al., NeurIPS 2023)."""

from __future__ import annotations

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
    costs nothing extra. Cost: O(T) per step (+ the extra forward for ``same_batch``).
    Departures from the authors' code: (1) their ``backward`` also clips the
    shared gradients to norm 1 (``max_norm``); here gradient clipping is the trainer's
    ``grad_clip_norm`` (set it to 1.0 to match); (2) the Adam update of the logits is written out
    in buffers (same formulas as ``torch.optim.Adam``) so it is saved in checkpoints; (3) tasks
    without labels in the batch are left out of the softmax and of the logit update.
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

    def _z(self, present: Tensor) -> Tensor:
        return torch.softmax(self.logits.masked_fill(~present, float("-inf")), dim=0).nan_to_num()

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        if self.update == "next_batch" and bool(self.has_prev):
            self._update_logits(losses.detach(), present)
        d = torch.where(
            present, losses - self.min_losses.to(losses.dtype) + self.eps, torch.ones_like(losses)
        )
        z = self._z(present).to(losses.dtype)
        c = (z / d.detach()).sum()
        total = (torch.where(present, torch.log(d), torch.zeros_like(d)) * z / c).sum()
        with torch.no_grad():
            self.prev_log_d.copy_(torch.log(d.detach()).to(self.prev_log_d.dtype))
            self.prev_present.copy_(present)
            self.has_prev.fill_(True)
        return WeightedLoss(total, (z / (c * d)).detach())

    @torch.no_grad()
    def after_step(
        self, losses: Tensor | None, *, present: Tensor | None = None, state: TrainState | None = None
    ) -> None:
        if losses is None or self.update != "same_batch":
            return
        self._update_logits(losses, self.prev_present)

    @torch.no_grad()
    def _update_logits(self, losses: Tensor, present: Tensor) -> None:
        """One Adam step of the logits on ``(∂z/∂w)ᵀ δ``, δ = log D(before) - log D(after)."""
        mask = self.prev_present & present
        log_d = torch.log((losses - self.min_losses.to(losses.dtype) + self.eps).clamp_min(self.eps))
        delta = torch.where(
            mask, self.prev_log_d - log_d.to(self.prev_log_d.dtype), torch.zeros_like(self.prev_log_d)
        )
        z = self._z(mask)
        grad = z * (delta - (z * delta).sum())  # (∂ softmax / ∂ w)ᵀ δ
        grad = torch.where(mask, grad + self.gamma * self.logits, torch.zeros_like(grad))
        b1, b2, adam_eps = 0.9, 0.999, 1e-8
        self.adam_step += 1
        t = float(self.adam_step)
        self.exp_avg.mul_(b1).add_(grad, alpha=1 - b1)
        self.exp_avg_sq.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        m_hat = self.exp_avg / (1 - b1**t)
        v_hat = self.exp_avg_sq / (1 - b2**t)
        update = self.w_lr * m_hat / (v_hat.sqrt() + adam_eps)
        self.logits.sub_(torch.where(mask, update, torch.zeros_like(update)))

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, gamma={self.gamma}, w_lr={self.w_lr}"


@WEIGHTINGS.register("famo")
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
