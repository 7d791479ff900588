"""Early stopping per task, for models whose tasks share nothing (``independent_tasks``, e.g. the
single-task baseline): each task's network is judged on its own validation metric, stops being
tracked after its own ``patience`` epochs without improvement and is restored at its own best
epoch. One stopping epoch for independent networks would cut one short or let one overfit."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from mtlkit.metrics.collection import MultiTaskMetrics
from mtlkit.tasks import Task
from mtlkit.training.early_stopping import (
    RELATIVE,
    EarlyStopper,
    EarlyStopping,
    monitored,
    primary_metric,
    resolve_monitor,
)

__all__ = ["PerTaskEarlyStopper", "task_monitored"]


def task_monitored(
    record: Mapping[str, Any], tasks: Sequence[Task], rule: EarlyStopping | None
) -> dict[str, tuple[float, bool]]:
    """``{task: (value, higher is better)}`` of each task's own monitored metric in an epoch's record.

    A ``mean/<metric>`` monitor becomes each task's ``<metric>`` (the mean over one task); a task
    without that metric, or with no finite value this epoch (no validation labels), follows the
    mean over the tasks, as :func:`~mtlkit.training.early_stopping.monitored` gives it. A monitor of
    one task (``"y1/mse"``) is the same value for every task: they stop together, as the user chose.
    ``mean/relative`` becomes each task's primary metric (its value relative to the first epoch
    orders the epochs the same way).
    """
    _, mean_value, mean_higher = monitored(record, tasks, rule)
    out = {t.name: (mean_value, mean_higher) for t in tasks}
    monitor = rule.monitor if rule is not None else "mean/loss"
    if not monitor.startswith("mean/"):
        return out
    metrics = record.get("val") or {t: {"loss": v} for t, v in record["train"].items()}
    directions = MultiTaskMetrics(tasks).directions() if "val" in record else None
    for t in tasks:
        if t.name not in metrics:
            continue
        own = monitor
        if monitor == RELATIVE:  # for one task: its primary metric (relative to epoch 1 is monotone in it)
            names = list(directions[t.name]) if directions and t.name in directions else list(metrics[t.name])
            own = f"{t.name}/{primary_metric([n for n in names if n in metrics[t.name]])}"
        try:
            value, higher = resolve_monitor(own, {t.name: metrics[t.name]}, directions)
        except KeyError:  # this task does not report the metric
            continue
        if not math.isfinite(value):
            continue
        if rule is not None and rule.mode != "auto":
            higher = rule.mode == "max"
        out[t.name] = (value, higher)
    return out


class PerTaskEarlyStopper:
    """One :class:`~mtlkit.training.early_stopping.EarlyStopper` per task, with the interface of
    one: training stops when every task has stopped; :attr:`best_epoch` is the last of the tasks'
    best epochs (:attr:`best_epochs` has each); :meth:`best_state` holds each task's weights at its
    own best epoch (only that task's state-dict keys) and the loss weighting's state of the latest
    of them. A task that has stopped is no longer tracked (its best stays), though it keeps
    training with the others until they stop: its network is restored at its best epoch at the end.

    Args:
        snapshot: ``snapshot(task, with_model)`` returns ``{"state": that task's weights (copies)
            or None, "weighting": weighting state}``.
        task_names: the tasks, in order.
    """

    def __init__(self, snapshot: Callable[[str, bool], dict[str, Any]], task_names: Sequence[str]) -> None:
        self.rule: EarlyStopping | None = None
        self.tasks: dict[str, EarlyStopper] = {t: EarlyStopper(partial(snapshot, t)) for t in task_names}

    def start(self, rule: EarlyStopping | None) -> None:
        """Track ``rule`` in the coming epochs (``None``: stop never)."""
        self.rule = rule
        for s in self.tasks.values():
            s.start(rule)

    @property
    def stopped(self) -> bool:
        """True when every task has stopped."""
        return self.rule is not None and all(s.stopped for s in self.tasks.values())

    @property
    def best_epochs(self) -> dict[str, int | None]:
        """Each task's (1-based) best epoch."""
        return {t: s.best_epoch for t, s in self.tasks.items()}

    @property
    def best_epoch(self) -> int | None:
        """The latest of the tasks' best epochs (``None`` before every task has one)."""
        epochs = list(self.best_epochs.values())
        return (
            None if not epochs or any(e is None for e in epochs) else max(e for e in epochs if e is not None)
        )

    def update_tasks(self, values: Mapping[str, tuple[float, bool]], *, epoch: int) -> bool:
        """Record epoch ``epoch``'s ``{task: (value, higher)}``; True when every task has stopped."""
        if self.rule is None:
            return False
        for t, s in self.tasks.items():
            if not s.stopped and t in values:
                value, higher = values[t]
                s.update(value, higher=higher, epoch=epoch)
        return self.stopped

    def update(self, value: float, *, higher: bool, epoch: int) -> bool:
        """The same value for every task (the interface of :class:`EarlyStopper`)."""
        return self.update_tasks(dict.fromkeys(self.tasks, (value, higher)), epoch=epoch)

    def best_state(self) -> dict[str, Any] | None:
        """``{"state": each task's keys at its best epoch, "weighting": ...}`` to load over the
        model's current state at the end of ``fit``, or ``None`` (no rule, ``restore_best`` off, or
        some task without a best yet)."""
        bests = [s.best_state() for s in self.tasks.values()]
        if any(b is None for b in bests):
            return None
        state: dict[str, Any] = {}
        for b in bests:
            state.update(b["state"])  # type: ignore[index]
        latest = max(self.tasks.values(), key=lambda s: s.best_epoch or 0)
        return {"state": state, "weighting": latest.best["weighting"] if latest.best else None}

    def state_dict(self) -> dict[str, Any]:
        return {"per_task": {t: s.state_dict() for t, s in self.tasks.items()}}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        per_task = (state or {}).get("per_task") or {}
        for t, s in self.tasks.items():
            s.load_state_dict(per_task.get(t))
