"""Multi-panel figures of the reproductions (one panel per setting, e.g. per task correlation),
built from :mod:`mtlkit.analysis`'s series and figure helpers. Needs matplotlib."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.analysis.plots import require_matplotlib, save_figure, series

__all__ = ["mean_train_loss", "plot_bars", "plot_panel_curves", "plot_panel_histograms"]

History = Sequence[Mapping[str, Any]]


def _figure(
    n_panels: int, *, ncols: int = 3, panel: tuple[float, float] = (4.4, 3.3)
) -> tuple[Any, list[Any]]:
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def mean_train_loss(record: Mapping[str, Any]) -> float | None:
    """The epoch's training loss averaged over the tasks (``None`` if the record has none)."""
    train = record.get("train") or {}
    vals = [float(v) for v in train.values() if v is not None]
    return sum(vals) / len(vals) if vals else None


def plot_panel_curves(
    panels: Mapping[str, Mapping[str, Sequence[History]]],
    *,
    get: Callable[[Mapping[str, Any]], float | None] = mean_train_loss,
    ylabel: str = "training loss (mean over tasks)",
    log_scale: bool = False,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """One panel per setting, one curve per model: the mean over runs of ``get`` per epoch,
    shaded ± 1 std (MMoE paper, Figure 4: average loss over runs).

    Args:
        panels: ``{panel title: {label: [history per run]}}``.
        get: the value plotted from each epoch record (default: the mean training loss).

    Returns:
        The figure; in each panel the mean line of a model is labelled with the model's label.
    """
    fig, axes = _figure(max(1, len(panels)))
    for ax, (name, by_label) in zip(axes, panels.items()):
        for i, (label, runs) in enumerate(by_label.items()):
            x, values, mean, std = series(runs, get)
            if not np.isfinite(values).any():
                continue
            color = f"C{i % 10}"
            ax.plot(x, mean, color=color, label=label)
            if values.shape[0] > 1 and np.isfinite(std).any():
                ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if log_scale:
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


STRIP_MAX_RUNS = 30  # up to this many runs per model a strip plot shows every run; above, histograms


def plot_panel_histograms(
    panels: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    bins: int = 20,
    xlabel: str = "final training loss",
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    strip_max_runs: int = STRIP_MAX_RUNS,
) -> Any:
    """One panel per setting: the distribution of each model's final losses over runs (MMoE paper,
    Figure 5: trainability), readable at any number of runs and with no legend over the data.

    With at most ``strip_max_runs`` runs per model (the quick defaults: a few seeds), a strip plot:
    one row per model (named on the y axis), one dot per run, a bar at the median; a histogram of
    three values says nothing. With more runs, one histogram per model in its own row over bins
    shared by the panel (step lines, counts scaled to the row's height), so the models never hide
    each other. The x axis is logarithmic when the losses span more than a factor of 20.

    Returns:
        The figure. Strip plot: each model's runs are a ``PathCollection`` labelled with the model's
        label (its offsets are the values, NaN runs left out). Histograms: each model's counts are a
        ``StepPatch`` labelled with the model's label.
    """
    fig, axes = _figure(max(1, len(panels)))
    for ax, (name, by_label) in zip(axes, panels.items()):
        clean = {
            k: np.asarray([v for v in vs if not math.isnan(v)], dtype=float) for k, vs in by_label.items()
        }
        labels = list(clean)
        every = np.concatenate(list(clean.values())) if clean else np.empty(0)
        log = bool(every.size) and float(every.min()) > 0 and float(every.max()) > 20 * float(every.min())
        rows = np.arange(len(labels))[::-1]  # the first model on top
        if every.size and max(len(v) for v in clean.values()) <= strip_max_runs:
            rng = np.random.default_rng(0)
            for i, (label, v) in enumerate(clean.items()):
                y = rows[i] + rng.uniform(-0.15, 0.15, size=v.size)
                ax.scatter(v, y, s=22, color=f"C{i % 10}", alpha=0.8, label=label, zorder=3)
                if v.size:
                    med = float(np.median(v))
                    ax.plot([med, med], [rows[i] - 0.3, rows[i] + 0.3], color="black", linewidth=1.5)
        elif every.size:
            lo, hi = float(every.min()), float(every.max())
            if not hi > lo:
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
            for i, (label, v) in enumerate(clean.items()):
                counts, _ = np.histogram(v, bins=edges)
                scale = 0.8 / counts.max() if counts.max() > 0 else 0.0
                ax.stairs(
                    counts, edges, baseline=0, label=label, color=f"C{i % 10}", linewidth=1.5
                ).set_transform(_row_transform(ax, rows[i], scale))
            ax.set_xlim(lo, hi)
        ax.set_yticks(rows, labels=labels)
        ax.set_ylim(-0.6, len(labels) - 0.4)
        if log:
            from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(NullFormatter())
        ax.grid(axis="x", alpha=0.3)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def _row_transform(ax: Any, row: float, scale: float) -> Any:
    """Data coordinates with counts scaled by ``scale`` and shifted up to ``row``."""
    from matplotlib.transforms import Affine2D

    return Affine2D().scale(1.0, scale).translate(0.0, row - 0.4) + ax.transData


def plot_bars(
    labels: Sequence[str],
    values: Sequence[float],
    errors: Sequence[float] | None = None,
    *,
    xlabel: str = "Δm (%)",
    colors: Sequence[str] | None = None,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Horizontal bars (top to bottom in the given order) with optional ± error bars.

    Returns:
        The figure; ``ax.patches`` are the bars, their widths equal ``values``.
    """
    fig, (ax,) = _figure(1, panel=(6.5, max(2.5, 0.32 * len(labels) + 1.2)))
    y = np.arange(len(labels))[::-1]
    vals = np.asarray(values, dtype=float)
    err = None if errors is None else np.nan_to_num(np.asarray(errors, dtype=float))
    ax.barh(y, vals, xerr=err, color=list(colors) if colors else "C0", alpha=0.85)
    ax.set_yticks(y, labels=list(labels))
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, Path(path))
    return fig
