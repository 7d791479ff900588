"""Homoscedastic uncertainty weighting (Kendall, Gal and Cipolla, CVPR 2018)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from mtlkit.registries import WEIGHTINGS
from mtlkit.state import TrainState
from mtlkit.tasks import Task
from mtlkit.weighting._base import LossWeighting, WeightedLoss

__all__ = ["UncertaintyWeighting"]

Form = Literal["regression", "classification"]


class UncertaintyWeighting(LossWeighting):
    """Learned task weights from homoscedastic uncertainty.

    Paper: A. Kendall, Y. Gal, R. Cipolla, "Multi-Task Learning Using Uncertainty to Weigh
    Losses for Scene Geometry and Semantics", CVPR 2018 (https://arxiv.org/abs/1705.07115).

    Each task ``k`` has a learned ``s_k = log sigma_k^2`` (initialised to ``init_log_var``).
    With ``L_k`` the task loss, the objective is the sum over tasks present in the batch of

    - regression form (Gaussian likelihood, eq. 7): ``L_k / (2 sigma_k^2) + log sigma_k
      = 0.5 exp(-s_k) L_k + 0.5 s_k``;
    - classification form (scaled softmax, eq. 10): ``L_k / sigma_k^2 + log sigma_k
      = exp(-s_k) L_k + 0.5 s_k``.

    The form of each task follows its kind (``auto``); set ``form`` to force one for all.
    Learning ``s`` rather than ``sigma`` keeps the objective numerically stable (as the paper
    recommends). Departure from the authors' code: a task with no label in the batch
    contributes neither its loss nor its ``0.5 s_k`` term, so ``s_k`` does not drift while
    its labels are missing. ``weights`` reports ``0.5 exp(-s_k)`` / ``exp(-s_k)``.

    Args:
        tasks: the tasks in loss order (their kinds pick the form), or task names with ``forms``.
        forms: ``{task: "regression" | "classification"}`` overriding the automatic choice.
        init_log_var: initial ``s_k``.
    """

    def __init__(
        self,
        tasks: Sequence[Task] | Sequence[str],
        *,
        forms: Mapping[str, Form] | None = None,
        init_log_var: float = 0.0,
    ) -> None:
        super().__init__(tasks)
        forms = dict(forms or {})
        bad = {k: v for k, v in forms.items() if v not in ("regression", "classification")}
        if bad:
            raise ValueError(
                f"UncertaintyWeighting forms must be 'regression' or 'classification'; got {bad}."
            )
        unknown = set(forms) - set(self.task_names)
        if unknown:
            raise ValueError(
                f"UncertaintyWeighting forms name unknown tasks {sorted(unknown)}; tasks: {self.task_names}."
            )
        scales = []
        for t in tasks:
            name = t.name if isinstance(t, Task) else str(t)
            if name in forms:
                form = forms[name]
            elif isinstance(t, Task):
                form = "classification" if t.kind.is_classification else "regression"  # type: ignore[union-attr]
            else:
                form = "regression"
            scales.append(0.5 if form == "regression" else 1.0)
        self.forms: tuple[Form, ...] = tuple("regression" if s == 0.5 else "classification" for s in scales)
        self.register_buffer("scale", torch.tensor(scales))
        self.log_vars = nn.Parameter(torch.full((self.num_tasks,), float(init_log_var)))

    def combine(
        self, losses: Tensor, present: Tensor, state: TrainState, jacobian: Tensor | None = None
    ) -> WeightedLoss:
        s = self.log_vars.to(losses.dtype)
        weights = self.scale.to(losses.dtype) * torch.exp(-s)
        terms = weights * losses + 0.5 * s
        total = torch.where(present, terms, torch.zeros_like(terms)).sum()
        return WeightedLoss(total, weights.detach())

    def extra_repr(self) -> str:
        return f"tasks={list(self.task_names)}, forms={list(self.forms)}"


@WEIGHTINGS.register("uncertainty", aliases=("uw", "kendall"), cls=UncertaintyWeighting)
def uncertainty(
    tasks: Sequence[Task],
    *,
    form: Literal["auto", "regression", "classification"] = "auto",
    init_log_var: float = 0.0,
) -> UncertaintyWeighting:
    """Uncertainty weighting (Kendall et al. 2018): learned log-variances per task."""
    forms = None if form == "auto" else dict.fromkeys((t.name for t in tasks), form)
    return UncertaintyWeighting(tasks, forms=forms, init_log_var=init_log_var)
