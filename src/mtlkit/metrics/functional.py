"""Pure functions over per-task results: relative improvements and Δm."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

from mtlkit.errors import DataError
from mtlkit.metrics.collection import compared_value

__all__ = ["delta_m", "delta_m_per_task", "relative_improvements", "select_metrics"]

Results = Mapping[str, Mapping[str, float]] | Mapping[str, float]
Directions = Mapping[str, Mapping[str, bool]] | Mapping[str, bool]
MetricSelection = Mapping[str, Sequence[str]] | Sequence[str] | None

_FLAT = "value"  # metric name given to the single value of the flat {task: value} form


def _nested(data: Mapping[str, object], what: str) -> dict[str, dict[str, object]]:
    """``{task: {metric: v}}`` from either form; the flat ``{task: v}`` form is one metric per task."""
    out: dict[str, dict[str, object]] = {}
    for task, v in data.items():
        out[task] = dict(v) if isinstance(v, Mapping) else {_FLAT: v}
    kinds = {isinstance(v, Mapping) for v in data.values()}
    if len(kinds) > 1:
        raise DataError(
            f"delta_m expects `{what}` as {{task: {{metric: value}}}} or {{task: value}} for every task; "
            "got a mix of both."
        )
    return out


def select_metrics(
    available: Mapping[str, Collection[str]],
    metrics: MetricSelection = None,
    *,
    exclude: Collection[str] = ("loss",),
) -> dict[str, list[str]]:
    """The metrics Δm uses for each task.

    Args:
        available: ``{task: metric names}`` (e.g. the keys of one run's results).
        metrics: ``None`` (default): every metric of each task except ``exclude``; a task that
            has no other metric uses its excluded ones (its loss). A list of names: those of
            the names each task has (every task must have at least one). A ``{task: names}``
            mapping: exactly those names for the tasks it lists (each must exist), the
            default rule for the others.
        exclude: metric names left out by the default rule.

    Returns:
        ``{task: [metric, ...]}`` in the order of ``available``.

    Raises:
        DataError: a named metric does not exist, or a task ends up with no metric.
    """
    out: dict[str, list[str]] = {}
    for task, names in available.items():
        names = list(names)
        if isinstance(metrics, Mapping) and task in metrics:
            chosen = list(metrics[task])
            missing = [m for m in chosen if m not in names]
            if missing:
                raise DataError(
                    f"Δm metric selection names {missing} for task {task!r}, which has {names}. "
                    "Use metric names the task reports."
                )
        elif metrics is not None and not isinstance(metrics, Mapping):
            if isinstance(metrics, str):
                raise TypeError(
                    f"metrics must be a list of names or a {{task: names}} mapping; got {metrics!r}."
                )
            chosen = [m for m in metrics if m in names]
        else:
            chosen = [m for m in names if m not in exclude] or [m for m in names if m in exclude]
        if not chosen:
            raise DataError(
                f"Δm has no metric for task {task!r}: it reports {names}, the selection is {list(metrics or [])}. "
                "Select at least one metric per task (a {task: [metrics]} mapping)."
            )
        out[task] = chosen
    return out


def relative_improvements(
    results: Results,
    baseline: Results,
    higher_is_better: Directions,
    *,
    metrics: MetricSelection = None,
    exclude: Collection[str] = ("loss",),
) -> dict[str, dict[str, float]]:
    """Per-metric relative improvement over a baseline, in percent.

    ``100 · (-1)^{l_{t,m}} (M_{t,m} - B_{t,m}) / |B_{t,m}|`` with ``l_{t,m} = 1`` when lower is
    better for metric ``m`` of task ``t``, so a positive value is an improvement. It is NaN when
    the model or the baseline value is NaN or the baseline value is 0. A metric whose best value
    is a target (``calibration``, best at 1) enters as its distance to it, ``|value - 1|``.

    Args:
        results: the model's ``{task: {metric: value}}`` (or ``{task: value}``, one metric per task).
        baseline: the baseline's values in the same form (usually the single-task models).
        higher_is_better: ``{task: {metric: bool}}`` (or ``{task: bool}``).
        metrics, exclude: which metrics to use, see :func:`select_metrics`.

    Returns:
        ``{task: {metric: improvement in %}}`` for the tasks of ``results``.
    """
    res = _nested(results, "results")
    base = _nested(baseline, "baseline")
    dirs = _nested(higher_is_better, "higher_is_better")
    missing = [t for t in res if t not in base]
    if missing:
        raise DataError(
            f"The Δm baseline has no results for task(s) {missing} (it has {list(base)}); "
            "compare models trained on the same tasks."
        )
    chosen = select_metrics({t: list(ms) for t, ms in res.items()}, metrics, exclude=exclude)
    out: dict[str, dict[str, float]] = {}
    for task, names in chosen.items():
        out[task] = {}
        for m in names:
            if m not in base[task]:
                raise DataError(
                    f"The Δm baseline has no metric {m!r} for task {task!r} (it has {list(base[task])})."
                )
            if m not in dirs.get(task, {}):
                raise DataError(
                    f"Δm needs the direction of metric {m!r} of task {task!r}: pass "
                    "higher_is_better[task][metric] (e.g. MultiTaskMetrics(tasks).directions())."
                )
            # a metric whose best is a target (calibration: 1) enters as its distance to the target
            value = compared_value(m, float(res[task][m]))  # type: ignore[arg-type]
            b = compared_value(m, float(base[task][m]))  # type: ignore[arg-type]
            if b == 0 or math.isnan(b) or math.isnan(value):
                out[task][m] = math.nan
                continue
            sign = 1.0 if dirs[task][m] else -1.0
            out[task][m] = 100.0 * sign * (value - b) / abs(b)
    return out


def delta_m_per_task(
    results: Results,
    baseline: Results,
    higher_is_better: Directions,
    *,
    metrics: MetricSelection = None,
    exclude: Collection[str] = ("loss",),
) -> dict[str, float]:
    """Each task's Δm_t: the mean of its metrics' relative improvements (percent)."""
    terms = relative_improvements(results, baseline, higher_is_better, metrics=metrics, exclude=exclude)
    return {t: sum(v.values()) / len(v) for t, v in terms.items()}


def delta_m(
    results: Results,
    baseline: Results,
    higher_is_better: Directions,
    *,
    metrics: MetricSelection = None,
    exclude: Collection[str] = ("loss",),
) -> float:
    """Mean relative improvement over a baseline, in percent (Maninis et al. 2019; Vandenhende et al. 2021).

    ``Δm = 100/T Σ_t 1/M_t Σ_m (-1)^{l_{t,m}} (M_{t,m} - B_{t,m}) / |B_{t,m}|``: the relative
    improvement of each metric (sign flipped for lower-is-better metrics, ``l_{t,m} = 1``),
    averaged over each task's ``M_t`` metrics and then over the ``T`` tasks, so every task
    counts equally whatever its number of metrics. Positive is better than the baseline.

    Departure: the papers and LibMTL's ``count_improvement`` divide by ``B_{t,m}``; dividing by
    ``|B_{t,m}|`` gives the same value for positive metrics (all of mtlkit's defaults) and keeps
    the sign meaningful for metrics that can be negative (e.g. R²).

    Args:
        results: the model's ``{task: {metric: value}}`` (or ``{task: value}``, one metric per task).
        baseline: the baseline's values in the same form (usually the single-task models).
        higher_is_better: ``{task: {metric: bool}}`` (or ``{task: bool}``).
        metrics: which metrics enter; default every metric except ``exclude`` (see
            :func:`select_metrics`).
        exclude: metric names left out by default (the loss).

    Returns:
        Δm in percent; NaN when any selected value is NaN or a baseline value is 0.

    Example:
        >>> delta_m({"a": {"acc": 0.9, "loss": 0.3}, "b": {"mse": 0.5}},
        ...         {"a": {"acc": 0.8, "loss": 0.4}, "b": {"mse": 1.0}},
        ...         {"a": {"acc": True, "loss": False}, "b": {"mse": False}})
        31.25
    """
    per_task = delta_m_per_task(results, baseline, higher_is_better, metrics=metrics, exclude=exclude)
    return sum(per_task.values()) / len(per_task) if per_task else math.nan
