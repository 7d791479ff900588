"""Multi-panel figures of the reproductions (one panel per setting, e.g. per task correlation),
built from :mod:`mtlkit.analysis`'s series and figure helpers. Needs matplotlib."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.analysis.plots import STRIP_MAX_RUNS, draw_final_losses, require_matplotlib, save_figure, series

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
    Figure 5: trainability), drawn by :func:`mtlkit.analysis.plots.draw_final_losses`: a strip plot
    (one dot per run, one row per model) with at most ``strip_max_runs`` runs per model, else one
    histogram row per model; models named on the y axis, no legend over the data.

    Returns:
        The figure (see :func:`~mtlkit.analysis.plots.draw_final_losses` for its artists).
    """
    fig, axes = _figure(max(1, len(panels)))
    for ax, (name, by_label) in zip(axes, panels.items()):
        draw_final_losses(ax, by_label, bins=bins, strip_max_runs=strip_max_runs)
        ax.set_title(name)
        ax.set_xlabel(xlabel)
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


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
