"""What the mean ± std over seeds hides: paired wins across seeds (with the median and range of each
variant's per-seed Δm) and the runs whose epoch cap bound (best epoch = last epoch)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from rich.table import Table

__all__ = ["cap_bound", "cap_note", "paired_wins", "wins_markdown", "wins_table"]


class _Run(Protocol):
    label: str
    seed: int
    epochs: int
    best_epoch: int | None
    history: list[dict[str, Any]]


def _best_from_history(history: Sequence[Mapping[str, Any]]) -> int | None:
    """The epoch of the lowest monitored value in a history (``None`` without one). Used when no
    early-stopping rule tracked the run; the trainer's default monitor is a loss (lower is better)."""
    values = [
        (h["monitor"]["value"], h["epoch"])
        for h in history
        if isinstance(h.get("monitor"), Mapping) and isinstance(h["monitor"].get("value"), (int, float))
        and math.isfinite(h["monitor"]["value"])
    ]
    return min(values)[1] if values else None


def cap_bound(runs: Sequence[_Run], cap: Mapping[str, int] | int) -> list[str]:
    """``"<label> seed <s>"`` of every run that trained all its ``cap`` epochs and whose best epoch
    is its last: the cap stopped a run that was still improving. ``cap``: one epoch cap, or one per
    label."""
    out = []
    for r in runs:
        limit = cap if isinstance(cap, int) else cap.get(r.label)
        best = r.best_epoch if r.best_epoch is not None else _best_from_history(r.history)
        if limit is not None and r.epochs >= limit and best is not None and best >= r.epochs:
            out.append(f"{r.label} seed {r.seed}")
    return out


def cap_note(bound: Sequence[str], total: int, epochs: int | None = None) -> str:
    """One line saying which runs the epoch cap bound ('' when none)."""
    if not bound:
        return ""
    cap = f" ({epochs})" if epochs is not None else ""
    return (
        f"Epoch cap{cap} binding in {len(bound)} of {total} runs (best epoch = last epoch, still improving): "
        f"{', '.join(bound)}. Their metrics are not converged; raise trainer.epochs."
    )


def paired_wins(comparison: Mapping[str, Any]) -> dict[str, Any] | None:
    """Per-seed Δm (vs the baseline's means) of every variant, paired by seed: ``{"labels": {label:
    {"median", "min", "max", "seeds"}}, "wins": {row: {column: (k, n)}}}``, where the row beats the
    column on k of the n seeds both ran (higher Δm). ``None`` without per-seed Δm or with one seed."""
    labels = comparison.get("labels", {})
    per_seed: dict[str, dict[int, float]] = {}
    for label, entry in labels.items():
        values = entry.get("delta_m_values")
        if not values:
            return None
        per_seed[label] = {s: v for s, v in zip(entry["seeds"], values, strict=True) if not math.isnan(v)}
    if max((len(v) for v in per_seed.values()), default=0) < 2:
        return None
    out: dict[str, Any] = {"labels": {}, "wins": {}, "baseline": comparison.get("baseline")}
    for label, vals in per_seed.items():
        xs = list(vals.values())
        out["labels"][label] = {
            "median": statistics.median(xs) if xs else math.nan,
            "min": min(xs, default=math.nan),
            "max": max(xs, default=math.nan),
            "seeds": len(xs),
        }
        out["wins"][label] = {}
        for other, ovals in per_seed.items():
            if other == label:
                continue
            common = [s for s in vals if s in ovals]
            out["wins"][label][other] = (sum(vals[s] > ovals[s] for s in common), len(common))
    return out


def _range(st: Mapping[str, float]) -> str:
    if math.isnan(st["median"]):
        return "n/a"
    return f"{st['median']:+.1f}% [{st['min']:+.1f}, {st['max']:+.1f}]"


def wins_table(wins: Mapping[str, Any], *, title: str = "paired over seeds") -> Table:
    """The rich table of :func:`paired_wins`: per-seed Δm median [min, max] and wins against each variant."""
    labels = list(wins["labels"])
    table = Table(
        title=title,
        title_justify="left",
        caption=(
            f"Δm per seed vs the mean of {wins['baseline']!r}; 'beats X': seeds on which this row's Δm is "
            "higher than X's at the same seed (same data; models built from the same parts get the same "
            "initialisation from a seed, so a bad start counts for both)."
        ),
        caption_justify="left",
    )
    table.add_column("model", style="bold", no_wrap=True, min_width=max(len(x) for x in labels))
    table.add_column("Δm median [min, max]", justify="right", no_wrap=True)
    for other in labels:
        table.add_column(f"beats {other}", justify="right", overflow="fold")
    for label in labels:
        cells = [_range(wins["labels"][label])]
        for other in labels:
            k_n = wins["wins"][label].get(other)
            cells.append("—" if k_n is None else f"{k_n[0]}/{k_n[1]}")
        table.add_row(label, *cells)
    return table


def wins_markdown(wins: Mapping[str, Any]) -> str:
    labels = list(wins["labels"])
    lines = [
        f"Paired over seeds (Δm per seed vs the mean of {wins['baseline']!r}; 'beats X': seeds on which the "
        "row's Δm is higher than X's):",
        "",
        "| model | Δm median [min, max] | " + " | ".join(f"beats {x}" for x in labels) + " |",
        "|---|---:|" + "---:|" * len(labels),
    ]
    for label in labels:
        cells = [
            "—" if (k := wins["wins"][label].get(o)) is None else f"{k[0]}/{k[1]}" for o in labels
        ]
        lines.append(f"| {label} | {_range(wins['labels'][label])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
