"""PNG plots of training histories, loss weights, gate distributions and final losses.

Every function takes plain data: training histories (the list of per-epoch records that
:meth:`mtlkit.Trainer.fit` returns and ``mtlkit run`` writes to ``history.json``), ``{label:
values}`` dicts, or :class:`~mtlkit.analysis.GateStats` (or their ``to_dict()`` form, as in
``gates.json``). Each returns a matplotlib ``Figure`` drawn on the Agg canvas (no display, no
pyplot state) and, given ``path``, also writes it as PNG. Needs ``pip install 'mtlkit[plot]'``.

Histories are passed as ``{label: [history of seed 1, history of seed 2, ...]}`` (a single
history per label is accepted too); curves show the mean over seeds with a ±1 std band.
Seeds that stopped early contribute to the epochs they reached.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mtlkit.analysis.gates import QUANTILE_LEVELS, GateStats

__all__ = [
    "STRIP_MAX_RUNS",
    "draw_final_losses",
    "final_values",
    "plot_final_loss_histogram",
    "plot_gate_distributions",
    "plot_gate_means",
    "plot_loss_curves",
    "plot_weight_trajectories",
    "require_matplotlib",
    "save_figure",
    "series",
    "write_experiment_plots",
]

History = Sequence[Mapping[str, Any]]
Histories = Mapping[str, Sequence[History] | History]


def _mpl() -> tuple[Any, Any]:
    """``(Figure, FigureCanvasAgg)``, or an ImportError that says how to install matplotlib."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("Plotting needs matplotlib: pip install 'mtlkit[plot]'") from None
    return Figure, FigureCanvasAgg


def require_matplotlib() -> None:
    """Raise the ImportError that says how to install matplotlib when it is missing."""
    _mpl()


