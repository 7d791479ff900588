"""``balancers``: every registered loss weighting and gradient aggregator on one data set and one
shared model, ranked by Δm against single-task models."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mtlkit.analysis import plot_weight_trajectories
from mtlkit.config.components import FAMILIES
from mtlkit.experiment import RunResult, aggregate
from mtlkit.report import write_tables
from mtlkit.reproduce._base import (
    REPRODUCTIONS,
    Job,
    JobResult,
    Report,
    Settings,
    registered_without_required,
)
from mtlkit.reproduce.plots import plot_bars
from mtlkit.reproduce.tables import Column, markdown_table, mean_std, write_table
from mtlkit.seed_report import cap_bound, cap_note

__all__ = ["Balancers"]

PAPER = (
    "Loss balancing methods side by side, as in the benchmarks of LibMTL (Lin & Zhang, JMLR 2023) "
    "and Nash-MTL (Navon et al., ICML 2022), on the MMoE paper's synthetic data (Ma et al., KDD 2018)."
)

_SHARED_MODEL = {"name": "mmoe", "num_experts": 8, "expert_dims": [16], "tower_dims": [8]}
_BASELINE_MODEL = {"name": "single_task", "hidden_dims": [64]}


@REPRODUCTIONS.register("balancers")
class Balancers:
    """Every loss weighting and gradient aggregator with MMoE on synthetic data (p=0.5), Δm vs single-task."""

    paper: ClassVar[str] = PAPER
    minutes: ClassVar[float] = 6.0
    threads: ClassVar[int | None] = 1

    default: ClassVar[dict[str, int]] = {"seeds": 3, "n_train": 4_000, "epochs": 10}
    full: ClassVar[dict[str, int]] = {"seeds": 5, "n_train": 10_000, "epochs": 50}

    def plan(self, settings: Settings) -> list[Job]:
        """One experiment per method (all seeds): the single-task baseline, then MMoE with each
        loss weighting (plain gradient), then MMoE with each aggregator (equal weighting).

        The methods are read from the registries when the plan is made, so newly registered
        methods are included; those whose builder has a required parameter without a default
        (``static`` needs hand-set weights) are skipped and listed in the report.
        """
        scale = self.full if settings.full else self.default
        seeds = settings.seed_list(default=self.default["seeds"], full=self.full["seeds"])
        base = {
            "seeds": seeds,
            "data": {
                "name": "synthetic_correlation",
                "correlation": 0.5,
                "n_train": scale["n_train"],
                "n_val": 0,
                "n_test": 2_000,
                "dim": 100,
                "seed": 0,
            },
            "optimizer": {"name": "adam", "lr": 1e-2},
            "trainer": {"epochs": scale["epochs"], "batch_size": 128},
            "delta_m_metrics": ["mse"],
        }
        weightings, _ = registered_without_required(FAMILIES["weighting"].registry)
        aggregators, _ = registered_without_required(FAMILIES["aggregator"].registry)
        jobs = [
            Job(
                key="single_task",
                config={**base, "model": dict(_BASELINE_MODEL)},
                meta={"method": "single_task", "kind": "baseline"},
            )
        ]
        for w in weightings:
            jobs.append(
                Job(
                    key=f"weighting-{w}",
                    config={**base, "model": dict(_SHARED_MODEL), "weighting": {"name": w}},
                    meta={"method": w, "kind": "weighting"},
                )
            )
        for a in aggregators:
            jobs.append(
                Job(
                    key=f"aggregator-{a}",
                    config={**base, "model": dict(_SHARED_MODEL), "aggregator": {"name": a}},
                    meta={"method": a, "kind": "aggregator"},
                )
            )
        return jobs

    def report(self, results: Sequence[JobResult], out_dir: Path, settings: Settings) -> Report:
        files: dict[str, Path] = {}
        kinds: dict[str, str] = {}
        runs: list[RunResult] = []
        for jr in results:
            label = str(jr.job.meta["method"])
            if label in kinds:  # a weighting and an aggregator of the same name
                label = f"{label} ({jr.job.meta['kind']})"
            kinds[label] = str(jr.job.meta["kind"])
            runs += [dataclasses.replace(r, label=label) for r in jr.runs]
        baseline = next((k for k, v in kinds.items() if v == "baseline"), None)
        comparison = aggregate(runs, baseline, metrics=["mse"])
        for ext, path in write_tables(
            comparison, out_dir / "tables", title="balancers: test metrics"
        ).items():
            files[f"comparison_{ext}"] = path
        tasks = list(runs[0].metrics)
        rows: list[dict[str, Any]] = []
        for label, entry in comparison["labels"].items():
            rs = [r for r in runs if r.label == label]
            row: dict[str, Any] = {
                "method": label,
                "kind": kinds[label],
                "runs": len(rs),
                "params": entry["params"],
            }
            for t in tasks:
                st = entry["metrics"][t]["mse"]
                row[f"{t}/mse"], row[f"{t}/mse_std"] = st["mean"], st["std"]
            row["delta_m"] = entry.get("delta_m", math.nan)
            row["delta_m_std"] = entry.get("delta_m_std", math.nan)
            row["seconds"], row["seconds_std"] = mean_std([r.seconds for r in rs])
            rows.append(row)
        rows.sort(key=lambda r: -math.inf if math.isnan(r["delta_m"]) else r["delta_m"], reverse=True)
        columns = [
            Column("method", "method", "text"),
            Column("kind", "kind", "text"),
            *(Column(f"{t}/mse", f"{t} test MSE ↓", "mean_std") for t in tasks),
            Column("delta_m", f"Δm vs {baseline} ↑", "percent_std"),
            Column("seconds", "train s/run", "mean_std", 1),
            Column("params", "params", "int"),
        ]
        _, skipped_w = registered_without_required(FAMILIES["weighting"].registry)
        _, skipped_a = registered_without_required(FAMILIES["aggregator"].registry)
        skipped = {**skipped_w, **skipped_a}
        n = max((r["runs"] for r in rows), default=0)
        cfg = results[0].experiment.config
        notes = [
            f"Data: {_describe_data(cfg.data)}. Training: Adam (lr {cfg.optimizer.get('lr')}), batch "
            f"{cfg.trainer.batch_size}, {cfg.trainer.epochs} epochs, no early stopping.",
            f"Mean ± std over {n} seeds (model initialisation; one fixed data set). Weightings run with the "
            "plain summed gradient, aggregators with equal weighting; all with MMoE (8 experts of 16 units, "
            "towers of 8). Δm: mean relative test-MSE improvement over the single-task models, in %, "
            "sorted best first. train s/run: training wall time per run (shared machine: times are inflated "
            "and comparable only within this table).",
        ]
        bound = cap_bound(runs, cfg.trainer.epochs)
        notes.append(
            cap_note(bound, len(runs), cfg.trainer.epochs)
            or f"The epoch cap ({cfg.trainer.epochs}) bound no run: every run's best validation loss came before its last epoch."
        )
        if skipped:
            notes.append("Not run: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()) + ".")
        title = "Loss weightings and gradient aggregators: Δm against single-task models"
        for ext, path in write_table(rows, columns, out_dir, "results", title=title, notes=notes).items():
            files[f"results_{ext}"] = path
        files["delta_m"] = out_dir / "delta_m.png"
        palette = {"baseline": "C7", "weighting": "C0", "aggregator": "C1"}
        plot_bars(
            [r["method"] for r in rows],
            [0.0 if math.isnan(r["delta_m"]) else r["delta_m"] for r in rows],
            [r["delta_m_std"] for r in rows],
            colors=[palette.get(r["kind"], "C2") for r in rows],
            title="Δm vs single-task (blue: loss weightings, orange: aggregators)",
            path=files["delta_m"],
        )
        weighted = {
            label: [r.history for r in runs if r.label == label]
            for label, kind in kinds.items()
            if kind == "weighting"
        }
        if weighted:
            files["weights"] = out_dir / "weights.png"
            plot_weight_trajectories(
                weighted, title="Loss weights per epoch (mean over seeds)", path=files["weights"]
            )
        md = markdown_table(rows, columns, title=title, notes=notes)
        md += (
            "\nPlots: "
            + ", ".join(f"`{files[k].name}`" for k in ("delta_m", "weights") if k in files)
            + ".\n"
        )
        return Report(md, files)


def _describe_data(data: dict[str, Any]) -> str:
    if data.get("name") in ("synthetic_correlation", "synthetic"):
        return (
            f"MMoE synthetic regression pair, correlation {data.get('correlation')}, "
            f"{data.get('n_train'):,} training and {data.get('n_test'):,} test samples"
        )
    return str(data.get("name"))
