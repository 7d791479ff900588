"""Tables of per-task metrics and experiment comparisons: rich (terminal), markdown, CSV and JSON."""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rich.console import Console, ConsoleOptions, RenderResult
from rich.measure import Measurement
from rich.table import Table

from mtlkit.jsonio import dumps, json_safe
from mtlkit.seed_report import cap_note, wins_markdown

__all__ = [
    "FittedTable",
    "comparison_csv",
    "comparison_markdown",
    "comparison_table",
    "json_safe",
    "metrics_table",
    "write_tables",
]


def _isnan(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _fmt(v: float | None) -> str:
    return "n/a" if _isnan(v) else f"{v:.4f}"


def _fmt_metric(name: str, v: float | None) -> str:
    """A metric's cell: a count (``gauc_skipped``) as an integer, other values with 4 decimals."""
    return f"{v:.0f}" if name.endswith("_skipped") and not _isnan(v) else _fmt(v)


def _fmt_delta(v: float | None) -> str:
    return "n/a" if _isnan(v) else f"{v:+.2f}%"


def metrics_table(metrics: Mapping[str, Mapping[str, float]], *, title: str = "metrics") -> FittedTable:
    """One row per task, one column per metric name; where the terminal is too narrow for that,
    one row per metric and a column per task, and failing that one row per (task, metric).
    Names and values are never cut (no ``gauc_sk…``)."""
    names = list(dict.fromkeys(m for ms in metrics.values() for m in ms))
    tasks = list(metrics)

    def cell(task: str, n: str) -> str:
        return _fmt_metric(n, metrics[task][n]) if n in metrics[task] else ""

    wide = Table(title=title, title_justify="left")
    wide.add_column("task", style="bold", no_wrap=True)
    for n in names:
        wide.add_column(n, justify="right", no_wrap=True)
    for task in tasks:
        wide.add_row(task, *(cell(task, n) for n in names))
    tall = Table(title=title, title_justify="left")
    tall.add_column("metric", style="bold", no_wrap=True)
    for task in tasks:
        tall.add_column(task, justify="right", no_wrap=True)
    for n in names:
        tall.add_row(n, *(cell(task, n) for task in tasks))
    long = Table(title=title, title_justify="left")
    long.add_column("task", style="bold", overflow="fold")
    long.add_column("metric", overflow="fold")
    long.add_column("value", justify="right", overflow="fold")
    for task in tasks:
        for n in names:
            if n in metrics[task]:
                long.add_row(task, n, cell(task, n))
    return FittedTable(wide, tall, long)


class FittedTable:
    """The first of several layouts of one table that fits the console's width whole (the last
    one otherwise); ``tables[0]`` is the preferred layout."""

    def __init__(self, *tables: Table) -> None:
        if not tables:
            raise ValueError("FittedTable needs at least one table.")
        self.tables = tables

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.choose(console, options.max_width)

    def choose(self, console: Console, width: int) -> Table:
        """The layout drawn at ``width`` columns."""
        for t in self.tables:
            if Measurement.get(console, console.options.update(width=10**5), t).maximum <= width:
                return t
        return self.tables[-1]


def _columns(
    comparison: Mapping[str, Any], *, all_metrics: bool, auxiliary: bool | None = None
) -> list[tuple[str, str]]:
    """``(task, metric)`` columns: every metric of every task, or each task's main metric; only
    the main tasks (``auxiliary=False``), only the auxiliary ones (``True``) or all (``None``)."""
    aux = set(comparison.get("auxiliary") or ())

    def keep(task: str) -> bool:
        return auxiliary is None or (task in aux) == auxiliary

    if not all_metrics:  # the metrics Δm uses (each task's primary metric unless configured)
        used = comparison.get("delta_m_metrics") or {}
        return [(t, m) for t, p in comparison["primary"].items() if keep(t) for m in used.get(t, [p])]
    seen: dict[tuple[str, str], None] = {}
    for entry in comparison["labels"].values():
        for task, ms in entry["metrics"].items():
            for m in ms:
                if keep(task):
                    seen[(task, m)] = None
    return list(seen)


def _arrow(comparison: Mapping[str, Any], task: str, metric: str) -> str:
    from mtlkit.metrics.collection import TARGETS

    if metric in TARGETS:
        return f" →{TARGETS[metric]:g}"
    d = comparison.get("directions", {}).get(task, {}).get(metric)
    return "" if d is None else (" ↑" if d else " ↓")


def _cell(entry: Mapping[str, Any], task: str, metric: str) -> str:
    st = entry["metrics"].get(task, {}).get(metric)
    if st is None:
        return ""
    return f"{_fmt(st['mean'])} ± {_fmt(st['std'])}" if len(entry["seeds"]) > 1 else _fmt(st["mean"])


def _delta_cell(entry: Mapping[str, Any]) -> str:
    d = entry.get("delta_m")
    if len(entry["seeds"]) > 1 and not _isnan(d) and not _isnan(entry.get("delta_m_std")):
        return f"{_fmt_delta(d)} ± {entry['delta_m_std']:.2f}"
    return _fmt_delta(d)


def _delta_note(comparison: Mapping[str, Any]) -> str:
    used = comparison.get("delta_m_metrics")
    if not used:
        return ""
    over = "; ".join(f"{t}: {', '.join(ms)}" for t, ms in used.items())
    return (
        f"Δm: mean relative improvement (%) over {comparison['baseline']!r}, averaged per task over {over}."
    )


def comparison_table(
    comparison: Mapping[str, Any],
    *,
    title: str = "comparison",
    all_metrics: bool = False,
    auxiliary: bool = False,
) -> Table:
    """One row per variant: each main task's main metric (or all metrics) as mean ± std over
    seeds, Δm vs the baseline (mean ± std over seeds), size and time. ``auxiliary=True``: the
    separate block of the auxiliary tasks (their metrics only, no Δm)."""
    labels: Mapping[str, Any] = comparison["labels"]
    cols = _columns(comparison, all_metrics=all_metrics, auxiliary=auxiliary)
    note = "" if auxiliary else _delta_note(comparison)
    table = Table(title=title, title_justify="left", caption=note or None, caption_justify="left")
    # names at full width on one line; numbers fold onto more lines rather than lose digits
    width = max([5, *(len(label) for label in labels)])
    table.add_column("model", style="bold", no_wrap=True, min_width=width)
    for task, metric in cols:
        table.add_column(f"{task} {metric}{_arrow(comparison, task, metric)}", justify="right", overflow="fold")
    has_delta = not auxiliary and any("delta_m" in e for e in labels.values())
    if has_delta:
        table.add_column(f"Δm vs {comparison.get('baseline')}", justify="right", overflow="fold")
    table.add_column("params", justify="right", overflow="fold")
    table.add_column("s/run", justify="right", overflow="fold")
    for label, entry in labels.items():
        cells = [_cell(entry, task, metric) for task, metric in cols]
        if has_delta:
            cells.append(_delta_cell(entry))
        cells += [f"{entry['params']:,}", f"{entry['seconds']:.1f}"]
        table.add_row(label, *cells)
    return table


def comparison_markdown(comparison: Mapping[str, Any], *, title: str | None = None) -> str:
    """The comparison as a markdown table: every task metric (mean ± std over seeds), Δm, size, time."""
    labels: Mapping[str, Any] = comparison["labels"]
    cols = _columns(comparison, all_metrics=True, auxiliary=False)
    has_delta = any("delta_m" in e for e in labels.values())
    header = ["model", "seeds", *(f"{t} {m}{_arrow(comparison, t, m)}" for t, m in cols)]
    if has_delta:
        header.append(f"Δm vs {comparison.get('baseline')}")
    header += ["params", "s/run"]
    lines = []
    if title:
        lines += [f"# {title}", ""]
    split = next(iter(labels.values()), {}).get("split")
    if split:
        lines += [f"Metrics on the {split} split, mean ± std over seeds.", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "|".join(["---", "---:", *(["---:"] * (len(header) - 2))]) + "|")
    for label, entry in labels.items():
        row = [label, str(len(entry["seeds"])), *(_cell(entry, t, m) for t, m in cols)]
        if has_delta:
            row.append(_delta_cell(entry))
        row += [f"{entry['params']:,}", f"{entry['seconds']:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    note = _delta_note(comparison)
    if note:
        lines += ["", note]
    if comparison.get("paired"):
        lines += ["", wins_markdown(comparison["paired"]).rstrip("\n")]
    cap = cap_note(comparison.get("cap_bound") or (), _runs(labels), comparison.get("epoch_cap"))
    if cap:
        lines += ["", f"**{cap}**"]
    aux_cols = _columns(comparison, all_metrics=True, auxiliary=True)
    if aux_cols:
        lines += ["", "Auxiliary tasks (trained to help the main tasks; not in Δm):", ""]
        lines.append("| " + " | ".join(["model", *(f"{t} {m}{_arrow(comparison, t, m)}" for t, m in aux_cols)]) + " |")
        lines.append("|" + "|".join(["---", *(["---:"] * len(aux_cols))]) + "|")
        for label, entry in labels.items():
            lines.append("| " + " | ".join([label, *(_cell(entry, t, m) for t, m in aux_cols)]) + " |")
    return "\n".join(lines) + "\n"


def _runs(labels: Mapping[str, Any]) -> int:
    return sum(len(e["seeds"]) for e in labels.values())


def _num(v: Any) -> str:
    return "nan" if _isnan(v) else repr(float(v))


def comparison_csv(comparison: Mapping[str, Any]) -> str:
    """The comparison as CSV: one row per variant; for each ``task/metric`` its mean and std over
    seeds; Δm (mean, std over seeds, per task) when there is a baseline. NaN is written ``nan``."""
    labels: Mapping[str, Any] = comparison["labels"]
    cols = _columns(comparison, all_metrics=True)
    has_delta = any("delta_m" in e for e in labels.values())
    aux = set(comparison.get("auxiliary") or ())
    tasks = [t for t in dict.fromkeys(t for t, _ in cols) if t not in aux]  # Δm_t: main tasks only
    header = ["model", "seeds", "split", "params", "seconds"]
    if has_delta:
        header += ["delta_m", "delta_m_std", *(f"delta_m/{t}" for t in tasks)]
    for t, m in cols:
        header += [f"{t}/{m}", f"{t}/{m}_std"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for label, entry in labels.items():
        row = [label, " ".join(map(str, entry["seeds"])), entry.get("split", ""), entry["params"]]
        row.append(_num(entry["seconds"]))
        if has_delta:
            per_task = entry.get("delta_m_tasks") or {}
            row += [_num(entry.get("delta_m")), _num(entry.get("delta_m_std"))]
            row += [_num(per_task.get(t)) for t in tasks]
        for t, m in cols:
            st = entry["metrics"].get(t, {}).get(m)
            row += ["", ""] if st is None else [_num(st["mean"]), _num(st["std"])]
        w.writerow(row)
    return buf.getvalue()


def write_tables(
    comparison: Mapping[str, Any], out_dir: str | os.PathLike[str], *, title: str | None = None
) -> dict[str, Path]:
    """Write ``comparison.md``, ``comparison.csv`` and ``comparison.json`` into ``out_dir``.

    Args:
        comparison: the output of :func:`mtlkit.experiment.aggregate` (``labels`` with per-task
            metric ``mean``/``std``, optional ``delta_m``...).
        out_dir: directory (created if needed).
        title: heading of the markdown file.

    Returns:
        ``{"md": path, "csv": path, "json": path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"md": out / "comparison.md", "csv": out / "comparison.csv", "json": out / "comparison.json"}
    paths["md"].write_text(comparison_markdown(comparison, title=title), encoding="utf-8")
    paths["csv"].write_text(comparison_csv(comparison), encoding="utf-8")
    paths["json"].write_text(dumps(comparison), encoding="utf-8")
    return paths
