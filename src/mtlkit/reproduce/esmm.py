"""``esmm``: ESMM (Ma et al., SIGIR 2018) against the paper's BASE and a naive CVR model, on sparse
user and item IDs where the paper's mechanism applies, scored over all impressions against
conversion labels known everywhere."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch

from mtlkit.config.load import load_preset
from mtlkit.experiment import RunResult
from mtlkit.reproduce._base import REPRODUCTIONS, Job, JobResult, Report, Settings
from mtlkit.reproduce.tables import Column, markdown_table, mean_std, write_table
from mtlkit.seed_report import cap_bound, cap_note

__all__ = ["PRESET", "VARIANTS", "ESMMReproduction", "ali_ccp_dir", "clicked_cvr_auc"]

PAPER = (
    "Ma et al., Entire Space Multi-Task Model: An Effective Approach for Estimating Post-Click "
    "Conversion Rate, SIGIR 2018 (the BASE CVR model trained on clicked impressions vs ESMM)."
)

PRESET = "esmm-ids"
"""The preset whose data, model and training protocol the reproduction runs."""

VARIANTS = ("esmm", "base", "naive", "base_shared", "esmm_ns")
"""The models (the preset's ``compare`` entries): ``esmm``; ``base``, the paper's BASE (a CVR
network with its own embeddings trained on clicked impressions, pCTCVR = pCTR of a separate CTR
network x pCVR); ``naive``, the same CVR network trained on all impressions with unclicked ones as
not converted; ``base_shared``, BASE's loss on ESMM's network (shared embeddings with the CTR
tower, CVR trained on clicks), which tells the shared embeddings apart from the entire-space loss;
``esmm_ns``, the paper's ESMM-NS: ESMM's losses without shared embeddings (separate CTR and CVR
networks)."""

BASELINE = "base"


def ali_ccp_dir() -> str | None:
    """``$MTLKIT_DATA`` when it holds the Ali-CCP sample (``ali-ccp-sample/`` or the files themselves)."""
    root = os.environ.get("MTLKIT_DATA")
    if not root:
        return None
    for d in (Path(root) / "ali-ccp-sample", Path(root)):
        if (d / "ali_ccp_train_sample.csv").is_file():
            return root
    return None


def _auc(score: torch.Tensor, label: torch.Tensor) -> float:
    from mtlkit.data.synthetic_ctr import _auc as auc

    return auc(score, label)


def clicked_cvr_auc(run_dir: Path, data: Mapping[str, Any], cache: dict[str, Any]) -> float:
    """pCVR AUC of a trained run over the *clicked* test impressions (the paper's CVR column),
    against their observed conversions; NaN when the run directory holds no checkpoint.

    ``cache`` keeps the test split per data draw: the models of one seed (whatever their
    ``task_set`` and ``train_cvr``) share it."""
    from mtlkit.config.build import build_data
    from mtlkit.runs import load_run

    if not (Path(run_dir) / "checkpoint.pt").is_file():
        return math.nan
    key = repr(sorted((k, repr(v)) for k, v in data.items() if k not in ("task_set", "train_cvr")))
    if key not in cache:
        cache[key] = build_data(dict(data)).test
    test = cache[key]
    if test is None:
        return math.nan
    run = load_run(run_dir)  # the model as its signature.json describes it, best weights
    with torch.no_grad():
        pcvr = run.model(test.inputs)["cvr"].reshape(-1).double()
    clicked = test.targets["ctr"] > 0
    return _auc(pcvr[clicked], test.targets["would_convert"][clicked])


@REPRODUCTIONS.register("esmm")
class ESMMReproduction:
    """ESMM vs the paper's BASE (CVR on clicks) and a naive CVR model, on sparse IDs: pCVR AUC over all impressions."""

    paper: ClassVar[str] = PAPER
    minutes: ClassVar[float] = 3.4  # CPU time of the default run, 2026-12-07 (one thread)
    threads: ClassVar[int | None] = 1

    default: ClassVar[dict[str, Any]] = {"seeds": 5}
    # ten times the impressions and IDs (the same impressions and clicks per ID), ten seeds
    full: ClassVar[dict[str, Any]] = {
        "seeds": 10,
        "n_train": 1_000_000,
        "n_val": 250_000,
        "n_test": 500_000,
        "n_users": 20_000,
        "n_items": 10_000,
    }

    def plan(self, settings: Settings) -> list[Job]:
        """One experiment per (model, seed) on the ``esmm-ids`` preset's protocol: every seed
        draws its own impressions (data seed = run seed) and initialisation, the same data for
        every model of a seed (paired). Early stopping on the validation pCVR loss; test ``cvr``
        labels = the latent conversion of every impression. With ``$MTLKIT_DATA`` holding the
        Ali-CCP sample, a smoke run of ESMM on those real impressions is added."""
        seeds = settings.seed_list(default=self.default["seeds"], full=self.full["seeds"])
        preset = load_preset(PRESET)
        base = {
            k: v
            for k, v in preset.items()
            if k not in ("compare", "baseline", "name", "description", "seeds")
        }
        scale = {k: v for k, v in self.full.items() if k != "seeds"} if settings.full else {}
        jobs = []
        for label in VARIANTS:
            variant = preset["compare"][label]
            for seed in seeds:
                config = dict(base)
                config["data"] = {**base["data"], **scale, **variant.get("data", {}), "seed": seed}
                if "model" in variant:
                    config["model"] = variant["model"]
                config["seeds"] = [seed]
                meta = {"model": label, "data": "synthetic", "seed": seed}
                jobs.append(Job(key=f"{label}_s{seed}", config=config, meta=meta))
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
        cache: dict[str, Any] = {}
        runs: list[RunResult] = []
        clicked: dict[tuple[str, int], float] = {}
        infos: list[dict[str, Any]] = []
        for jr in synthetic:
            label = str(jr.job.meta["model"])
            info = dict(jr.result.comparison.get("data", {}))
            if label == "esmm":
                infos.append(info)
            for r in jr.runs:
                r.label = label
                runs.append(r)
                clicked[(label, r.seed)] = clicked_cvr_auc(r.run_dir, jr.experiment.config.data, cache)
        labels = [v for v in VARIANTS if any(r.label == v for r in runs)]
        by_seed = {label: {r.seed: r for r in runs if r.label == label} for label in labels}
        rows = []
        caps = {jr.job.key: jr.experiment.config.trainer.epochs for jr in synthetic}
        cap = max(caps.values(), default=None)
        capped: list[str] = []

        def value(label: str, seed: int, metric: str) -> float:
            if metric == "cvr_clicked":
                return clicked.get((label, seed), math.nan)
            return float(by_seed[label][seed].metrics.get(metric, {}).get("auc", math.nan))

        metrics = ("ctr", "ctcvr", "cvr", "cvr_clicked")
        for label in labels:
            rs = list(by_seed[label].values())
            row: dict[str, Any] = {"model": label, "runs": len(rs)}
            for m in metrics:
                row[f"{m}/auc"], row[f"{m}/auc_std"] = mean_std(value(label, r.seed, m) for r in rs)
            if label != BASELINE and BASELINE in by_seed:
                common = [s for s in by_seed[label] if s in by_seed[BASELINE]]
                for m in ("cvr", "cvr_clicked", "ctcvr"):
                    d = [value(label, s, m) - value(BASELINE, s, m) for s in common]
                    d = [x for x in d if not math.isnan(x)]
                    if d:
                        row[f"delta_{m}"], row[f"delta_{m}_std"] = mean_std(d)
                        row[f"{m}_wins"] = f"{sum(x > 0 for x in d)}/{len(d)}"
                        row[f"{m}_paired"] = f"{row[f'delta_{m}']:+.4f} ({row[f'{m}_wins']})"
            row["params"] = rs[0].params if rs else 0
            row["epochs"] = mean_std(r.epochs for r in rs)[0]
            row["best_epoch"] = mean_std(r.best_epoch if r.best_epoch is not None else math.nan for r in rs)[
                0
            ]
            bound = cap_bound(rs, cap) if cap is not None else []
            row["capped"] = len(bound)
            capped += bound
            row["seconds"] = mean_std(r.seconds for r in rs)[0]
            rows.append(row)
        columns = [
            Column("model", "model", "text"),
            Column("runs", "runs", "int"),
            Column("cvr/auc", "CVR AUC (all impressions)", "mean_std"),
            Column("delta_cvr", f"− {BASELINE}", "mean_std"),
            Column("cvr_wins", "wins", "text"),
            Column("cvr_clicked/auc", "CVR AUC (clicked)", "mean_std"),
            Column("delta_cvr_clicked", f"− {BASELINE}", "mean_std"),
            Column("cvr_clicked_wins", "wins", "text"),
            Column("ctcvr/auc", "CTCVR AUC", "mean_std"),
            Column("delta_ctcvr", f"− {BASELINE}", "mean_std"),
            Column("ctcvr_wins", "wins", "text"),
            Column("ctr/auc", "CTR AUC", "mean_std"),
            Column("epochs", "epochs", "float", 1),
            Column("best_epoch", "best epoch", "float", 1),
            Column("capped", "cap bound", "int"),
            Column("params", "params", "int"),
            Column("seconds", "s/run", "seconds"),
        ]
        notes = self._notes(synthetic, infos, labels, by_seed, value, capped, cap, len(runs))
        title = "ESMM vs BASE (CVR on clicks) and a naive CVR model, sparse IDs (test AUC)"
        for ext, path in write_table(rows, columns, out_dir, "results", title=title, notes=notes).items():
            files[f"results_{ext}"] = path
        # the printed summary: the AUCs with the mean paired differences and wins (their std is in
        # results.*), then the training
        paired = f"− {BASELINE} (wins)"
        main_cols = [
            Column("model", "model", "text"),
            Column("cvr/auc", "CVR AUC (all impressions)", "mean_std"),
            Column("cvr_paired", paired, "text"),
            Column("cvr_clicked/auc", "CVR AUC (clicked)", "mean_std"),
            Column("cvr_clicked_paired", paired, "text"),
            Column("ctcvr/auc", "CTCVR AUC", "mean_std"),
            Column("ctcvr_paired", paired, "text"),
        ]
        train_cols = [
            Column("model", "model", "text"),
            Column("runs", "runs", "int"),
            Column("ctr/auc", "CTR AUC", "mean_std"),
            Column("epochs", "epochs (mean)", "float", 1),
            Column("best_epoch", "best epoch (mean)", "float", 1),
            Column("capped", "cap bound", "int"),
            Column("params", "params", "int"),
            Column("seconds", "s/run", "seconds"),
        ]
        md = (
            markdown_table(rows, main_cols, title=title)
            + "\n"
            + markdown_table(rows, train_cols, title="Training (same runs)", notes=notes)
        )
        smoke = [jr for jr in results if jr.job.meta.get("data") == "ali_ccp_sample"]
        if smoke:
            md += "\n" + self._smoke(smoke, out_dir, files)
        return Report(md, files)

    @staticmethod
    def _notes(
        synthetic: Sequence[JobResult],
        infos: Sequence[Mapping[str, Any]],
        labels: Sequence[str],
        by_seed: Mapping[str, Mapping[int, RunResult]],
        value: Any,
        capped: Sequence[str],
        cap: int | None,
        total: int,
    ) -> list[str]:
        notes = []
        if synthetic:
            cfg = synthetic[0].experiment.config
            d = cfg.data

            def avg(key: str) -> float:
                return mean_std(float(i.get(key, math.nan)) for i in infos)[0] if infos else math.nan

            notes.append(
                f"Data (`synthetic_ctr_cvr_ids`, a fresh draw per seed): {d.get('n_train'):,} / {d.get('n_val'):,} / "
                f"{d.get('n_test'):,} train / validation / test impressions of {d.get('n_users'):,} users x "
                f"{d.get('n_items'):,} items (hashed, embedded {cfg.backbone.get('embedding_dim') if cfg.backbone else '-'}-wide), "
                f"{d.get('factors')} latent factors, correlation of the conversion score with the click score "
                f"{d.get('correlation')}. Means over the seeds' data: click rate {avg('click_rate'):.4f}, "
                f"conversions per impression {avg('conversion_rate'):.4f}, CVR over all impressions "
                f"{avg('cvr_all'):.4f} vs among clicks {avg('cvr_clicked'):.4f} (the selection bias); "
                f"{avg('test_user_without_click'):.0%} of the test impressions have a user with no training click, "
                f"{avg('test_item_without_click'):.0%} an item with none. Oracle AUCs (the true probabilities): "
                f"CVR {avg('oracle_test_cvr_auc'):.4f}, CTCVR {avg('oracle_test_ctcvr_auc'):.4f}."
            )
            es = cfg.trainer.early_stopping
            notes.append(
                f"Training: Adam (lr {cfg.optimizer.get('lr')}), batch {cfg.trainer.batch_size}, at most "
                f"{cfg.trainer.epochs} epochs, early stopping on the validation {es.monitor if es else '-'} "
                f"(patience {es.patience if es else '-'}, best weights restored)."
            )
        notes.append(
            "CVR AUC (all impressions): pCVR against the latent conversion label of every test impression; "
            "CVR AUC (clicked): pCVR on the clicked test impressions against their observed conversions (the "
            "paper's CVR column); CTCVR AUC: pCTR x pCVR against click-and-convert over all test impressions "
            f"(the paper's CTCVR column). Mean ± std over seeds; '− {BASELINE}' and wins are paired by seed "
            f"(same data) against {BASELINE}, the paper's BASE: the same CVR network (own embeddings) trained "
            "on clicked impressions, its pCTCVR from a separately trained CTR network. naive: that network "
            "trained on all impressions, unclicked as not converted. base_shared: ESMM's network (embeddings "
            "shared with the CTR tower) with BASE's CVR loss on clicks. esmm_ns: the paper's ESMM-NS, ESMM's "
            "losses on separate CTR and CVR networks (no shared embeddings)."
        )
        if "esmm" in by_seed and "naive" in by_seed:
            common = [s for s in by_seed["esmm"] if s in by_seed["naive"]]
            d = [value("esmm", s, "cvr") - value("naive", s, "cvr") for s in common]
            if d:
                m, sd = mean_std(d)
                notes.append(
                    f"ESMM vs naive, CVR AUC over all impressions: {m:+.4f} ± {sd:.4f}, ESMM higher on "
                    f"{sum(x > 0 for x in d)} of {len(d)} seeds."
                )
        note = cap_note(capped, total, cap)
        notes.append(
            f"**{note}**" if note else f"The epoch cap ({cap}) bound no run: every run stopped early."
        )
        return notes

    @staticmethod
    def _smoke(smoke: Sequence[JobResult], out_dir: Path, files: dict[str, Path]) -> str:
        srows = []
        for jr in smoke:
            for r in jr.runs:
                srow: dict[str, Any] = {"model": r.label, "seed": r.seed}
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
        return markdown_table(srows, scols, title=stitle, notes=snotes)
