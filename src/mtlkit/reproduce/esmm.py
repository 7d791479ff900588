"""``esmm``: a CVR model trained on clicked impressions only against ESMM (Ma et al., SIGIR 2018),
scored over all impressions on synthetic data whose true conversions are known everywhere."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from mtlkit.config.load import load_preset
from mtlkit.experiment import RunResult, aggregate
from mtlkit.report import write_tables
from mtlkit.reproduce._base import REPRODUCTIONS, Job, JobResult, Report, Settings
from mtlkit.reproduce.tables import Column, markdown_table, mean_std, write_table

__all__ = ["ESMMReproduction", "ali_ccp_dir"]

PAPER = (
    "Ma et al., Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click "
    "Conversion Rate, SIGIR 2018 (the BASE CVR model trained on clicked impressions vs ESMM)."
)

VARIANTS: dict[str, dict[str, Any]] = {
    # the paper's BASE: the same network, its CVR tower trained on clicked impressions only
    "clicked_cvr": {"data": {"task_set": "clicked_cvr"}},
    "esmm": {"data": {"task_set": "esmm"}},
    # ESMM over MMoE: the two towers read per-task mixtures of shared experts
    "esmm_mmoe": {
        "data": {"task_set": "esmm"},
        "model": {
            "name": "esmm",
            "base": {"name": "mmoe", "num_experts": 4, "expert_dims": [64], "tower_dims": [32]},
        },
    },
}


def ali_ccp_dir() -> str | None:
    """``$MTLKIT_DATA`` when it holds the Ali-CCP sample (``ali-ccp-sample/`` or the files themselves)."""
    root = os.environ.get("MTLKIT_DATA")
    if not root:
        return None
    for d in (Path(root) / "ali-ccp-sample", Path(root)):
        if (d / "ali_ccp_train_sample.csv").is_file():
            return root
    return None


@REPRODUCTIONS.register("esmm")
class ESMMReproduction:
    """ESMM vs a CVR model trained on clicked impressions: CVR and CTCVR AUC over all impressions."""

    paper: ClassVar[str] = PAPER
    minutes: ClassVar[float] = 1.2
    threads: ClassVar[int | None] = 1

    default: ClassVar[dict[str, Any]] = {"seeds": 3, "n_train": 20_000, "n_val": 5_000, "n_test": 20_000}
    full: ClassVar[dict[str, Any]] = {"seeds": 10, "n_train": 200_000, "n_val": 50_000, "n_test": 200_000}

    def plan(self, settings: Settings) -> list[Job]:
        """One experiment per model (all seeds), on the ``esmm`` preset's protocol: synthetic
        impressions with click-selection bias, early stopping on the validation losses, test
        ``cvr`` labels = the latent conversion of every impression. With ``$MTLKIT_DATA`` holding
        the Ali-CCP sample, a smoke run of ESMM on those real impressions is added."""
        scale = self.full if settings.full else self.default
        seeds = settings.seed_list(default=self.default["seeds"], full=self.full["seeds"])
        preset = load_preset("esmm")
        base = {k: v for k, v in preset.items() if k not in ("compare", "baseline", "name", "description")}
        base["seeds"] = seeds
        base["data"] = {**base["data"], **{k: scale[k] for k in ("n_train", "n_val", "n_test")}}
        jobs = []
        for label, variant in VARIANTS.items():
            config = dict(base)
            config["data"] = {**base["data"], **variant["data"]}
            if "model" in variant:
                config["model"] = variant["model"]
            jobs.append(Job(key=label, config=config, meta={"model": label, "data": "synthetic"}))
        path = ali_ccp_dir()
        if path is not None:
            smoke = {k: v for k, v in load_preset("ali-ccp-esmm").items() if k not in ("name", "description")}
            smoke["data"] = {**smoke["data"], "path": path}
            smoke["seeds"] = seeds
            meta = {"model": "esmm", "data": "ali_ccp_sample"}
            jobs.append(Job(key="ali_ccp_esmm", config=smoke, meta=meta, overridable=False))
        return jobs

    def report(self, results: Sequence[JobResult], out_dir: Path, settings: Settings) -> Report:
        files: dict[str, Path] = {}
        synthetic = [jr for jr in results if jr.job.meta.get("data") == "synthetic"]
        runs: list[RunResult] = [r for jr in synthetic for r in jr.runs]
        labels = list(dict.fromkeys(r.label for r in runs))
        baseline = "clicked_cvr" if "clicked_cvr" in labels else None
        comparison = aggregate(runs, baseline, metrics=["auc"])
        info = dict(synthetic[0].result.comparison.get("data", {})) if synthetic else {}
        comparison["data"] = info
        for ext, path in write_tables(comparison, out_dir / "tables", title="esmm: test metrics").items():
            files[f"comparison_{ext}"] = path
        rows = []
        base_runs = {r.seed: r for r in runs if r.label == baseline}
        for label in labels:
            entry = comparison["labels"][label]
            rs = [r for r in runs if r.label == label]
            row: dict[str, Any] = {"model": label, "runs": len(rs), "params": entry["params"]}
            for task in ("ctr", "ctcvr", "cvr"):
                st = entry["metrics"].get(task, {}).get("auc")
                if st is not None:
                    row[f"{task}/auc"], row[f"{task}/auc_std"] = st["mean"], st["std"]
            if label != baseline:
                paired = [
                    (
                        r.metrics["cvr"]["auc"] - base_runs[r.seed].metrics["cvr"]["auc"],
                        r.metrics["ctcvr"]["auc"] - base_runs[r.seed].metrics["ctcvr"]["auc"],
                    )
                    for r in rs
                    if r.seed in base_runs
                ]
                if paired:
                    row["cvr_wins"] = f"{sum(d[0] > 0 for d in paired)}/{len(paired)}"
                    row["ctcvr_wins"] = f"{sum(d[1] > 0 for d in paired)}/{len(paired)}"
                    row["delta_cvr"], row["delta_cvr_std"] = mean_std([d[0] for d in paired])
                    row["delta_ctcvr"], row["delta_ctcvr_std"] = mean_std([d[1] for d in paired])
            row["seconds"] = entry["seconds"]
            rows.append(row)
        columns = [
            Column("model", "model", "text"),
            Column("runs", "runs", "int"),
            Column("ctr/auc", "CTR AUC", "mean_std"),
            Column("ctcvr/auc", "CTCVR AUC", "mean_std"),
            Column("cvr/auc", "CVR AUC (all impressions)", "mean_std"),
            Column("delta_cvr", f"CVR AUC − {baseline}", "mean_std"),
            Column("cvr_wins", "CVR wins", "text"),
            Column("delta_ctcvr", f"CTCVR AUC − {baseline}", "mean_std"),
            Column("ctcvr_wins", "CTCVR wins", "text"),
            Column("params", "params", "int"),
            Column("seconds", "s/run", "seconds"),
        ]
        cfg = synthetic[0].experiment.config if synthetic else None
        notes = []
        if cfg is not None:
            d = cfg.data
            notes.append(
                f"Data: synthetic impressions (`synthetic_ctr_cvr`), {d.get('n_train'):,} / {d.get('n_val'):,} / "
                f"{d.get('n_test'):,} train / validation / test, dim {d.get('dim')}, CTR {d.get('ctr')}, CVR "
                f"{d.get('cvr')}, selection bias {d.get('selection_bias')}, correlation {d.get('correlation')}, "
                f"data seed {d.get('seed')}. Oracle CVR AUC (true pCVR on the test impressions): "
                f"{info.get('oracle_test_cvr_auc', math.nan):.4f}."
            )
            notes.append(
                f"Training: Adam (lr {cfg.optimizer.get('lr')}), batch {cfg.trainer.batch_size}, at most "
                f"{cfg.trainer.epochs} epochs, early stopping on the validation mean loss (patience "
                f"{cfg.trainer.early_stopping.patience if cfg.trainer.early_stopping else '-'})."
            )
        notes.append(
            "AUCs over all test impressions, mean ± std over seeds (initialisation and batch order); CVR "
            "against the latent conversion label of every impression, CTCVR = click and conversion. "
            f"Differences and wins are paired by seed against {baseline} (the same network with its CVR "
            "tower trained on clicked impressions only)."
        )
        title = "ESMM vs a CVR model trained on clicked impressions (test AUC over all impressions)"
        for ext, path in write_table(rows, columns, out_dir, "results", title=title, notes=notes).items():
            files[f"results_{ext}"] = path
        md = markdown_table(rows, columns, title=title, notes=notes)
        smoke = [jr for jr in results if jr.job.meta.get("data") == "ali_ccp_sample"]
        if smoke:
            srows = []
            for jr in smoke:
                for r in jr.runs:
                    srow = {"model": r.label, "seed": r.seed}
                    for task in ("ctr", "ctcvr", "cvr"):
                        srow[f"{task}/auc"] = r.metrics.get(task, {}).get("auc", math.nan)
                    srows.append(srow)
            scols = [
                Column("model", "model", "text"),
                Column("seed", "seed", "int"),
                *(Column(f"{t}/auc", f"{t.upper()} AUC", "float") for t in ("ctr", "ctcvr", "cvr")),
            ]
            snotes = [
                "Smoke check on the test file of the real Ali-CCP sample (50 impressions, 2 clicks, 1 purchase; "
                "the CVR AUC is over the clicked impressions only, hence 0 or 1): it shows that the real-data "
                "path runs; the AUCs mean nothing at this size."
            ]
            stitle = "Ali-CCP sample (smoke check)"
            for ext, path in write_table(
                srows, scols, out_dir, "ali_ccp_smoke", title=stitle, notes=snotes
            ).items():
                files[f"ali_ccp_{ext}"] = path
            md += "\n" + markdown_table(srows, scols, title=stitle, notes=snotes)
        return Report(md, files)
