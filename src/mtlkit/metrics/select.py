"""A task's metrics chosen by name: ``metrics: [auc, {gauc: {group: user_id}}, ne, {calibration: {bins: 10}}]``.

Each entry is a name, or ``{name: {parameter: value}}``. The names, per task kind:

* binary: ``auc``, ``accuracy``, ``logloss`` (the defaults), ``gauc`` (``group: <column>``,
  required: the AUC per group of that column, see :class:`~mtlkit.metrics.GroupAUC`), ``ne``
  (normalized entropy), ``calibration`` (the predicted/observed ratio ``calibration`` and the
  expected calibration error ``ece``; ``bins``, default 10) and ``ece`` alone (``bins``);
* multiclass: ``accuracy``, ``f1_macro``;
* regression: ``mse``, ``mae``.

The first metric listed is the task's primary metric (the comparison table's column, Δm's
metric and ``mean/relative``'s). :func:`parse_metrics` reports every problem of a list at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

from torchmetrics import Metric

from mtlkit.errors import did_you_mean

__all__ = ["DEFAULT_BINS", "METRICS_BY_KIND", "parse_metrics"]

DEFAULT_BINS = 10
"""The default number of equal-width bins of ``ece`` / ``calibration``."""

METRICS_BY_KIND: dict[str, tuple[str, ...]] = {
    "binary": ("auc", "accuracy", "logloss", "gauc", "ne", "calibration", "ece"),
    "multiclass": ("accuracy", "f1_macro"),
    "regression": ("mse", "mae"),
}
_PARAMS = {"gauc": {"group"}, "calibration": {"bins"}, "ece": {"bins"}}


def _factories(name: str, params: Mapping[str, Any], num_classes: int | None) -> dict[str, Callable[[], Metric]]:
    from mtlkit.metrics.defaults import AUROC, LogLoss
    from mtlkit.metrics.ranking_metrics import (
        Calibration,
        ExpectedCalibrationError,
        GroupAUC,
        NormalizedEntropy,
    )
    from mtlkit.metrics.weighted import Accuracy, MeanAbsoluteError, MeanSquaredError, MulticlassF1Macro

    bins = params.get("bins", DEFAULT_BINS)
    simple: dict[str, Callable[[], Metric]] = {
        "auc": AUROC,
        "accuracy": Accuracy,
        "logloss": LogLoss,
        "ne": NormalizedEntropy,
        "mse": MeanSquaredError,
        "mae": MeanAbsoluteError,
    }
    if name in simple:
        return {name: simple[name]}
    if name == "f1_macro":
        return {name: partial(MulticlassF1Macro, num_classes=num_classes)}
    if name == "gauc":
        return {name: partial(GroupAUC, params["group"])}
    ece = {"ece": partial(ExpectedCalibrationError, bins=bins)}
    return {"calibration": Calibration, **ece} if name == "calibration" else ece


def _entry_problems(name: str, params: Mapping[str, Any]) -> list[str]:
    out = []
    unknown = sorted(set(params) - _PARAMS.get(name, set()))
    if unknown:
        allowed = sorted(_PARAMS.get(name, set()))
        out.append(f"{name} takes {'the parameter(s) ' + ', '.join(allowed) if allowed else 'no parameters'}; got {unknown}.")
    if name == "gauc":
        group = params.get("group")
        if not isinstance(group, str) or not group:
            out.append("gauc needs the group column: {gauc: {group: <column, e.g. user_id>}}.")
    if name in ("calibration", "ece") and "bins" in params:
        bins = params["bins"]
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            out.append(f"{name}: bins must be an integer >= 1; got {bins!r}.")
    return out


def parse_metrics(
    kind: str, entries: Sequence[str | Mapping[str, Any]], *, num_classes: int | None = None
) -> tuple[dict[str, Callable[[], Metric]], list[str], list[str]]:
    """``(factories, group columns, problems)`` of a task's metric list (see the module doc).

    ``factories`` is ``{metric name: factory}`` for :class:`~mtlkit.Task`'s ``metrics`` (in the
    listed order), ``group columns`` the columns the grouped metrics read, ``problems`` one line per
    bad entry, ``[<index>] <problem>`` (empty when the list is fine)."""
    allowed = METRICS_BY_KIND.get(kind, ())
    every = sorted({n for names in METRICS_BY_KIND.values() for n in names})
    factories: dict[str, Callable[[], Metric]] = {}
    groups: list[str] = []
    problems: list[str] = []
    if isinstance(entries, (str, Mapping)) or not isinstance(entries, Sequence):
        return {}, [], [f"must be a list of metric names or {{name: {{parameters}}}}; got {entries!r}."]
    if not entries:
        return {}, [], [f"lists no metric; name at least one (for a {kind} task: {', '.join(allowed)})."]
    for i, entry in enumerate(entries):
        if isinstance(entry, str):
            name, params = entry, {}
        elif isinstance(entry, Mapping) and len(entry) == 1:
            name, raw = next(iter(entry.items()))
            params = {} if raw is None else raw
            if not isinstance(params, Mapping):
                problems.append(f"[{i}] {name}: the parameters must be a mapping {{parameter: value}}; got {raw!r}.")
                continue
        else:
            problems.append(f"[{i}] must be a metric name or {{name: {{parameters}}}} (one key); got {entry!r}.")
            continue
        if name not in every:
            problems.append(f"[{i}] unknown metric {name!r}.{did_you_mean(str(name), every)} Available: {', '.join(every)}.")
            continue
        if name not in allowed:
            problems.append(
                f"[{i}] {name} does not apply to a {kind} task; a {kind} task's metrics are: {', '.join(allowed)}."
            )
            continue
        bad = _entry_problems(name, params)
        if bad:
            problems += [f"[{i}] {p}" for p in bad]
            continue
        made = _factories(name, params, num_classes)
        twice = sorted(set(made) & set(factories))
        if twice:
            problems.append(f"[{i}] {name} repeats the metric(s) {twice} (calibration already reports ece).")
            continue
        factories.update(made)
        if name == "gauc":
            groups.append(params["group"])
    return factories, list(dict.fromkeys(groups)), problems
