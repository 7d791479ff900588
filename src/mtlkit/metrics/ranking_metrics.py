"""Ranking metrics of a binary task, accumulated over batches: GAUC, normalized entropy and calibration.

Every class takes probabilities ``preds``, 0/1 ``target`` and optional sample weights
``weight`` (``w``; 1 without them), as the other metrics of :mod:`mtlkit.metrics.weighted`:

* :class:`GroupAUC` (``gauc``): the ROC AUC within each group of a group column (e.g. the user
  id), averaged over the groups weighted by each group's impressions (its weight sum with sample
  weights). Groups with one class only are skipped; ``skipped`` holds their number after
  :meth:`~GroupAUC.compute`. It needs every score, so its state is the concatenated scores,
  labels, weights and group ids (as AUC's); under torch.distributed they are gathered.
* :class:`NormalizedEntropy` (``ne``; He et al. 2014): the mean log loss divided by the entropy
  of the background rate ``p̄ = Σ w·y / Σ w``:
  ``NE = (-Σ w [y log p + (1-y) log(1-p)] / Σ w) / -(p̄ log p̄ + (1-p̄) log(1-p̄))``,
  with ``p`` clipped to ``[1e-7, 1 - 1e-7]`` as :class:`~mtlkit.metrics.LogLoss`. 1 is the
  score of always predicting ``p̄``; lower is better. NaN when every label is the same.
* :class:`Calibration` (``calibration``): ``Σ w·p / Σ w·y``, predicted over observed positives;
  1 is calibrated (NaN without a positive).
* :class:`ExpectedCalibrationError` (``ece``): ``Σ_b |Σ_{i∈b} w_i (p_i - y_i)| / Σ w`` over
  ``bins`` equal-width bins of ``[0, 1]``: bin ``b = min(⌊p·bins⌋, bins - 1)``, so bin ``b``
  holds ``b/bins <= p < (b+1)/bins`` and the last bin also holds ``p = 1``. It is the
  weight-share-weighted mean of ``|mean p - mean y|`` over the bins; lower is better.

The last three keep sums only (a few numbers, or ``bins`` of them), reduced by a sum across
processes, so the value is the same for any batch split and any number of processes.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric

from mtlkit.metrics._sync import TypedCatStates
from mtlkit.metrics.ranking import group_auc_stats

__all__ = ["Calibration", "ExpectedCalibrationError", "GroupAUC", "NormalizedEntropy"]

_EPS = 1e-7


def _w(weight: Tensor | None, like: Tensor) -> Tensor:
    if weight is None:
        return torch.ones_like(like)
    return weight.reshape(like.shape).to(device=like.device, dtype=torch.float64)


class _Sums(Metric):
    accepts_sample_weight = True
    is_differentiable = False
    full_state_update = False

    def _sum(self, name: str, size: int | None = None) -> None:
        shape = () if size is None else (size,)
        self.add_state(name, default=torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")


class NormalizedEntropy(_Sums):
    """Normalized entropy (see the module doc)."""

    higher_is_better = False

    def __init__(self) -> None:
        super().__init__()
        for name in ("loss", "positive", "weight"):
            self._sum(name)

    def update(self, preds: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        p = preds.reshape(-1).double().clamp(_EPS, 1 - _EPS)
        y = target.reshape(-1).double()
        w = _w(weight, y)
        self.loss += -(w * (y * p.log() + (1 - y) * (1 - p).log())).sum()
        self.positive += (w * y).sum()
        self.weight += w.sum()

    def compute(self) -> Tensor:
        nan = torch.tensor(math.nan, dtype=torch.float64)
        if not self.weight > 0:
            return nan
        rate = self.positive / self.weight
        if not (0 < rate < 1):
            return nan
        entropy = -(rate * rate.log() + (1 - rate) * (1 - rate).log())
        return (self.loss / self.weight) / entropy


class Calibration(_Sums):
    """Predicted over observed positives, ``Σ w·p / Σ w·y`` (see the module doc). Its best value
    is 1: as a monitor or in Δm, mtlkit compares ``|ratio - 1|`` (lower is better)."""

    higher_is_better = False  # of |ratio - 1|; see mtlkit.metrics.collection.TARGETS
    target_value = 1.0

    def __init__(self) -> None:
        super().__init__()
        self._sum("predicted")
        self._sum("observed")

    def update(self, preds: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        y = target.reshape(-1).double()
        w = _w(weight, y)
        self.predicted += (w * preds.reshape(-1).double()).sum()
        self.observed += (w * y).sum()

    def compute(self) -> Tensor:
        if not self.observed > 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return self.predicted / self.observed


class ExpectedCalibrationError(_Sums):
    """Expected calibration error over ``bins`` equal-width bins (see the module doc)."""

    higher_is_better = False

    def __init__(self, bins: int = 10) -> None:
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"ece: bins must be an int >= 1; got {bins!r}.")
        super().__init__()
        self.bins = bins
        self._sum("gap", bins)  # Σ w (p - y) per bin
        self._sum("weight")

    def update(self, preds: Tensor, target: Tensor, weight: Tensor | None = None) -> None:
        p = preds.reshape(-1).double()
        y = target.reshape(-1).double()
        w = _w(weight, y)
        b = (p * self.bins).floor().clamp(0, self.bins - 1).long()
        self.gap += torch.bincount(b, weights=w * (p - y), minlength=self.bins)
        self.weight += w.sum()

    def compute(self) -> Tensor:
        if not self.weight > 0:
            return torch.tensor(math.nan, dtype=torch.float64)
        return self.gap.abs().sum() / self.weight


class GroupAUC(TypedCatStates):
    """AUC per group, averaged weighted by the groups' impressions (see the module doc).

    Args:
        group: the name of the group column (a feature or another column of the data), read from
            the batch's ``columns`` by :class:`~mtlkit.metrics.MultiTaskMetrics`.
    """

    accepts_sample_weight = True
    higher_is_better = True
    is_differentiable = False
    full_state_update = False
    CAT_DTYPES: ClassVar[dict[str, torch.dtype]] = {
        "preds": torch.float64,
        "target": torch.float64,
        "sample_weight": torch.float64,
        "groups": torch.int64,
    }

    def __init__(self, group: str) -> None:
        super().__init__()
        self.group = group
        self.skipped = 0
        for name in ("preds", "target", "sample_weight", "groups"):
            self.add_state(name, default=[], dist_reduce_fx="cat")

    def update(  # type: ignore[override]
        self, preds: Tensor, target: Tensor, weight: Tensor | None = None, *, groups: Tensor
    ) -> None:
        p = preds.reshape(-1).double()
        self.preds.append(p)  # type: ignore[union-attr]
        self.target.append(target.reshape(-1).double())  # type: ignore[union-attr]
        self.sample_weight.append(_w(weight, p))  # type: ignore[union-attr]
        self.groups.append(groups.reshape(-1).to(device=p.device, dtype=torch.int64))  # type: ignore[union-attr]

    def compute(self) -> Tensor:
        def cat(x: list[Tensor] | Tensor, dtype: torch.dtype) -> np.ndarray:
            if isinstance(x, list) and not x:
                return np.zeros(0, dtype=np.int64 if dtype == torch.int64 else np.float64)
            t = torch.cat([v.reshape(-1) for v in x]) if isinstance(x, list) else x.reshape(-1)
            return t.to(dtype).cpu().numpy()

        p = cat(self.preds, torch.float64)
        value, _, skipped = group_auc_stats(
            p,
            cat(self.target, torch.float64),
            cat(self.groups, torch.int64),
            weighting="size",
            weights=cat(self.sample_weight, torch.float64),
        )
        self.skipped = skipped
        return torch.tensor(value, dtype=torch.float64)
