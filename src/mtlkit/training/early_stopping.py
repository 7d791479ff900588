"""Early stopping on one monitored metric (the rule, :class:`EarlyStopping`, and its state,
:class:`EarlyStopper`), with the best model kept for restoring."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from mtlkit.metrics.collection import MultiTaskMetrics, compared_value
from mtlkit.tasks import Task

__all__ = [
    "RELATIVE",
    "EarlyStopper",
    "EarlyStopping",
    "check_monitor",
    "monitored",
    "primary_metric",
    "resolve_monitor",
]

RELATIVE = "mean/relative"
"""The default monitor: scale-free, see :class:`EarlyStopping`."""


@dataclass(slots=True, kw_only=True)
class EarlyStopping:
    """Stop when ``monitor`` has not improved for ``patience`` consecutive epochs.

    With ``patience=3`` and the best value at epoch 10, training stops after epoch 13 (as Keras'
    and Lightning's rules do); ``patience=0`` stops at the first epoch without improvement (as 1).

    Args:
        monitor: ``"<task>/<metric>"`` (e.g. ``"ctr/auc"``), ``"mean/<metric>"`` (mean over
            the tasks that report it, e.g. ``"mean/loss"``) or ``"mean/relative"`` (default).
            Read from the validation metrics, or from the training losses when there is no
            validation data. ``mean/relative`` is scale-free, so no task dominates it by the
            scale of its labels: each task's primary metric (its first metric other than the
            loss, e.g. ``auc``, ``accuracy``, ``mse``; the loss without validation data)
            relative to its value in the first epoch, ``d_t = (v_t - v_t,1) / |v_t,1|``, signed
            so that lower is better (``-d_t`` for higher-is-better metrics) and averaged over the
            tasks whose first-epoch value is finite and non-zero. It is 0 at the first epoch and
            -0.1 when the tasks improved by 10 % on average.
            A metric whose best value is a target (``calibration``, the predicted/observed
            ratio, best at 1) is monitored as its distance to it, ``|ratio - 1|``, lower is better.
        mode: ``"min"``, ``"max"`` or ``"auto"`` (from the metric's direction).
        patience: epochs without improvement before stopping.
        min_delta: the smallest change that counts as an improvement.
        restore_best: load the best epoch's weights at the end of ``fit``.
    """

    monitor: str = RELATIVE
    mode: Literal["auto", "min", "max"] = "auto"
    patience: int = 5
    min_delta: float = 0.0
    restore_best: bool = True

    def __post_init__(self) -> None:
        if "/" not in self.monitor:
            raise ValueError(
                f"EarlyStopping monitor must look like '<task>/<metric>' or 'mean/<metric>'; got {self.monitor!r}."
            )
        if self.mode not in ("auto", "min", "max"):
            raise ValueError(f"EarlyStopping mode must be 'auto', 'min' or 'max'; got {self.mode!r}.")
        if not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"EarlyStopping patience must be an int >= 0; got {self.patience!r}.")
        if self.min_delta < 0:
            raise ValueError(f"EarlyStopping min_delta must be >= 0; got {self.min_delta!r}.")


def resolve_monitor(
    monitor: str,
    metrics: dict[str, dict[str, float]],
    directions: dict[str, dict[str, bool]] | None = None,
    auxiliary: Collection[str] = (),
    reference: Mapping[str, Mapping[str, float]] | None = None,
) -> tuple[float, bool]:
    """Value of ``monitor`` in ``metrics`` and whether higher is better; raises with the choices.

    ``mean/<metric>`` averages over the main tasks: the ``auxiliary`` ones are left out (unless
    every task holding the metric is auxiliary); so does ``mean/relative``, whose ``reference``
    is the first epoch's metrics (default: ``metrics``)."""
    if monitor == RELATIVE:
        main = {t: m for t, m in metrics.items() if t not in auxiliary} or metrics
        return _relative(main, directions, metrics if reference is None else reference), False
    task, _, metric = monitor.partition("/")
    if task == "mean":
        holders = [t for t, m in metrics.items() if metric in m]
        main = [t for t in holders if t not in auxiliary] or holders
        values = [compared_value(metric, metrics[t][metric]) for t in main if not math.isnan(metrics[t][metric])]
        holders = main
        if not holders:
            raise KeyError(_unknown(monitor, metrics))
        value = sum(values) / len(values) if values else math.nan
        t0 = holders[0]
    else:
        if task not in metrics or metric not in metrics[task]:
            raise KeyError(_unknown(monitor, metrics))
        value, t0 = compared_value(metric, metrics[task][metric]), task
    higher = directions[t0][metric] if directions and t0 in directions and metric in directions[t0] else False
    return value, higher


def primary_metric(names: Sequence[str]) -> str:
    """A task's primary metric: its first metric other than the loss (the loss if it has none)."""
    return next((n for n in names if n != "loss"), "loss")


def _relative(
    metrics: Mapping[str, Mapping[str, float]],
    directions: Mapping[str, Mapping[str, bool]] | None,
    reference: Mapping[str, Mapping[str, float]],
) -> float:
    """The ``mean/relative`` value (see :class:`EarlyStopping`); NaN when no task has one."""
    terms = []
    for task, values in metrics.items():
        names = list(directions[task]) if directions and task in directions else list(values)
        metric = primary_metric([n for n in names if n in values])
        v = compared_value(metric, values.get(metric, math.nan))
        v0 = compared_value(metric, reference.get(task, {}).get(metric, math.nan))
        if not (math.isfinite(v) and math.isfinite(v0)) or v0 == 0:
            continue
        higher = bool(directions and directions.get(task, {}).get(metric, False))
        d = (v - v0) / abs(v0)
        terms.append(-d if higher else d)
    return sum(terms) / len(terms) if terms else math.nan


def check_monitor(monitor: str, tasks: Sequence[Task], *, has_val: bool) -> None:
    """Raise ``ValueError`` (with the choices) before training when ``monitor`` will not exist."""
    directions = MultiTaskMetrics(tasks).directions()
    if not has_val:  # only the training losses exist
        directions = {t: {"loss": False} for t in directions}
    try:
        resolve_monitor(monitor, {t: dict.fromkeys(ms, 0.0) for t, ms in directions.items()}, directions)
    except KeyError as exc:
        hint = "" if has_val else " (without validation data only training losses can be monitored)"
        raise ValueError(f"EarlyStopping: {exc.args[0]}{hint}") from None


def monitored(
    record: Mapping[str, Any],
    tasks: Sequence[Task],
    rule: EarlyStopping | None,
    first: Mapping[str, Any] | None = None,
) -> tuple[str, float, bool]:
    """``(name, value, higher is better)`` of the monitored metric in an epoch's record: the rule's
    monitor (``mean/loss`` without a rule), from the validation metrics, else the training losses.
    ``first``: the record of the first epoch (``mean/relative`` is relative to it; default ``record``)."""

    def values(rec: Mapping[str, Any]) -> dict[str, dict[str, float]]:
        return rec.get("val") or {t: {"loss": v} for t, v in rec["train"].items()}

    metrics = values(record)
    directions = MultiTaskMetrics(tasks).directions() if "val" in record else None
    monitor = rule.monitor if rule is not None else "mean/loss"
    try:
        reference = values(first) if first is not None else None
        auxiliary = {t.name for t in tasks if t.auxiliary}
        value, higher = resolve_monitor(monitor, metrics, directions, auxiliary, reference=reference)
    except KeyError as exc:
        raise ValueError(str(exc.args[0])) from None
    if rule is not None and rule.mode != "auto":
        higher = rule.mode == "max"
    return monitor, value, higher


def _unknown(monitor: str, metrics: dict[str, dict[str, Any]]) -> str:
    from mtlkit.errors import did_you_mean

    options = sorted(
        {f"{t}/{m}" for t, ms in metrics.items() for m in ms}
        | {f"mean/{m}" for ms in metrics.values() for m in ms}
    )
    return f"Unknown monitor {monitor!r}.{did_you_mean(monitor, options)} Available: {', '.join(options)}"


class EarlyStopper:
    """Early stopping's state across epochs and checkpoints: the best monitored value so far, its
    epoch, the epochs since, and (for ``restore_best``) the weights to go back to.

    The :class:`~mtlkit.Trainer` keeps one; :meth:`start` gives it the rule of a ``fit`` (an
    :class:`EarlyStopping`, or ``None``: nothing is tracked) and :meth:`update` is called with the
    monitored value after every epoch.

    Args:
        snapshot: returns ``{"state": model weights, "weighting": weighting state}`` (copies) of
            the current epoch, called on every improvement; ``restore_best`` tells it whether the
            model's weights are needed.
    """

    def __init__(self, snapshot: Callable[[bool], dict[str, Any]]) -> None:
        self.snapshot = snapshot
        self.rule: EarlyStopping | None = None
        self.best: dict[str, Any] | None = None

    def start(self, rule: EarlyStopping | None) -> None:
        """Track ``rule`` in the coming epochs (``None``: stop never)."""
        self.rule = rule

    @property
    def stopped(self) -> bool:
        """True when the rule has stopped training (e.g. in a run resumed from its checkpoint)."""
        return (
            self.rule is not None
            and self.best is not None
            and self.best["bad_epochs"] >= max(1, self.rule.patience)
        )

    @property
    def best_epoch(self) -> int | None:
        """The (1-based) epoch of the best value, ``None`` before any."""
        return self.best["epoch"] if self.best else None

    def update(self, value: float, *, higher: bool, epoch: int) -> bool:
        """Record epoch ``epoch``'s monitored ``value``; True when training should stop.

        A non-finite value never improves on a finite best. Training stops once the value has not
        improved by more than ``min_delta`` for ``patience`` consecutive epochs (at least one).
        """
        rule = self.rule
        if rule is None:
            return False
        best = self.best
        if best is None or (
            math.isfinite(value)
            and (
                not math.isfinite(best["value"])
                or (
                    value > best["value"] + rule.min_delta
                    if higher
                    else value < best["value"] - rule.min_delta
                )
            )
        ):
            self.best = {"value": value, "epoch": epoch, "bad_epochs": 0, **self.snapshot(rule.restore_best)}
            return False
        best["bad_epochs"] += 1
        return self.stopped

    def best_state(self) -> dict[str, Any] | None:
        """``{"state": ..., "weighting": ...}`` of the best epoch to restore at the end of ``fit``,
        or ``None`` (no rule, ``restore_best`` off, or no best yet)."""
        if self.rule is None or not self.rule.restore_best or not self.best or not self.best.get("state"):
            return None
        return self.best

    def state_dict(self) -> dict[str, Any] | None:
        return self.best

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        self.best = state
