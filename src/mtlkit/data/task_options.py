"""Per-task training options of the tabular data section: loss, class weights, target transform
and sample-weight columns (``tasks.<name>.loss/pos_weight/class_weights/transform/weight_column``
and ``weights: {column: w}``), turned into :class:`~mtlkit.Task` settings and weight tensors.

Shared by the in-memory builder (:func:`mtlkit.data.tabular.tabular`) and the streaming one, so
``validate`` and ``run`` refuse the same settings with the same messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict

from mtlkit.errors import DataError
from mtlkit.tasks import Task
from mtlkit.transforms import TargetTransform

__all__ = ["WeightsSpec", "apply_task_options", "refuse_stream_options", "weight_columns", "weight_values"]


class WeightsSpec(BaseModel):
    """``weights: {column: w}``: the sample-weight column of every task (unless a task names its own
    with ``weight_column``)."""

    model_config = ConfigDict(extra="forbid")

    column: str


def weight_columns(
    specs: Mapping[str, Any], weights: WeightsSpec | Mapping[str, Any] | None
) -> dict[str, str]:
    """``{task: weight column}`` for the tasks that have one (a task's ``weight_column`` first)."""
    if weights is not None and not isinstance(weights, WeightsSpec):
        try:
            weights = WeightsSpec.model_validate(weights)
        except Exception:
            raise DataError(
                f"tabular: weights must be {{column: <weight column>}}; got {weights!r}."
            ) from None
    default = weights.column if isinstance(weights, WeightsSpec) else None
    out = {}
    for name, spec in specs.items():
        column = getattr(spec, "weight_column", None) or default
        if column is not None:
            out[name] = column
    label_columns = {s.column for s in specs.values()}
    clash = sorted(set(out.values()) & label_columns)
    if clash:
        raise DataError(
            f"tabular: weight column(s) {clash} are also label columns; a weight column holds weights."
        )
    return out


def weight_values(values: Any, *, column: str, file: str, row: Any) -> np.ndarray:
    """A weight column's values as float64, refusing blank, non-numeric, infinite or negative ones.

    ``row(i)`` names the ``i``-th value's data row in ``file``."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "biuf":
        x = values.astype(np.float64)
    else:
        from mtlkit.data.tabular import _labels  # the label coder parses numbers per distinct value

        coded = _labels(values)
        x = coded.number[coded.codes].astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(x) | (x < 0))
    if bad.size:
        i = int(bad[0])
        raw = values[i] if isinstance(values, np.ndarray) else values.values[values.codes[i]]
        text = str(raw).strip()
        if isinstance(raw, (float, np.floating)):
            text = "" if np.isnan(raw) else f"{float(raw):g}"
        shown = "no value" if text.lower() in ("", "nan", "?", "na", "null", "none") else repr(text)
        raise DataError(
            f"{file}: the sample-weight column {column!r} holds {shown} in {row(i)}; weights must be finite "
            "numbers >= 0 (0 leaves the row out of the loss and the metrics). Fill in the weight."
        )
    return x


def apply_task_options(task: Task, spec: Any, train_labels: torch.Tensor | None) -> Task:
    """``task`` with the loss, ``pos_weight``, ``class_weights``, ``transform`` and ``metrics`` of
    its :class:`~mtlkit.data.tabular.TaskColumn` (``standardise`` fitted on ``train_labels``;
    the metric lists are checked before, by :func:`mtlkit.data.metric_columns.metric_options`).

    Raises:
        DataError: ``tabular: tasks.<name>: <the problem>``.
    """
    changes: dict[str, Any] = {}
    for key in ("loss", "pos_weight", "class_weights"):
        value = getattr(spec, key, None)
        if value is not None:
            changes[key] = tuple(value) if key == "class_weights" else value
    metrics = getattr(spec, "metrics", None)
    if metrics is not None:
        from mtlkit.metrics.select import parse_metrics

        factories, _, bad = parse_metrics(task.kind.value, metrics, num_classes=task.num_classes)
        if bad:
            raise DataError(f"tabular: tasks.{task.name}.metrics{bad[0]}")
        changes["metrics"] = factories
    transform = getattr(spec, "transform", None)
    try:
        if transform is not None:
            if str(transform).lower() in ("standardise", "standardize"):
                if train_labels is None:
                    raise ValueError("standardise needs the training labels")
                changes["transform"] = TargetTransform.fit("standardise", train_labels)
            else:
                changes["transform"] = transform
        return dataclasses.replace(task, **changes) if changes else task
    except ValueError as exc:
        msg = str(exc).removeprefix(f"Task {task.name!r}: ").removeprefix(f"Task {task.name!r} ")
        raise DataError(f"tabular: tasks.{task.name}: {msg}") from None


def refuse_stream_options(specs: Mapping[str, Any], weights: Any) -> None:
    """``streaming: true`` does not fit ``standardise`` yet: refuse it (named losses, ``pos_weight``,
    ``class_weights``, ``log1p`` and sample weights work as in memory). ``weights`` is unused."""
    std = [
        n
        for n, s in specs.items()
        if str(getattr(s, "transform", None)).lower() in ("standardise", "standardize")
    ]
    if std:
        raise DataError(
            f"tabular: tasks.{std[0]}.transform: standardise is not supported with streaming: true yet (its mean "
            "and std would need a pass over the training labels); use transform: log1p, or streaming: false."
        )
