"""Default metrics of each task kind, computed with torchmetrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryAUROC,
    MulticlassAccuracy,
    MulticlassF1Score,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)
from torchmetrics.regression import MeanAbsoluteError, MeanSquaredError

if TYPE_CHECKING:
    from mtlkit.tasks import Task

__all__ = ["AUROC", "LogLoss", "default_metrics"]


class AUROC(BinaryAUROC):
    """Exact binary ROC AUC that is NaN (not 0) when only one class has been seen."""

    def __init__(self) -> None:
        super().__init__(thresholds=None)

    def compute(self) -> Tensor:
        target = torch.cat(self.target) if isinstance(self.target, list) and self.target else self.target
        if isinstance(target, list) or target.numel() == 0 or target.min() == target.max():
            return torch.tensor(float("nan"))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return super().compute()


class LogLoss(Metric):
    """Mean binary cross-entropy of probabilities ``preds`` against 0/1 ``target``."""

    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor) -> None:
        p = preds.double().clamp(self.eps, 1 - self.eps)
        t = target.double()
        self.total += -(t * p.log() + (1 - t) * (1 - p).log()).sum()
        self.count += t.numel()

    def compute(self) -> Tensor:
        return self.total / self.count if self.count > 0 else torch.tensor(float("nan"))


def default_metrics(task: Task) -> dict[str, Callable[[], Metric]]:
    """``{name: factory}`` of the default metrics for ``task``'s kind."""
    from mtlkit.tasks import TaskKind

    kind, c = task.kind, task.num_classes
    if kind is TaskKind.BINARY:
        return {"auc": AUROC, "accuracy": BinaryAccuracy, "logloss": LogLoss}
    if kind is TaskKind.MULTICLASS:
        return {
            "accuracy": partial(MulticlassAccuracy, num_classes=c, average="micro"),
            "f1_macro": partial(MulticlassF1Score, num_classes=c, average="macro"),
        }
    if kind is TaskKind.MULTILABEL:
        return {
            "f1_micro": partial(MultilabelF1Score, num_labels=c, average="micro", ignore_index=-1),
            "f1_macro": partial(MultilabelF1Score, num_labels=c, average="macro", ignore_index=-1),
            "map": partial(MultilabelAveragePrecision, num_labels=c, average="macro", ignore_index=-1),
        }
    return {"mse": MeanSquaredError, "mae": MeanAbsoluteError}
