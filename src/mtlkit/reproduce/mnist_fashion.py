"""``mnist-fashion``: seed 000's experiment, single-task CNNs against one CNN shared by MNIST digits
and Fashion-MNIST articles with a head per task; accuracy per task and Δm."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mtlkit.analysis import plot_loss_curves
from mtlkit.experiment import RunResult, aggregate
from mtlkit.report import write_tables
from mtlkit.reproduce._base import REPRODUCTIONS, Job, JobResult, Report, Settings
from mtlkit.reproduce.tables import Column, markdown_table, mean_std, write_table
from mtlkit.seed_report import cap_bound, cap_note

__all__ = ["MNISTFashion"]

PAPER = (
    "Seed 000 (shared/seeds/000: 'Multi-task to MNIST + Fashion MNIST', after a TensorFlow post by "
    "YangTao, 2019): one CNN shared by the two data sets, one head per task."
)


@REPRODUCTIONS.register("mnist-fashion", aliases=("mnist_fashion",))
class MNISTFashion:
    """Seed 000: single-task CNNs vs one CNN shared by MNIST and Fashion-MNIST (two heads); accuracy, Δm."""

    paper: ClassVar[str] = PAPER
    minutes: ClassVar[float] = 12.0
    threads: ClassVar[int | None] = 1

    default: ClassVar[dict[str, Any]] = {
        "seeds": 3,
        "n_train": 5_000,
        "n_test": 5_000,
        "epochs": 3,
        "lr": 1e-3,
    }
    full: ClassVar[dict[str, Any]] = {"seeds": 5, "n_train": None, "n_test": None, "epochs": 20, "lr": 1e-4}

    def plan(self, settings: Settings) -> list[Job]:
        """Two experiments (all seeds): two single-task networks (each its own CNN and head) and
        one network whose CNN both tasks share. Seed 000's network and training otherwise: conv
        5x5 (32) - pool - conv 3x3 (64) - pool, heads of 1024 and 512 units with dropout 0.5,
        label smoothing 0.01, the two data sets concatenated and shuffled (each image trains its
        own task's head), Adam, batch 100. MNIST files from ``$MTLKIT_DATA`` or ``data.path=...``."""
        scale = self.full if settings.full else self.default
        seeds = settings.seed_list(default=self.default["seeds"], full=self.full["seeds"])
        base: dict[str, Any] = {
            "seeds": seeds,
            "data": {
                "name": "mnist_fashion",
                "mode": "separate",
                "n_train": scale["n_train"],
                "n_val": 2_000,
                "n_test": scale["n_test"],
                "label_smoothing": 0.01,
            },
            "backbone": {"name": "cnn", "channels": [32, 64], "kernel_sizes": [5, 3]},
            "schedule": {"name": "mixed"},
            "optimizer": {"name": "adam", "lr": scale["lr"]},
            "trainer": {"epochs": scale["epochs"], "batch_size": 100},
            "delta_m_metrics": ["accuracy"],
        }
        models = {
            # each task its own CNN (the single_task builder gives every task its own input layer)
            "single_task": {"name": "single_task", "hidden_dims": [1024, 512], "dropout": 0.5},
            # one CNN, then a 1024-512 head per task, as in the seed
            "shared_cnn": {
                "name": "shared_bottom",
                "bottom_dims": [],
                "tower_dims": [1024, 512],
                "dropout": 0.5,
            },
        }
        return [
            Job(key=label, config={**base, "model": spec}, meta={"model": label})
            for label, spec in models.items()
        ]

    def report(self, results: Sequence[JobResult], out_dir: Path, settings: Settings) -> Report:
        files: dict[str, Path] = {}
        runs: list[RunResult] = [r for jr in results for r in jr.runs]
        labels = list(dict.fromkeys(r.label for r in runs))
        baseline = "single_task" if "single_task" in labels else None
        comparison = aggregate(runs, baseline, metrics=["accuracy"])
        comparison["data"] = dict(results[0].result.comparison.get("data", {}))
        for ext, path in write_tables(
            comparison, out_dir / "tables", title="mnist-fashion: test metrics"
        ).items():
            files[f"comparison_{ext}"] = path
        tasks = list(runs[0].metrics)
        rows = []
        for label in labels:
            entry = comparison["labels"][label]
            rs = [r for r in runs if r.label == label]
            row: dict[str, Any] = {"model": label, "runs": len(rs), "params": entry["params"]}
            for t in tasks:
                st = entry["metrics"][t]["accuracy"]
                row[f"{t}/accuracy"], row[f"{t}/accuracy_std"] = st["mean"], st["std"]
            row["delta_m"] = entry.get("delta_m", math.nan)
            row["delta_m_std"] = entry.get("delta_m_std", math.nan)
            row["seconds"], row["seconds_std"] = mean_std([r.seconds for r in rs])
            rows.append(row)
        columns = [
            Column("model", "model", "text"),
            Column("runs", "runs", "int"),
            *(Column(f"{t}/accuracy", f"{t} test accuracy ↑", "mean_std") for t in tasks),
            Column("delta_m", f"Δm vs {baseline} (accuracy)", "percent_std"),
            Column("params", "params", "int"),
            Column("seconds", "train s/run", "mean_std", 1),
        ]
        cfg = results[0].experiment.config
        d = cfg.data
        counts = comparison["data"].get("rows", {})

        def per_task(split: str) -> str:
            c = counts.get(split, {})
            return ", ".join(f"{t} {n:,}" for t, n in c.items()) or "?"

        notes = [
            f"Images per task: train {per_task('train')}; validation {per_task('val')}; test {per_task('test')}. "
            f"Adam (lr {cfg.optimizer.get('lr')}), batch {cfg.trainer.batch_size}, {cfg.trainer.epochs} epochs, "
            f"label smoothing {d.get('label_smoothing')}, dropout 0.5, both data sets shuffled together "
            "(schedule 'mixed').",
            f"Mean ± std over {max((r['runs'] for r in rows), default=0)} seeds (initialisation and batch "
            "order; the same images). Δm: relative test-accuracy improvement over the single-task CNNs, in "
            "% (of the means; ± the std over seeds of each seed's Δm).",
        ]
        bound = cap_bound(runs, cfg.trainer.epochs)
        notes.append(
            cap_note(bound, len(runs), cfg.trainer.epochs)
            or f"The epoch cap ({cfg.trainer.epochs}) bound no run: every run's best validation loss came before its last epoch."
        )
        title = "MNIST + Fashion-MNIST: single-task CNNs vs one shared CNN (seed 000)"
        for ext, path in write_table(rows, columns, out_dir, "results", title=title, notes=notes).items():
            files[f"results_{ext}"] = path
        histories = {label: [r.history for r in runs if r.label == label] for label in labels}
        files["loss_curves"] = out_dir / "loss_curves.png"
        plot_loss_curves(
            histories, title="Training and validation loss (mean over seeds)", path=files["loss_curves"]
        )
        files["accuracy_curves"] = out_dir / "accuracy_curves.png"
        plot_loss_curves(
            histories,
            splits=("val",),
            metric="accuracy",
            title="Validation accuracy (mean over seeds)",
            path=files["accuracy_curves"],
        )
        md = markdown_table(rows, columns, title=title, notes=notes)
        md += "\nPlots: `loss_curves.png`, `accuracy_curves.png`.\n"
        return Report(md, files)
