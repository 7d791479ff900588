"""Metrics that take per-sample weights: ``update(preds, target, weight=None)``.

Without weights each equals its torchmetrics counterpart (``BinaryAccuracy``,
``MeanSquaredError``, ...); with weights every sample counts ``w`` times, as scikit-learn's
``sample_weight``: accuracy ``Σ w·[ŷ = y] / Σ w``, MSE ``Σ w (p - y)² / Σ w``, AUC the weighted
share of correctly ordered (positive, negative) pairs (ties count half), macro F1 from weighted
true/false positives and false negatives. Their states are sums or concatenations, so torchmetrics
synchronises them under torch.distributed.

:class:`~mtlkit.metrics.MultiTaskMetrics` passes the weights to a metric whose class sets
``accepts_sample_weight = True``; any other metric of a weighted task is refused.
"""

from __future__ import annotations

from abc import abstractmethod

import torch
from torch import Tensor
from torchmetrics import Metric

__all__ = ["Accuracy", "MeanAbsoluteError", "MeanSquaredError", "MulticlassF1Macro", "weighted_auc"]


def _w(weight: Tensor | None, like: Tensor) -> Tensor:
    if weight is None:
        return torch.ones(like.shape[0], dtype=torch.float64, device=like.device)
    return weight.reshape(-1).to(device=like.device, dtype=torch.float64)


class _WeightedMean(Metric):
    """``Σ w·v / Σ w`` of a per-sample value ``v`` (NaN before any sample)."""

    accepts_sample_weight = True
    is_differentiable = False
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("weight", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    @abstractmethod
    def _values(self, preds: Tensor, target: Tensor) -> Tensor:
        """The per-sample value that is averaged (each subclass defines it)."""

    def update(self, preds: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        v = self._values(preds, target).double()
        w = _w(weight, v)
        v = v.reshape(v.shape[0], -1).mean(dim=1) if v.ndim > 1 else v
        self.total += (w * v).sum()
        self.weight += w.sum()

    def compute(self) -> Tensor:
        return (
            self.total / self.weight if self.weight > 0 else torch.tensor(float("nan"), dtype=torch.float64)
        )


class Accuracy(_WeightedMean):
    """Weighted accuracy: binary (probability ``> threshold`` is positive) or multiclass (argmax)."""

    higher_is_better = True

    def __init__(self, threshold: float = 0.5) -> None:
        super().__init__()
        self.threshold = threshold

    def _values(self, preds: Tensor, target: Tensor) -> Tensor:
        if preds.ndim == 2 and preds.shape[1] > 1:
            return (preds.argmax(dim=1) == target.reshape(-1).long()).double()
        return ((preds.reshape(-1) > self.threshold).long() == target.reshape(-1).long()).double()


class MeanSquaredError(_WeightedMean):
    """Weighted mean squared error (the mean over the outputs of a multi-output sample)."""

    higher_is_better = False

    def _values(self, preds: Tensor, target: Tensor) -> Tensor:
        return (preds.double() - target.double()) ** 2


class MeanAbsoluteError(_WeightedMean):
    """Weighted mean absolute error."""

    higher_is_better = False

    def _values(self, preds: Tensor, target: Tensor) -> Tensor:
        return (preds.double() - target.double()).abs()


class MulticlassF1Macro(Metric):
    """Weighted macro F1: per class ``2tp / (2tp + fp + fn)`` from weighted counts, averaged over
    the classes that occur among the labels or the predictions (as torchmetrics' macro F1)."""

    accepts_sample_weight = True
    higher_is_better = True
    is_differentiable = False
    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        for name in ("tp", "fp", "fn"):
            self.add_state(name, default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, preds: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        guess = preds.argmax(dim=1) if preds.ndim == 2 else preds.reshape(-1).long()
        truth = target.reshape(-1).long()
        w = _w(weight, truth)
        c = self.num_classes
        hit = (guess == truth).double() * w
        self.tp += torch.bincount(truth, weights=hit, minlength=c)[:c]
        self.fp += torch.bincount(guess, weights=w - hit, minlength=c)[:c]
        self.fn += torch.bincount(truth, weights=w - hit, minlength=c)[:c]

    def compute(self) -> Tensor:
        denom = 2 * self.tp + self.fp + self.fn
        seen = denom > 0
        if not seen.any():
            return torch.tensor(float("nan"), dtype=torch.float64)
        f1 = torch.where(
            seen, 2 * self.tp / torch.where(seen, denom, torch.ones_like(denom)), torch.zeros_like(denom)
        )
        return f1[seen].mean()


def weighted_auc(preds: Tensor, target: Tensor, weight: Tensor) -> Tensor:
    """ROC AUC with sample weights: the weighted share of (positive, negative) pairs ordered
    correctly, ties counting half (NaN without both classes of positive weight)."""
    p = preds.reshape(-1).double()
    y = target.reshape(-1).double()
    w = weight.reshape(-1).double()
    order = torch.argsort(p, descending=True, stable=True)
    p, y, w = p[order], y[order], w[order]
    wp, wn = w * y, w * (1 - y)
    # group equal scores: a tie between a positive and a negative counts half a pair
    _, counts = torch.unique_consecutive(p, return_counts=True)
    ends = torch.cumsum(counts, 0) - 1
    tp = torch.cumsum(wp, 0)[ends]
    fp = torch.cumsum(wn, 0)[ends]
    P, N = tp[-1], fp[-1]
    if not (P > 0 and N > 0):
        return torch.tensor(float("nan"), dtype=torch.float64)
    tp0 = torch.cat([tp.new_zeros(1), tp])
    fp0 = torch.cat([fp.new_zeros(1), fp])
    area = ((fp0[1:] - fp0[:-1]) * (tp0[1:] + tp0[:-1]) / 2).sum()  # trapezoids of the ROC curve
    return area / (P * N)
