"""Default metrics of each task kind, computed with torchmetrics."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.classification import (
    BinaryAUROC,
    MultilabelAveragePrecision,
    MultilabelF1Score,
)

from mtlkit.metrics._sync import TypedCatStates
from mtlkit.metrics.weighted import (
    Accuracy,
    MeanAbsoluteError,
    MeanSquaredError,
    MulticlassF1Macro,
    weighted_auc,
)

if TYPE_CHECKING:
    from mtlkit.tasks import Task

__all__ = ["AUROC", "LogLoss", "default_metrics"]


class AUROC(TypedCatStates, BinaryAUROC):
    """Exact binary ROC AUC that is NaN (not 0) when only one class has been seen; with sample
    weights (``update(preds, target, weight)``) the weighted AUC (:func:`weighted_auc`)."""

    accepts_sample_weight = True
    CAT_DTYPES: ClassVar[dict[str, torch.dtype]] = {
        "preds": torch.float32,
        "target": torch.int64,
        "sample_weight": torch.float64,
    }

    def __init__(self) -> None:
        super().__init__(thresholds=None)
        self.add_state("sample_weight", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor, weight: Tensor | None = None) -> None:  # type: ignore[override]
        super().update(preds.float(), target.long())
        w = torch.ones(preds.numel(), dtype=torch.float64, device=preds.device) if weight is None else weight
        self.sample_weight.append(w.reshape(-1).double())  # type: ignore[union-attr]

    def compute(self) -> Tensor:
        target = torch.cat(self.target) if isinstance(self.target, list) and self.target else self.target
        if isinstance(target, list) or target.numel() == 0 or target.min() == target.max():
            return torch.tensor(float("nan"))
        sw = self.sample_weight
        weights = torch.cat(sw) if isinstance(sw, list) and sw else sw
        if isinstance(weights, Tensor) and weights.numel() and not bool((weights == 1).all()):
            preds = torch.cat(self.preds) if isinstance(self.preds, list) else self.preds
            return weighted_auc(preds, target, weights).float()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return super().compute()


class LogLoss(Metric):
    """Mean binary cross-entropy of probabilities ``preds`` against 0/1 ``target`` (weighted mean
    with ``update(preds, target, weight)``)."""

    accepts_sample_weight = True
    higher_is_better = False
    is_differentiable = False
    full_state_update = False

    def __init__(self, eps: float = 1e-7) -> None:
        super().__init__()
        self.eps = eps
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        p = preds.double().clamp(self.eps, 1 - self.eps)
        t = target.double()
        w = torch.ones_like(t) if weight is None else weight.reshape(t.shape).double()
        self.total += -(w * (t * p.log() + (1 - t) * (1 - p).log())).sum()
        self.count += w.sum()

    def compute(self) -> Tensor:
        return self.total / self.count if self.count > 0 else torch.tensor(float("nan"))


def default_metrics(task: Task) -> dict[str, Callable[[], Metric]]:
    """``{name: factory}`` of the default metrics for ``task``'s kind."""
    from mtlkit.tasks import TaskKind

    kind, c = task.kind, task.num_classes
    if kind is TaskKind.BINARY:
        return {"auc": AUROC, "accuracy": Accuracy, "logloss": LogLoss}
    if kind is TaskKind.MULTICLASS:
        assert c is not None
        return {"accuracy": Accuracy, "f1_macro": partial(MulticlassF1Macro, num_classes=c)}
    if kind is TaskKind.MULTILABEL:
        return {
            "f1_micro": partial(MultilabelF1Score, num_labels=c, average="micro", ignore_index=-1),
            "f1_macro": partial(MultilabelF1Score, num_labels=c, average="macro", ignore_index=-1),
            "map": partial(MultilabelAveragePrecision, num_labels=c, average="macro", ignore_index=-1),
        }
    return {"mse": MeanSquaredError, "mae": MeanAbsoluteError}
