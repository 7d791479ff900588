"""``youtube-ranking``: shared-bottom and MMoE, each with and without the shallow position-bias
tower (Zhao et al., RecSys 2019), trained on logged slates whose unbiased truth is known.

Each seed draws a fresh log (:mod:`mtlkit.data.youtube`: clicks = relevance x position
propensity, watch time and likes on clicks) and trains the four models on it. The report scores
the test slates against the truth the models never saw:

* (a) the click prediction against the unbiased relevance: AUC over all test impressions against
  the unbiased click labels, per-slate AUC, and NDCG@10 per slate with the relevance as gain;
* (b) the tower's learned position effect against the true propensity (its rank correlation
  over every (position, device) pair, and a plot);
* (c) engagement and satisfaction: the logged click AUC, watch-time MSE and like AUC (on clicks),
  and the like prediction's NDCG@10 against the true satisfaction;
* (d) the fused score ``p_click x (1 + watch_time)^0.5 x p_like^0.5`` ranked against the true
  utility (NDCG@10), beside the click prediction alone.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mtlkit.data.youtube import DEVICES
from mtlkit.metrics.ranking import group_auc, group_ndcg
from mtlkit.reproduce._base import REPRODUCTIONS, Job, JobResult, Report, Settings
from mtlkit.reproduce.tables import Column, markdown_table, mean_std, write_table
from mtlkit.runs import load_run

__all__ = ["MODELS", "YoutubeRanking", "position_effect", "spearman"]

PAPER = (
    "Zhao et al., Recommending What Video to Watch Next: A Multitask Ranking System, RecSys 2019 "
    "(MMoE vs shared-bottom; a shallow tower for position bias, added in training, left out at serving)."
)

MODELS: dict[str, dict[str, Any]] = {
    "shared_bottom": {"name": "shared_bottom", "bottom_dims": [64], "tower_dims": [32]},
    "mmoe": {"name": "mmoe", "num_experts": 4, "expert_dims": [32], "tower_dims": [16]},
}
TOWER: dict[str, Any] = {
    "features": ["position", "device"],
    "tasks": ["click"],
    "dims": [16],
    "feature_dropout": 0.1,
}
FUSION: dict[str, Any] = {
    "kind": "product",
    "terms": {"click": 1.0, "watch_time": {"weight": 0.5, "transform": "plus_one"}, "like": 0.5},
}


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties): Pearson's correlation of the ranks."""

    def ranks(x: np.ndarray) -> np.ndarray:
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=float)
        for v in np.unique(x):  # ties share their mean rank
            m = x == v
            if m.sum() > 1:
                r[m] = r[m].mean()
        return r

    x, y = ranks(np.asarray(a, dtype=float)), ranks(np.asarray(b, dtype=float))
    x, y = x - x.mean(), y - y.mean()
    den = math.sqrt(float((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 0 else math.nan


def position_effect(model: torch.nn.Module, slate_size: int, task: str = "click") -> np.ndarray | None:
    """The bias tower's term for ``task`` at each (device, position), ``(devices, slate_size)``,
    relative to the top position of the same device; None when the model has no tower."""
    from mtlkit.models import BiasTower

    tower = model
    while not isinstance(tower, BiasTower) and hasattr(tower, "base"):
        tower = tower.base
    if not isinstance(tower, BiasTower) or task not in tower.heads:
        return None
    assert tower.bias_schema is not None
    cols = list(tower.bias_schema.categorical)
    out = np.zeros((len(DEVICES), slate_size))
    with torch.no_grad():
        for d in range(len(DEVICES)):
            values = {"device": torch.full((slate_size,), d + 1), "position": torch.arange(slate_size) + 1}
            cat = torch.stack([values[c] for c in cols], dim=1)
            term = tower.heads[task](cat, None).reshape(-1).double().numpy()
            out[d] = term - term[0]
    return out


@REPRODUCTIONS.register("youtube-ranking", aliases=("youtube_ranking", "youtube"))
class YoutubeRanking:
    """Shared-bottom and MMoE with and without a shallow position-bias tower, scored against the unbiased truth."""

    paper: ClassVar[str] = PAPER
    minutes: ClassVar[float] = 4.0
    threads: ClassVar[int | None] = 1

    default: ClassVar[dict[str, Any]] = {
        "seeds": 5,
        "train_slates": 3000,
        "val_slates": 500,
        "test_slates": 1500,
        "epochs": 12,
    }
    full: ClassVar[dict[str, Any]] = {
        "seeds": 10,
        "train_slates": 20000,
        "val_slates": 2000,
        "test_slates": 5000,
        "epochs": 30,
    }

    def plan(self, settings: Settings) -> list[Job]:
        """One experiment per seed (a fresh log per seed), comparing the four models on it."""
        scale = self.full if settings.full else self.default
        jobs = []
        for seed in settings.seed_list(default=self.default["seeds"], full=self.full["seeds"]):
            compare: dict[str, Any] = {}
            for name, spec in MODELS.items():
                compare[name] = {"model": {**spec, "bias_tower": None, "fusion": FUSION}}
                compare[f"{name}+tower"] = {"model": {**spec, "bias_tower": TOWER, "fusion": FUSION}}
            config = {
                "seeds": [seed],
                "data": {
                    "name": "youtube_log",
                    "train_slates": scale["train_slates"],
                    "val_slates": scale["val_slates"],
                    "test_slates": scale["test_slates"],
                    "seed": seed,
                },
                "model": {**MODELS["shared_bottom"], "fusion": FUSION},
                "optimizer": {"name": "adam", "lr": 0.003},
                # a fixed budget, no early stopping: the validation losses are computed at serving (the
                # tower left out) on logged, position-biased clicks, so they rise as the tower takes
                # the position effect over, and early stopping on them would pick the most biased model
                "trainer": {"epochs": scale["epochs"], "batch_size": 512},
                "compare": compare,
                "baseline": "shared_bottom",
            }
            jobs.append(Job(key=f"seed{seed}", config=config, meta={"seed": seed}))
        return jobs

    # ------------------------------------------------------------------ report
    def report(self, results: Sequence[JobResult], out_dir: Path, settings: Settings) -> Report:
        per_run: list[dict[str, Any]] = []
        effects: dict[str, list[np.ndarray]] = {}
        truth_curve: np.ndarray | None = None
        for jr in results:
            splits_cache = None
            for r in jr.runs:
                run = load_run(r.run_dir, data=True, splits=splits_cache)
                splits_cache = run.splits
                assert run.splits is not None
                assert run.splits.test is not None
                row, effect, curve = _score(run.model, run.splits, run.splits.info)
                row.update({"model": r.label, "seed": r.seed, "epochs": r.epochs, "seconds": r.seconds})
                per_run.append(row)
                if effect is not None:
                    effects.setdefault(r.label, []).append(effect)
                    truth_curve = curve
        labels = list(dict.fromkeys(row["model"] for row in per_run))
        files: dict[str, Path] = {}
        rows = [_summary(label, per_run) for label in labels]
        _paired(rows, per_run)
        notes = _notes(results, per_run)
        md = ""
        for stem, title, cols in _tables():
            for ext, path in write_table(rows, cols, out_dir, stem, title=title, notes=notes[stem]).items():
                files[f"{stem}_{ext}"] = path
            md += markdown_table(rows, cols, title=title, notes=notes[stem]) + "\n"
        run_cols = [
            Column("model", "model", "text"),
            Column("seed", "seed", "int"),
            *(Column(k, k, "float") for k in ("auc_unbiased", "ndcg_relevance", "spearman", "ndcg_utility")),
        ]
        for ext, path in write_table(per_run, run_cols, out_dir, "runs", title="every run").items():
            files[f"runs_{ext}"] = path
        if effects and truth_curve is not None:
            with contextlib.suppress(ImportError):  # matplotlib missing: the tables are the result
                files["position_effect"] = _plot(effects, truth_curve, out_dir / "position_effect.png")
        return Report(md, files)


def _score(model: torch.nn.Module, splits: Any, info: Mapping[str, Any]) -> tuple[dict[str, Any], Any, Any]:
    test = splits.test
    model.eval()
    with torch.no_grad():
        out = model(test.inputs)
    p_click = torch.sigmoid(out["click"].double()).reshape(-1).numpy()
    p_like = torch.sigmoid(out["like"].double()).reshape(-1).numpy()
    watch = out["watch_time"].double().reshape(-1).numpy()
    score = out["score"].double().reshape(-1).numpy()
    t = {k: v.double().numpy() for k, v in test.targets.items()}
    slate = t["slate"]
    clicked = t["click"] == 1
    row: dict[str, Any] = {
        "auc_unbiased": group_auc(p_click, t["click_unbiased"], np.zeros_like(slate)),
        "gauc_unbiased": group_auc(p_click, t["click_unbiased"], slate),
        "ndcg_relevance": group_ndcg(p_click, t["relevance"], slate, k=10),
        "auc_logged": group_auc(p_click, t["click"], np.zeros_like(slate)),
        "watch_mse": float(np.mean((watch[clicked] - t["watch_time"][clicked]) ** 2)),
        "like_auc": group_auc(p_like[clicked], t["like"][clicked], np.zeros(int(clicked.sum()))),
        "ndcg_satisfaction": group_ndcg(p_like, t["satisfaction"], slate, k=10),
        "ndcg_utility": group_ndcg(score, t["utility"], slate, k=10),
        "ndcg_utility_click": group_ndcg(p_click, t["utility"], slate, k=10),
        "oracle_auc": group_auc(t["relevance"], t["click_unbiased"], np.zeros_like(slate)),
    }
    k = int(info.get("slate_size", 10))
    effect = position_effect(model, k)
    curve = None
    if effect is not None:
        scale = np.asarray(info.get("device_scale", [1.0] * len(DEVICES)))
        eta = float(info.get("eta", 1.0))
        curve = -eta * scale[:, None] * np.log1p(np.arange(k))[None, :]  # log propensity
        row["spearman"] = spearman(effect.reshape(-1), curve.reshape(-1))
        row["spearman_min_device"] = min(spearman(effect[d], curve[d]) for d in range(len(DEVICES)))
    return row, effect, curve


_KEYS = (
    "auc_unbiased",
    "gauc_unbiased",
    "ndcg_relevance",
    "auc_logged",
    "watch_mse",
    "like_auc",
    "ndcg_satisfaction",
    "ndcg_utility",
    "ndcg_utility_click",
    "spearman",
    "spearman_min_device",
    "oracle_auc",
    "seconds",
    "epochs",
)


def _summary(label: str, per_run: list[dict[str, Any]]) -> dict[str, Any]:
    rs = [r for r in per_run if r["model"] == label]
    row: dict[str, Any] = {"model": label, "runs": len(rs)}
    for key in _KEYS:
        vals = [r[key] for r in rs if key in r and not math.isnan(r[key])]
        if vals:
            row[key], row[f"{key}_std"] = mean_std(vals)
            if key == "spearman":
                row["spearman_worst"] = min(vals)
    return row


def _paired(rows: list[dict[str, Any]], per_run: list[dict[str, Any]]) -> None:
    """Tower vs plain (same architecture, same seed): differences and wins; MMoE vs shared-bottom."""
    by = {(r["model"], r["seed"]): r for r in per_run}
    for row in rows:
        label = row["model"]
        other = label[: -len("+tower")] if label.endswith("+tower") else None
        if other is not None:
            pairs = [
                (r, by[(other, r["seed"])])
                for r in per_run
                if r["model"] == label and (other, r["seed"]) in by
            ]
            for key in ("auc_unbiased", "ndcg_relevance", "ndcg_utility"):
                diffs = [a[key] - b[key] for a, b in pairs]
                if diffs:
                    row[f"d_{key}"], row[f"d_{key}_std"] = mean_std(diffs)
                    row[f"wins_{key}"] = f"{sum(d > 0 for d in diffs)}/{len(diffs)}"
        if label.startswith("mmoe"):
            sb = "shared_bottom" + label[len("mmoe") :]
            pairs = [
                (r, by[(sb, r["seed"])]) for r in per_run if r["model"] == label and (sb, r["seed"]) in by
            ]
            for key, sign in (
                ("ndcg_relevance", 1),
                ("ndcg_satisfaction", 1),
                ("like_auc", 1),
                ("watch_mse", -1),
            ):
                diffs = [sign * (a[key] - b[key]) for a, b in pairs]
                if diffs:
                    row[f"vs_sb_{key}"] = f"{sum(d >= 0 for d in diffs)}/{len(diffs)}"


def _tables() -> list[tuple[str, str, list[Column]]]:
    model = [Column("model", "model", "text"), Column("runs", "runs", "int")]
    return [
        (
            "a_relevance",
            "(a) Click prediction vs the unbiased relevance (test slates)",
            [
                *model,
                Column("auc_unbiased", "AUC (unbiased clicks)", "mean_std"),
                Column("gauc_unbiased", "per-slate AUC", "mean_std"),
                Column("ndcg_relevance", "NDCG@10 (relevance)", "mean_std"),
                Column("d_auc_unbiased", "AUC − no tower", "mean_std"),
                Column("wins_auc_unbiased", "AUC wins", "text"),
                Column("d_ndcg_relevance", "NDCG − no tower", "mean_std"),
                Column("wins_ndcg_relevance", "NDCG wins", "text"),
                Column("auc_logged", "AUC (logged clicks)", "mean_std"),
            ],
        ),
        (
            "b_position",
            "(b) Learned position effect vs the true propensity",
            [
                *model,
                Column("spearman", "Spearman (all position × device)", "mean_std"),
                Column("spearman_worst", "worst run", "float"),
                Column("spearman_min_device", "worst device (mean)", "mean_std"),
            ],
        ),
        (
            "c_objectives",
            "(c) Engagement and satisfaction objectives",
            [
                *model,
                Column("ndcg_relevance", "click NDCG@10 (relevance)", "mean_std"),
                Column("watch_mse", "watch-time MSE (clicks)", "mean_std"),
                Column("like_auc", "like AUC (clicks)", "mean_std"),
                Column("ndcg_satisfaction", "like NDCG@10 (satisfaction)", "mean_std"),
                Column("vs_sb_ndcg_satisfaction", "MMoE ≥ SB: like NDCG", "text"),
                Column("vs_sb_watch_mse", "MMoE ≤ SB: watch MSE", "text"),
                Column("seconds", "s/run", "seconds"),
            ],
        ),
        (
            "d_fusion",
            "(d) Fused score vs the true utility",
            [
                *model,
                Column("ndcg_utility", "NDCG@10 fused score", "mean_std"),
                Column("ndcg_utility_click", "NDCG@10 click only", "mean_std"),
                Column("d_ndcg_utility", "fused − no tower", "mean_std"),
                Column("wins_ndcg_utility", "wins", "text"),
            ],
        ),
    ]


def _notes(results: Sequence[JobResult], per_run: list[dict[str, Any]]) -> dict[str, list[str]]:
    cfg = results[0].experiment.config if results else None
    data = ""
    if cfg is not None:
        d = cfg.data
        data = (
            f"Data: `youtube_log`, {d.get('train_slates'):,} / {d.get('val_slates'):,} / {d.get('test_slates'):,} "
            "train / validation / test slates of 10, a fresh log per seed (seeds "
            f"{', '.join(str(jr.job.meta.get('seed')) for jr in results)}); propensity 1/(1 + position)^(eta x "
            "device scale), eta 1, device scales 1, 1.5, 0.7; the logging ranker favoured a `promo` feature "
            f"that does not affect users. Training: Adam (lr {cfg.optimizer.get('lr')}), batch "
            f"{cfg.trainer.batch_size}, {cfg.trainer.epochs} epochs (no early stopping: the validation losses on "
            "logged clicks, computed without the tower, rise as the tower removes the bias). Mean ± std over "
            "seeds; differences and wins paired by seed."
        )
    oracle = [r["oracle_auc"] for r in per_run if "oracle_auc" in r]
    o = (
        f" The true relevance itself reaches an AUC of {np.mean(oracle):.4f} against the unbiased clicks."
        if oracle
        else ""
    )
    return {
        "a_relevance": [
            data,
            "The click prediction at serving (the tower left out) ranked against what the user would have "
            "clicked without position bias: AUC over all test impressions against `click_unbiased ~ "
            "Bernoulli(relevance)`, the same per slate, and NDCG@10 per slate with the relevance as gain."
            + o,
        ],
        "b_position": [
            "The tower's click term at each (device, position), relative to the top position, against the "
            "log of the true propensity: Spearman's rank correlation over the 30 pairs (and the worst single "
            "device's correlation over its 10 positions). Plot: position_effect.png.",
        ],
        "c_objectives": [
            "Engagement: clicks (ranking by relevance) and watch time (MSE on clicked test impressions). "
            "Satisfaction: likes (AUC on clicked test impressions, and NDCG@10 of the like prediction against "
            "the true satisfaction; the satisfaction score correlates 0.5 with relevance). 'MMoE ≥ SB' counts "
            "the seeds where MMoE is at least as good as shared-bottom (same tower setting).",
        ],
        "d_fusion": [
            "The fused score p_click × (1 + watch_time)^0.5 × p_like^0.5 (model.fusion, exported as the "
            "`score` output) against the true utility relevance × (1 + E[watch])^0.5 × satisfaction^0.5, "
            "beside the click prediction alone.",
        ],
    }


def _plot(effects: Mapping[str, list[np.ndarray]], truth: np.ndarray, path: Path) -> Path:
    from mtlkit.analysis.plots import require_matplotlib, save_figure

    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.4 * len(DEVICES), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(DEVICES), squeeze=False).ravel()
    k = truth.shape[1]
    x = np.arange(k)
    for d, ax in enumerate(axes):
        ax.plot(x, truth[d], "k--", label="log true propensity")
        for i, (label, runs) in enumerate(effects.items()):
            stack = np.stack([e[d] for e in runs])
            mean, sd = stack.mean(0), stack.std(0)
            ax.plot(x, mean, color=f"C{i}", marker="o", markersize=3, label=f"{label} (learned)")
            ax.fill_between(x, mean - sd, mean + sd, color=f"C{i}", alpha=0.2)
        ax.set_title(f"device {DEVICES[d]}")
        ax.set_xlabel("position (0 = top)")
        ax.set_ylabel("effect vs top position (logit / log)")
        ax.legend(fontsize=7)
    fig.suptitle("Learned position effect of the shallow tower vs the true propensity")
    return save_figure(fig, path)