def _figure(
    n_panels: int, *, ncols: int = 3, panel: tuple[float, float] = (4.2, 3.2)
) -> tuple[Any, list[Any]]:
    Figure, Canvas = _mpl()
    ncols = max(1, min(ncols, n_panels))
    nrows = max(1, math.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout="constrained")
    Canvas(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG to ``path`` (parent directories are created)."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def _finish(fig: Any, path: str | os.PathLike[str] | None, title: str | None) -> Any:
    if title:
        fig.suptitle(title)
    if path is not None:
        save_figure(fig, path)
    return fig


def _runs(histories: Histories) -> dict[str, list[History]]:
    """``{label: [history, ...]}`` from either accepted form."""
    if not isinstance(histories, Mapping):
        raise TypeError(
            f"histories must be a {{label: [history, ...]}} mapping; got {type(histories).__name__}."
        )
    out: dict[str, list[History]] = {}
    for label, h in histories.items():
        seq = list(h)
        if seq and isinstance(seq[0], Mapping):  # one history (a list of epoch records)
            out[str(label)] = [seq]
        else:
            out[str(label)] = [list(x) for x in seq]
    return out


def series(
    runs: Sequence[History], get: Callable[[Mapping[str, Any]], float | None]
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One quantity over epochs across seeds.

    Args:
        runs: one history per seed.
        get: the value of an epoch record (``None`` when absent).

    Returns:
        ``(epochs, values, mean, std)``: the epoch numbers ``(K,)``, the values ``(S, K)`` (NaN
        where a seed has no record or value), and over the seeds that have a value the mean
        and the standard deviation (Bessel-corrected; NaN with fewer than two values).
    """
    epochs = sorted({int(r["epoch"]) for h in runs for r in h})
    col = {e: i for i, e in enumerate(epochs)}
    values = np.full((len(runs), len(epochs)), np.nan)
    for s, h in enumerate(runs):
        for r in h:
            v = get(r)
            if v is not None:
                values[s, col[int(r["epoch"])]] = float(v)
    ok = ~np.isnan(values)
    count = ok.sum(0)
    total = np.where(ok, values, 0.0).sum(0)
    mean = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    dev = np.where(ok, values - mean, 0.0)
    var = np.where(count > 1, (dev**2).sum(0) / np.maximum(count - 1, 1), np.nan)
    return np.asarray(epochs, dtype=float), values, mean, np.sqrt(var)


def _getter(split: str, task: str, metric: str) -> Callable[[Mapping[str, Any]], float | None]:
    if split == "train":
        return lambda r: r.get("train", {}).get(task) if metric == "loss" else None
    if split == "val":
        return lambda r: (r.get("val") or {}).get(task, {}).get(metric)
    raise ValueError(f"split must be 'train' or 'val'; got {split!r}.")


def _draw(
    ax: Any,
    x: np.ndarray,
    values: np.ndarray,
    mean: np.ndarray,
    std: np.ndarray,
    *,
    label: str,
    color: Any,
    style: str,
    band: bool,
    show_seeds: bool,
) -> None:
    if show_seeds and values.shape[0] > 1:
        for row in values:
            ax.plot(x, row, color=color, linestyle=style, alpha=0.3, linewidth=0.8, label="_nolegend_")
    ax.plot(x, mean, color=color, linestyle=style, label=label)
    if band and values.shape[0] > 1 and np.isfinite(std).any():
        ax.fill_between(x, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _tasks_of(runs: Mapping[str, list[History]]) -> list[str]:
    names: dict[str, None] = {}
    for hs in runs.values():
        for h in hs:
            for r in h:
                names.update(dict.fromkeys(r.get("train", {})))
                names.update(dict.fromkeys(r.get("val") or {}))
    return list(names)


def plot_loss_curves(
    histories: Histories,
    *,
    tasks: Sequence[str] | None = None,
    splits: Sequence[str] = ("train", "val"),
    metric: str = "loss",
    band: bool = True,
    show_seeds: bool = False,
    log_scale: bool = False,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Per-task curves over epochs (MMoE paper, Figure 4): one panel per task, one colour per
    model (label), solid for training and dashed for validation, mean over seeds ± 1 std.

    Args:
        histories: ``{label: [history per seed]}``.
        tasks: panels to draw (default: every task in the histories).
        splits: ``"train"`` (the epoch's mean training loss) and/or ``"val"`` (the validation
            ``metric``); training curves exist only for ``metric="loss"``.
        metric: validation metric to draw (``"loss"``, ``"auc"``...).
        band: shade mean ± std over seeds. show_seeds: also draw each seed thinly.
        log_scale: logarithmic y axis.
        title: figure title. path: also write a PNG here.

    Returns:
        The figure; the mean line of ``label`` on ``split`` is labelled ``"<label> <split>"``.
    """
    runs = _runs(histories)
    tasks = list(tasks) if tasks is not None else _tasks_of(runs)
    fig, axes = _figure(max(1, len(tasks)))
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for ax, task in zip(axes, tasks):
        for (label, hs), color in zip(runs.items(), colors):
            for split in splits:
                x, values, mean, std = series(hs, _getter(split, task, metric))
                if not np.isfinite(values).any():
                    continue
                style = "-" if split == "train" else "--"
                _draw(
                    ax,
                    x,
                    values,
                    mean,
                    std,
                    label=f"{label} {split}",
                    color=color,
                    style=style,
                    band=band,
                    show_seeds=show_seeds,
                )
        ax.set_title(task)
        _epoch_axis(ax)
        ax.set_ylabel(metric)
        if log_scale:
            ax.set_yscale("log")
        if ax.lines:
            ax.legend(fontsize="small")
    return _finish(fig, path, title)


def plot_weight_trajectories(
    histories: Histories,
    *,
    key: str = "weights",
    band: bool = True,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Loss-weight trajectories: one panel per model (label), one line per task (the epoch's
    mean effective weight, ``history[i]["weights"]``), mean over seeds ± 1 std.

    Args:
        histories: ``{label: [history per seed]}``.
        key: the record field holding ``{task: weight}``.
        band: shade mean ± std over seeds.
        title: figure title. path: also write a PNG here.

    Returns:
        The figure; in the panel of each label, the line of task ``t`` is labelled ``t``.
    """
    runs = _runs(histories)
    fig, axes = _figure(max(1, len(runs)))
    for ax, (label, hs) in zip(axes, runs.items()):
        names = list(dict.fromkeys(t for h in hs for r in h for t in r.get(key, {})))
        for i, task in enumerate(names):
            x, values, mean, std = series(hs, lambda r, t=task: r.get(key, {}).get(t))
            _draw(
                ax,
                x,
                values,
                mean,
                std,
                label=task,
                color=f"C{i % 10}",
                style="-",
                band=band,
                show_seeds=False,
            )
        ax.set_title(label)
        _epoch_axis(ax)
        ax.set_ylabel("task weight")
        if ax.lines:
            ax.legend(fontsize="small")
    return _finish(fig, path, title)


def _as_stats(s: GateStats | Mapping[str, Any]) -> GateStats:
    return s if isinstance(s, GateStats) else GateStats.from_dict(s)


def plot_gate_distributions(
    stats: Mapping[str, GateStats | Mapping[str, Any]],
    *,
    kind: str = "box",
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Distribution of each expert's gate weight, one panel per gate (task) (MMoE paper, Figure 6).

    Args:
        stats: ``{name: GateStats}`` from :func:`~mtlkit.analysis.gate_statistics` (or the
            ``to_dict()`` form).
        kind: ``"box"``: a box per expert (quartiles, whiskers at the 5th and 95th percentiles,
            a triangle at the mean); ``"hist"``: each expert's histogram as a step line of the
            fraction of samples per bin.
        title: figure title. path: also write a PNG here.

    Returns:
        The figure. Box medians are ``Line2D`` with ``ydata == [median, median]``; histograms are
        ``StepPatch`` artists labelled ``"expert <e>"``.
    """
    if kind not in ("box", "hist"):
        raise ValueError(f"kind must be 'box' or 'hist'; got {kind!r}.")
    items = {name: _as_stats(s) for name, s in stats.items()}
    fig, axes = _figure(max(1, len(items)))
    levels = list(QUANTILE_LEVELS)
    for ax, (name, st) in zip(axes, items.items()):
        q = st.quantiles.double().numpy()
        if kind == "box":
            boxes = [
                {
                    "label": str(e),
                    "whislo": q[levels.index(0.05), e],
                    "q1": q[levels.index(0.25), e],
                    "med": q[levels.index(0.5), e],
                    "q3": q[levels.index(0.75), e],
                    "whishi": q[levels.index(0.95), e],
                    "mean": float(st.mean[e]),
                    "fliers": [],
                }
                for e in range(st.num_experts)
            ]
            ax.bxp(boxes, showmeans=True, showfliers=False)
            ax.set_xlabel("expert")
            ax.set_ylabel("gate weight")
        else:
            edges = st.bin_edges.double().numpy()
            frac = st.counts.double().numpy() / max(st.num_samples, 1)
            for e in range(st.num_experts):
                ax.stairs(frac[e], edges, label=f"expert {e}", color=f"C{e % 10}")
            ax.set_xlabel("gate weight")
            ax.set_ylabel("fraction of samples")
            ax.legend(fontsize="x-small", ncols=2)
        ax.set_title(f"{name} (effective experts {st.effective_experts:.2f})")
    return _finish(fig, path, title)


def plot_gate_means(
    stats: Mapping[str, GateStats | Mapping[str, Any]],
    *,
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
) -> Any:
    """Heat map of the mean gate weight of every expert (columns) for every gate (rows).

    Gates with different numbers of experts are padded with NaN (blank cells).
    Returns the figure; its image array is the ``(gates, experts)`` matrix of means.
    """
    items = {name: _as_stats(s) for name, s in stats.items()}
    width = max((s.num_experts for s in items.values()), default=1)
    matrix = np.full((len(items), width), np.nan)
    for i, s in enumerate(items.values()):
        matrix[i, : s.num_experts] = s.mean.double().numpy()
    Figure, Canvas = _mpl()
    fig = Figure(figsize=(1.2 + 0.6 * width, 1.2 + 0.5 * len(items)), layout="constrained")
    Canvas(fig)
    ax = fig.subplots()
    im = ax.imshow(matrix, aspect="auto", cmap="viridis", vmin=0.0)
    ax.set_xticks(range(width))
    ax.set_yticks(range(len(items)), labels=list(items))
    ax.set_xlabel("expert")
    fig.colorbar(im, ax=ax, label="mean gate weight")
    return _finish(fig, path, title)


def final_values(
    histories: Histories,
    *,
    split: str = "train",
    metric: str = "loss",
    task: str | None = None,
) -> dict[str, list[float]]:
    """The last epoch's value of every run: ``{label: [value per seed]}``.

    Args:
        histories: ``{label: [history per seed]}``.
        split: ``"train"`` (training loss) or ``"val"`` (validation ``metric``).
        metric: the validation metric (training histories hold only the loss).
        task: one task, or ``None`` for the mean over the tasks.
    """
    out: dict[str, list[float]] = {}
    for label, hs in _runs(histories).items():
        vals = []
        for h in hs:
            if not h:
                continue
            last = h[-1]
            names = [task] if task is not None else list(last.get("train", {}) or (last.get("val") or {}))
            got = [_getter(split, t, metric)(last) for t in names]
            vals.append(math.nan if any(v is None for v in got) else float(np.mean(got)))
        out[label] = vals
    return out


STRIP_MAX_RUNS = 30  # up to this many runs per model a strip plot shows every run; above, histograms


def draw_final_losses(
    ax: Any, values: Mapping[str, Sequence[float]], *, bins: int = 20, strip_max_runs: int = STRIP_MAX_RUNS
) -> None:
    """Draw each model's final losses over runs on ``ax`` (MMoE paper, Figure 5: trainability),
    readable at any number of runs and with no legend over the data: one row per model, named on
    the y axis (the first model on top).

    With at most ``strip_max_runs`` runs per model (the quick defaults: a few seeds) a strip plot:
    one dot per run and a bar at the median (a histogram of three values says nothing). With more
    runs, each model's histogram in its own row over bins shared by the models (step lines, counts
    scaled to the row's height), so the models never hide each other. The x axis is logarithmic
    when the losses span more than a factor of 20. NaN values are left out.

    Artists: strip plot: each model's runs are a ``PathCollection`` labelled with the model's label
    (its offsets are the values); histograms: each model's counts are a ``StepPatch`` labelled with
    the model's label.
    """
    clean = {k: np.asarray([v for v in vs if not math.isnan(v)], dtype=float) for k, vs in values.items()}
    labels = list(clean)
    every = np.concatenate(list(clean.values())) if clean else np.empty(0)
    log = bool(every.size) and float(every.min()) > 0 and float(every.max()) > 20 * float(every.min())
    rows = np.arange(len(labels))[::-1]
    if every.size and max(len(v) for v in clean.values()) <= strip_max_runs:
        rng = np.random.default_rng(0)
        for i, v in enumerate(clean.values()):
            y = rows[i] + rng.uniform(-0.15, 0.15, size=v.size)
            ax.scatter(v, y, s=22, color=f"C{i % 10}", alpha=0.8, label=labels[i], zorder=3)
            if v.size:
                med = float(np.median(v))
                ax.plot([med, med], [rows[i] - 0.3, rows[i] + 0.3], color="black", linewidth=1.5)
    elif every.size:
        from matplotlib.transforms import Affine2D

        lo, hi = float(every.min()), float(every.max())
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
        for i, v in enumerate(clean.values()):
            counts, _ = np.histogram(v, bins=edges)
            scale = 0.8 / counts.max() if counts.max() > 0 else 0.0
            step = ax.stairs(counts, edges, baseline=0, label=labels[i], color=f"C{i % 10}", linewidth=1.5)
            step.set_transform(Affine2D().scale(1.0, scale).translate(0.0, rows[i] - 0.4) + ax.transData)
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


def plot_final_loss_histogram(
    values: Mapping[str, Sequence[float]],
    *,
    bins: int = 20,
    xlabel: str = "final training loss",
    title: str | None = None,
    path: str | os.PathLike[str] | None = None,
    strip_max_runs: int = STRIP_MAX_RUNS,
) -> Any:
    """Final losses over runs per model (MMoE paper, Figure 5: trainability; a model that is easy to
    train has its runs bunched at low losses), drawn by :func:`draw_final_losses`: a strip plot with
    at most ``strip_max_runs`` runs per model, else one histogram row per model.

    Args:
        values: ``{label: [final loss per run]}`` (see :func:`final_values`); NaN values are left out.
        bins: number of histogram bins, shared by all models (over the range of all values).
        xlabel, title: axis label and figure title. path: also write a PNG here.

    Returns:
        The figure (artists: see :func:`draw_final_losses`).
    """
    clean = {k: [v for v in vs if not math.isnan(v)] for k, vs in values.items()}
    if not any(clean.values()):
        raise ValueError("plot_final_loss_histogram needs at least one finite value.")
    fig, (ax,) = _figure(1, panel=(5.5, max(2.5, 0.55 * len(values) + 1.2)))
    draw_final_losses(ax, values, bins=bins, strip_max_runs=strip_max_runs)
    ax.set_xlabel(xlabel)
    return _finish(fig, path, title)


def write_experiment_plots(
    out_dir: str | os.PathLike[str], histories: Histories, *, title: str | None = None
) -> dict[str, Path]:
    """The standard plots of an experiment into ``out_dir``: ``loss_curves.png`` (train and
    validation loss per task), ``weights.png`` (loss-weight trajectories) and
    ``final_loss.png`` (histogram of the final mean training loss over runs).

    Returns:
        ``{"loss_curves": path, "weights": path, "final_loss": path}``.
    """
    out = Path(out_dir)
    paths = {
        "loss_curves": out / "loss_curves.png",
        "weights": out / "weights.png",
        "final_loss": out / "final_loss.png",
    }
    prefix = f"{title}: " if title else ""
    plot_loss_curves(histories, title=f"{prefix}loss curves", path=paths["loss_curves"])
    plot_weight_trajectories(histories, title=f"{prefix}task weights", path=paths["weights"])
    plot_final_loss_histogram(
        final_values(histories), title=f"{prefix}final training loss", path=paths["final_loss"]
    )
    return paths
