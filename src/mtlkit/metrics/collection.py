"""Accumulate per-task losses and metrics over batches, skipping unlabelled samples."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor
from torchmetrics import Metric

from mtlkit.distributed import GradientSync
from mtlkit.errors import DataError, ShapeError
from mtlkit.tasks import Task, TaskKind

__all__ = ["TARGETS", "MultiTaskMetrics", "compared_value", "higher_is_better"]

_LOWER_IS_BETTER = {"loss", "logloss", "mse", "mae", "rmse", "ne", "ece", "calibration", "gauc_skipped"}

TARGETS: dict[str, float] = {"calibration": 1.0}
"""Metrics whose best value is a target rather than an extreme: the early-stopping monitor and
Δm compare their distance ``|value - target|`` to it (lower is better)."""


def compared_value(metric: str, value: float) -> float:
    """The value a monitor or Δm compares: ``|value - target|`` for the :data:`TARGETS` metrics
    (e.g. the calibration ratio), the value itself otherwise."""
    target = TARGETS.get(metric)
    return value if target is None else abs(value - target)


def higher_is_better(metric: str, instance: Metric | None = None) -> bool:
    """Direction of a metric: from the torchmetrics instance if known, else by name (for a
    :data:`TARGETS` metric, the direction of its distance to the target: lower is better)."""
    if metric in _LOWER_IS_BETTER or metric in TARGETS:
        return False
    flag = getattr(instance, "higher_is_better", None)
    return True if flag is None else bool(flag)


class MultiTaskMetrics:
    """Per-task metric collections with label masking.

    Metrics receive only labelled samples: rows with a label for per-sample tasks
    (binary, multiclass, scalar regression), labelled elements for multi-output
    regression (flattened), and targets with ``-1`` at missing labels for multilabel
    tasks (torchmetrics' ``ignore_index=-1``). Every task also reports ``loss``, the mean
    task loss over its labelled elements.
    """

    def __init__(self, tasks: Sequence[Task]) -> None:
        self.tasks = list(tasks)
        self.metrics: dict[str, dict[str, Metric]] = {t.name: t.make_metrics() for t in self.tasks}
        self._sums: dict[str, Tensor] = {}
        self._device: torch.device | None = None
        self.reset()

    def reset(self) -> None:
        for group in self.metrics.values():
            for m in group.values():
                m.reset()
        self._sums = {}

    def _to(self, device: torch.device) -> None:
        if self._device != device:
            for group in self.metrics.values():
                for m in group.values():
                    m.to(device)
            self._device = device

    @torch.no_grad()
    def update(
        self,
        outputs: Mapping[str, Tensor],
        targets: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        weights: Mapping[str, Tensor] | None = None,
        columns: Mapping[str, Tensor] | None = None,
    ) -> None:
        """Add one batch: raw model ``outputs``, ``targets``, optional label ``masks`` and per-row
        sample ``weights`` (``{task: (N,)}``: the loss and every metric are weighted means; a
        metric whose class lacks ``accepts_sample_weight`` is refused for a weighted task), and
        the per-row ``columns`` that grouped metrics read (``{column: (N,)}``, e.g. user ids)."""
        for task in self.tasks:
            if task.target_key not in targets:
                continue  # this batch carries no labels for the task
            if task.output_key not in outputs:
                raise ShapeError(
                    f"Model output is missing task {task.output_key!r} (got keys: "
                    f"{', '.join(map(repr, sorted(outputs)))}). Check Task(output=...) or the model's tasks."
                )
            pred, target = outputs[task.output_key], targets[task.target_key]
            mask = masks.get(task.name) if masks else None
            weight = weights.get(task.name) if weights else None
            loss, count = task.compute_loss(pred, target, mask, weight)
            self._to(pred.device)
            s = self._sums.get(task.name)
            pair = torch.stack([loss.detach().double() * count.double(), count.double()])
            self._sums[task.name] = pair if s is None else s + pair
            pred, target = task._shapes(pred.detach(), target)
            valid = task.valid_mask(target, mask)
            probs = task.activate(pred.float())
            if weight is not None:
                self._check_weighted(task)
            if task.kind is TaskKind.MULTILABEL:
                t = torch.where(valid, target, torch.full_like(target, -1)).long()
                for m in self.metrics[task.name].values():
                    m.update(probs, t)
                continue
            # per-sample tasks: labelled rows; multi-output regression: labelled elements, flattened
            p, t = probs[valid], target[valid]
            if p.shape[0] == 0:
                continue
            t = t.long() if task.kind in (TaskKind.BINARY, TaskKind.MULTICLASS) else t.to(p.dtype)
            w = None
            if weight is not None:
                w = weight.reshape(-1).to(p.device)
                w = w.reshape(-1, *([1] * (valid.ndim - 1))).expand(valid.shape)[valid]
            for m in self.metrics[task.name].values():
                extra = {"groups": self._groups(task, m, columns, valid)} if hasattr(m, "group") else {}
                if w is None:
                    m.update(p, t, **extra)
                else:
                    m.update(p, t, weight=w, **extra)

    @staticmethod
    def _groups(task: Task, metric: Metric, columns: Mapping[str, Tensor] | None, valid: Tensor) -> Tensor:
        column = metric.group  # type: ignore[attr-defined]
        if not columns or column not in columns:
            raise DataError(
                f"Task {task.name!r}: a grouped metric needs the column {column!r} in the batches' columns "
                f"(got {sorted(columns or {})}). Name it as the metric's group in the data's tasks.<name>.metrics, "
                "or give the batches columns={...} (mtlkit.data.Batch.columns)."
            )
        g = columns[column].reshape(-1).to(valid.device)
        return g.reshape(-1, *([1] * (valid.ndim - 1))).expand(valid.shape)[valid]

    def _check_weighted(self, task: Task) -> None:
        unweighted = [n for n, m in self.metrics[task.name].items() if not getattr(m, "accepts_sample_weight", False)]
        if unweighted:
            raise DataError(
                f"Task {task.name!r} has sample weights, but its metric(s) {unweighted} take none (only metrics "
                "whose update accepts weight=, e.g. mtlkit.metrics.weighted's, do). Drop the weights for this "
                "task, or choose weighted metrics."
            )

    def _synced_sums(self) -> dict[str, Tensor]:
        """Loss sums over all processes when torch.distributed is running (torchmetrics syncs the
        rest): every task's ``[sum, count]`` in one all-reduce."""
        sync = GradientSync.active()
        if sync is None:
            return self._sums
        zeros = torch.zeros(2, dtype=torch.float64, device=self._device or "cpu")
        stacked = sync.sum_(torch.stack([self._sums.get(t.name, zeros) for t in self.tasks]))
        return {t.name: row for t, row in zip(self.tasks, stacked.unbind(0))}

    def counts(self) -> dict[str, int]:
        """Number of labelled elements seen per task (their weight sum, rounded, with sample weights)."""
        return {name: round(float(s[1].item())) for name, s in self._sums.items()} | {
            t.name: 0 for t in self.tasks if t.name not in self._sums
        }

    def compute(self) -> dict[str, dict[str, float]]:
        """``{task: {metric: value}}``; NaN for a metric of a task that had no labels."""
        out: dict[str, dict[str, float]] = {}
        sums = self._synced_sums()
        synced = sums is not self._sums  # every rank must join each metric's reduction
        for task in self.tasks:
            s = sums.get(task.name)
            n = 0.0 if s is None else float(s[1].item())
            res: dict[str, float] = {"loss": float((s[0] / s[1]).item()) if n > 0 else math.nan}
            for name, m in self.metrics[task.name].items():
                ready = n > 0 and (synced or m.update_count > 0)
                res[name] = _to_float(m.compute()) if ready else math.nan
                if hasattr(m, "skipped"):
                    res[f"{name}_skipped"] = float(m.skipped) if ready else math.nan
            out[task.name] = res
        return out

    def directions(self) -> dict[str, dict[str, bool]]:
        """``{task: {metric: higher_is_better}}``."""
        out: dict[str, dict[str, bool]] = {}
        for t in self.tasks:
            d = {"loss": False}
            for k, m in self.metrics[t.name].items():
                d[k] = False if k in TARGETS else higher_is_better(k, m)
                if hasattr(m, "skipped"):
                    d[f"{k}_skipped"] = False
            out[t.name] = d
        return out


def _to_float(value: Tensor | float) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            return float(value.float().mean().item())
        return float(value.item())
    return float(value)
