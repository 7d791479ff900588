"""Rich tables for per-task metrics and experiment comparisons."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from rich.table import Table

__all__ = ["comparison_table", "metrics_table"]


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.4f}"


def metrics_table(metrics: Mapping[str, Mapping[str, float]], *, title: str = "metrics") -> Table:
    """One row per task, one column per metric name."""
    names = list(dict.fromkeys(m for ms in metrics.values() for m in ms))
    table = Table(title=title, title_justify="left")
    table.add_column("task", style="bold")
    for n in names:
        table.add_column(n, justify="right")
    for task, ms in metrics.items():
        table.add_row(task, *(_fmt(ms[n]) if n in ms else "" for n in names))
    return table


def comparison_table(comparison: Mapping[str, Any], *, title: str = "comparison") -> Table:
    """One row per variant: each task's main metric (mean ± std), Δm vs the baseline, size and time."""
    primary: Mapping[str, str] = comparison["primary"]
    labels: Mapping[str, Any] = comparison["labels"]
    baseline = comparison.get("baseline")
    table = Table(title=title, title_justify="left")
    table.add_column("model", style="bold")
    for task, metric in primary.items():
        table.add_column(f"{task} {metric}", justify="right")
    has_delta = any("delta_m" in e for e in labels.values())
    if has_delta:
        table.add_column(f"Δm vs {baseline}", justify="right")
    table.add_column("params", justify="right")
    table.add_column("s/run", justify="right")
    for label, entry in labels.items():
        cells = []
        for task, metric in primary.items():
            st = entry["metrics"][task][metric]
            cells.append(
                f"{_fmt(st['mean'])} ± {_fmt(st['std'])}" if len(entry["seeds"]) > 1 else _fmt(st["mean"])
            )
        if has_delta:
            d = entry.get("delta_m")
            cells.append("n/a" if d is None or math.isnan(d) else f"{d:+.1f}%")
        cells += [f"{entry['params']:,}", f"{entry['seconds']:.1f}"]
        table.add_row(label, *cells)
    return table
