"""mtlkit.reproduce: recipes build valid configs, reports computed against hand computations,
tables and plots."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mtlkit.config.components import FAMILIES
from mtlkit.config.load import resolve
from mtlkit.errors import ConfigError, UnknownComponentError
from mtlkit.experiment import ExperimentResult, RunResult
from mtlkit.reproduce import (
    REPRODUCTIONS,
    Column,
    Job,
    JobResult,
    Reproduction,
    Settings,
    list_reproductions,
    markdown_table,
    mean_std,
    plan_reproduction,
    write_table,
)
from mtlkit.reproduce._base import registered_without_required
from mtlkit.reproduce.balancers import Balancers
from mtlkit.reproduce.esmm import ESMMReproduction
from mtlkit.reproduce.mmoe_census import MODELS as CENSUS_MODELS
from mtlkit.reproduce.mmoe_census import PAPER_TABLES, PLE_PAPER_CENSUS, MMoECensus
from mtlkit.reproduce.mmoe_synthetic import MODELS, MMoESynthetic
from mtlkit.reproduce.mnist_fashion import MNISTFashion
from mtlkit.reproduce.plots import mean_train_loss, plot_bars, plot_panel_curves, plot_panel_histograms

PNG = b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------------------------------------ registry
def test_registry_lists_every_reproduction_with_description_and_time() -> None:
    listed = list_reproductions()
    assert {"mmoe-synthetic", "balancers"} <= set(listed)
    for name, info in listed.items():
        cls = REPRODUCTIONS.get(name)
        assert info["summary"] and info["summary"] == cls.__doc__.strip().splitlines()[0]
        assert info["paper"] and 0 < info["minutes"] <= 15, name
        assert cls.threads is None or cls.threads >= 1


def test_aliases_and_unknown_names() -> None:
    assert REPRODUCTIONS.canonical("mmoe_synthetic") == "mmoe-synthetic"
    with pytest.raises(
        UnknownComponentError, match=r"Unknown reproduction 'mmoe-synthetc'\. Did you mean 'mmoe-synthetic'\?"
    ):
        plan_reproduction("mmoe-synthetc")


@pytest.mark.parametrize("full", [False, True], ids=["default", "full"])
@pytest.mark.parametrize("name", REPRODUCTIONS.names())
def test_every_recipe_builds_valid_configs(name: str, full: bool) -> None:
    # two seeds keep --full's 1800 mmoe-synthetic jobs (10 s to validate) to 18; the rest is --full's
    recipe, settings, planned = plan_reproduction(name, full=full, seeds=2 if full else None)
    assert isinstance(recipe, Reproduction) and planned and settings.full is full
    keys = [job.key for job, _ in planned]
    assert len(set(keys)) == len(keys)
    for job, experiment in planned:
        assert experiment.config.name == job.key
        assert experiment.variants  # validated by the same schema as `mtlkit run`


def test_overrides_reach_every_job_and_bad_ones_are_reported_once() -> None:
    _, _, planned = plan_reproduction(
        "mmoe-synthetic", seeds=2, overrides=["trainer.epochs=2", "data.n_train=64"]
    )
    assert len(planned) == 3 * 2
    for _, exp in planned:
        for cfg in exp.variants.values():
            assert cfg.trainer.epochs == 2 and cfg.data["n_train"] == 64
    with pytest.raises(ConfigError, match="trainer.epoch: unknown key. Did you mean 'epochs'?") as info:
        plan_reproduction("mmoe-synthetic", overrides=["trainer.epoch=2"])
    assert len(info.value.problems) == 1  # 9 jobs, one problem
    assert "reproduction 'mmoe-synthetic' with overrides" in str(info.value)


def test_seed_settings() -> None:
    assert Settings().seed_list(default=3, full=200) == [0, 1, 2]
    assert Settings(full=True).seed_list(default=3, full=200) == list(range(200))
    assert Settings(seeds=(5, 7)).seed_list(default=3, full=200) == [5, 7]
    _, settings, _ = plan_reproduction("balancers", seeds=[4, 9])
    assert settings.seeds == (4, 9)
    with pytest.raises(
        ConfigError, match=r"seeds: must be a positive number of seeds or a list of seeds; got 0\."
    ):
        plan_reproduction("balancers", seeds=0)
    with pytest.raises(ConfigError, match=r"seeds: must be distinct; got \[1, 1\]\."):
        plan_reproduction("balancers", seeds=[1, 1])


# ------------------------------------------------------------------------------------------ mmoe-synthetic
def test_mmoe_synthetic_follows_the_paper_setup() -> None:
    # Section 5.1: 8 experts of 16 units, towers of 8: 100*16*8 + 16*8*2 = 13056 weights; the
    # shared bottom is 13056 / (100 + 8*2) ~ 113 units wide.
    assert 100 * 16 * 8 + 16 * 8 * 2 == 13056
    assert MODELS["shared_bottom"]["bottom_dims"] == [round(13056 / (100 + 8 * 2))] == [113]
    for moe in ("mmoe", "omoe"):
        assert MODELS[moe]["num_experts"] == 8 and MODELS[moe]["expert_dims"] == [16]
        assert MODELS[moe]["tower_dims"] == [8]
    assert MODELS["shared_bottom"]["tower_dims"] == [8]
    assert MMoESynthetic.correlations == (1.0, 0.9, 0.5)
    # "200 runs with independent random data generation and model initialization", lr grid
    assert MMoESynthetic.full["seeds"] == 200
    assert MMoESynthetic.full["lrs"] == (1e-4, 1e-3, 1e-2)
    jobs = MMoESynthetic().plan(Settings(seeds=(3, 4)))
    assert len(jobs) == 3 * 2
    for job in jobs:
        data = job.config["data"]
        assert data["dim"] == 100 and data["correlation"] == job.meta["correlation"]
        assert data["seed"] == job.meta["seed"] == job.config["seeds"][0]  # fresh data every run
        assert set(job.config["compare"]) == {"single_task", "shared_bottom", "omoe", "mmoe"}
        # trained to convergence: early stopping on a validation split, the cap well above it
        assert data["n_val"] > 0
        assert job.config["trainer"]["early_stopping"] == {"monitor": "mean/loss", "patience": 5}
        assert job.config["trainer"]["epochs"] >= 60


def _hist(final: float, epochs: int = 3) -> list[dict[str, Any]]:
    # training loss falls linearly to `final` (both tasks equal)
    return [
        {"epoch": e, "train": {"y1": final + (epochs - e), "y2": final + (epochs - e)}}
        for e in range(1, epochs + 1)
    ]


def _run(label: str, seed: int, y1: float, y2: float, final: float, tmp: Path) -> RunResult:
    return RunResult(
        label=label,
        seed=seed,
        run_dir=tmp / label / str(seed),
        split="test",
        metrics={"y1": {"loss": y1, "mse": y1, "mae": 1.0}, "y2": {"loss": y2, "mse": y2, "mae": 1.0}},
        params=100,
        seconds=2.0,
        epochs=3,
        best_epoch=None,
        directions={
            "y1": {"loss": False, "mse": False, "mae": False},
            "y2": {"loss": False, "mse": False, "mae": False},
        },
        history=_hist(final),
    )


def _job_result(job: Job, runs: list[RunResult], tmp: Path, data_info: dict[str, Any]) -> JobResult:
    experiment = resolve({**job.config, "name": job.key})
    return JobResult(job, experiment, ExperimentResult(tmp, runs, {"data": data_info}))


def test_mmoe_synthetic_report_against_hand_computation(tmp_path: Path) -> None:
    recipe = MMoESynthetic()
    settings = Settings(seeds=(0, 1))
    # two learning rates, one correlation: omoe is better at lr 0.01, single_task at lr 0.001
    results = []
    values = {  # (label, lr) -> per seed (y1, y2, final train loss)
        ("single_task", 0.001): [(0.4, 0.6, 0.2), (0.6, 0.4, 0.4)],
        ("single_task", 0.01): [(1.0, 1.0, 0.9), (1.0, 1.0, 0.7)],
        ("omoe", 0.001): [(0.5, 0.5, 0.5), (0.5, 0.5, 0.5)],
        ("omoe", 0.01): [(0.25, 0.5, 0.1), (0.35, 0.3, 0.3)],
    }
    for lr in (0.001, 0.01):
        for seed in (0, 1):
            config = dict(recipe.plan(settings)[0].config)
            config = {
                **config,
                "optimizer": {"name": "adam", "lr": lr},
                "data": {**config["data"], "seed": seed},
                "compare": {k: v for k, v in config["compare"].items() if k in ("single_task", "omoe")},
            }
            job = Job(key=f"p1.0-lr{lr}-seed{seed}", config=config, meta={})
            runs = [
                _run(label, seed, *values[(label, lr)][seed][:2], values[(label, lr)][seed][2], tmp_path)
                for label in ("single_task", "omoe")
            ]
            results.append(_job_result(job, runs, tmp_path, {"label_correlation": 0.9 + 0.02 * seed}))
    report = recipe.report(results, tmp_path, settings)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    by_model = {r["model"]: r for r in rows}
    assert by_model["single_task"]["lr"] == 0.001 and by_model["omoe"]["lr"] == 0.01  # lowest mean final loss
    assert by_model["omoe"]["pearson"] == pytest.approx(0.91)
    assert by_model["omoe"]["y1/mse"] == pytest.approx(0.3)
    assert by_model["omoe"]["y1/mse_std"] == pytest.approx(statistics.stdev([0.25, 0.35]))
    assert by_model["omoe"]["final_train"] == pytest.approx(0.2)
    assert (by_model["omoe"]["final_train_min"], by_model["omoe"]["final_train_max"]) == pytest.approx(
        (0.1, 0.3)
    )
    # Δm per seed against the single-task run of the same seed (lr 0.001), then mean ± std:
    # seed 0: y1 (0.4 - 0.25)/0.4, y2 (0.6 - 0.5)/0.6; seed 1: y1 (0.6 - 0.35)/0.6, y2 (0.4 - 0.3)/0.4
    paired = [100 * (0.15 / 0.4 + 0.1 / 0.6) / 2, 100 * (0.25 / 0.6 + 0.1 / 0.4) / 2]
    assert by_model["omoe"]["delta_m"] == pytest.approx(statistics.fmean(paired))
    assert by_model["omoe"]["delta_m_std"] == pytest.approx(statistics.stdev(paired))
    assert (by_model["single_task"]["delta_m"], by_model["single_task"]["delta_m_std"]) == (0.0, 0.0)
    # the per-correlation comparison keeps run_experiment's Δm of the means: (0.5-0.3)/0.5, (0.5-0.4)/0.5
    comparison = json.loads((tmp_path / "tables" / "p1.0" / "comparison.json").read_text())
    assert comparison["labels"]["omoe"]["delta_m"] == pytest.approx(100 * (0.4 + 0.2) / 2)
    grid = json.loads((tmp_path / "lr_grid.json").read_text())["rows"]
    assert {(g["model"], g["lr"]): g["final_train"] for g in grid} == pytest.approx(
        {("single_task", 0.001): 0.3, ("single_task", 0.01): 0.8, ("omoe", 0.001): 0.5, ("omoe", 0.01): 0.2}
    )
    assert "| 1.0 | 0.910 | omoe | 0.01 | 2 |" in report.markdown
    assert "0.3000 ± 0.0707" in report.markdown and "+30.21% ± 4.42" in report.markdown
    for name in ("figure4_loss_curves.png", "figure5_final_loss_histogram.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert not (tmp_path / "figure6_mmoe_gates.png").exists()  # no mmoe run: no gate figure


# ------------------------------------------------------------------------------------------ balancers
def test_balancers_covers_every_registered_method() -> None:
    jobs = Balancers().plan(Settings())
    weightings, skipped_w = registered_without_required(FAMILIES["weighting"].registry)
    aggregators, _ = registered_without_required(FAMILIES["aggregator"].registry)
    assert "static" in skipped_w and "static" not in weightings
    assert skipped_w["static"] == "needs 'weights', which has no default"
    assert [j.meta["method"] for j in jobs] == ["single_task", *weightings, *aggregators]
    assert set(weightings) | {"static"} == set(FAMILIES["weighting"].registry.names())
    assert set(aggregators) == set(FAMILIES["aggregator"].registry.names())
    for job in jobs:
        if job.meta["kind"] == "aggregator":
            assert job.config["aggregator"]["name"] == job.meta["method"] and "weighting" not in job.config
        elif job.meta["kind"] == "weighting":
            assert job.config["weighting"]["name"] == job.meta["method"] and "aggregator" not in job.config
        assert job.config["seeds"] == [0, 1, 2]


def test_balancers_report_sorted_by_delta_m(tmp_path: Path) -> None:
    recipe = Balancers()
    settings = Settings(seeds=(0, 1))
    jobs = {j.key: j for j in recipe.plan(settings)}
    picks = {  # key -> per seed (y1, y2)
        "single_task": [(1.0, 1.0), (1.0, 1.0)],
        "weighting-uncertainty": [(0.9, 1.1), (0.9, 1.1)],  # Δm 0
        "aggregator-pcgrad": [(0.5, 1.0), (0.7, 1.0)],  # Δm (0.4 + 0) / 2 = 20%
        "weighting-dwa": [(1.5, 1.0), (1.5, 1.0)],  # -25%
    }
    results = []
    for key, vals in picks.items():
        runs = [_run(key, s, y1, y2, 0.1, tmp_path) for s, (y1, y2) in enumerate(vals)]
        for r in runs:
            r.history = [{**h, "weights": {"y1": 1.0, "y2": 2.0}} for h in r.history]
        results.append(_job_result(jobs[key], runs, tmp_path, {}))
    report = recipe.report(results, tmp_path, settings)
    rows = json.loads((tmp_path / "results.json").read_text())["rows"]
    assert [r["method"] for r in rows] == ["pcgrad", "single_task", "uncertainty", "dwa"]
    assert [r["delta_m"] for r in rows] == pytest.approx([20.0, 0.0, 0.0, -25.0])
    assert rows[0]["kind"] == "aggregator" and rows[0]["y1/mse_std"] == pytest.approx(
        statistics.stdev([0.5, 0.7])
    )
    with (tmp_path / "results.csv").open() as f:
        header = next(csv.reader(f))
    assert header[:4] == ["method", "kind", "y1/mse", "y1/mse_std"] and "delta_m_std" in header
    assert "Not run: static (needs 'weights', which has no default)." in report.markdown
    for name in ("delta_m.png", "weights.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG


def test_balancers_report_names_the_runs_the_cap_bound(tmp_path: Path) -> None:
    recipe = Balancers()
    settings = Settings(seeds=(0, 1))
    jobs = {j.key: j for j in recipe.plan(settings)}
    cap = jobs["single_task"].config["trainer"]["epochs"]
    results = []
    for key in ("single_task", "aggregator-pcgrad"):
        runs = [_run(key, s, 1.0, 1.0, 0.1, tmp_path) for s in (0, 1)]
        for r in runs:  # every run trains all `cap` epochs
            r.epochs = cap
            falling = key == "aggregator-pcgrad" and r.seed == 1  # best at the last epoch
            r.history = [
                {"epoch": e, "monitor": {"name": "mean/loss", "value": (cap - e) if falling else abs(e - 3)}}
                for e in range(1, cap + 1)
            ]
        results.append(_job_result(jobs[key], runs, tmp_path, {}))
    report = recipe.report(results, tmp_path, settings)
    assert f"Epoch cap ({cap}) binding in 1 of 4 runs" in report.markdown
    assert (
        "pcgrad seed 1" in report.markdown and "single_task seed" not in report.markdown.split("binding")[1]
    )
    for r in results[1].runs:
        r.history = [
            {"epoch": e, "monitor": {"name": "mean/loss", "value": abs(e - 3)}} for e in range(1, cap + 1)
        ]
    assert f"The epoch cap ({cap}) bound no run" in recipe.report(results, tmp_path, settings).markdown


# ------------------------------------------------------------------------------------------ tables
def test_mean_std_matches_statistics() -> None:
    vals = [0.3, 0.1, 0.7, 0.4]
    assert mean_std(vals) == pytest.approx((statistics.fmean(vals), statistics.stdev(vals)))
    assert mean_std([2.5]) == (2.5, 0.0)
    assert all(math.isnan(v) for v in mean_std([1.0, math.nan]))
    assert all(math.isnan(v) for v in mean_std([]))


def test_write_table_formats_and_round_trips(tmp_path: Path) -> None:
    cols = [
        Column("model", "model", "text"),
        Column("n", "params", "int"),
        Column("auc", "AUC ↑", "mean_std"),
        Column("dm", "Δm", "percent_std"),
        Column("t", "s/run", "seconds"),
        Column("paper", "paper", "float", 3),
    ]
    rows = [
        {
            "model": "mmoe",
            "n": 12345,
            "auc": 0.94101,
            "auc_std": 0.0012,
            "dm": 1.234,
            "dm_std": 0.5,
            "t": 3.21,
            "paper": 0.941,
        },
        {
            "model": "st",
            "n": 10,
            "auc": math.nan,
            "auc_std": math.nan,
            "dm": -2.0,
            "dm_std": math.nan,
            "t": 1.0,
        },
    ]
    md = markdown_table(rows, cols, title="T", notes=["note one", "note two"])
    assert md.splitlines()[:4] == [
        "## T",
        "",
        "| model | params | AUC ↑ | Δm | s/run | paper |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    assert "| mmoe | 12,345 | 0.9410 ± 0.0012 | +1.23% ± 0.50 | 3.2 | 0.941 |" in md
    assert "| st | 10 | n/a | -2.00% | 1.0 |  |" in md  # missing column: empty; NaN: n/a
    assert md.rstrip().endswith("note one\n\nnote two")
    paths = write_table(rows, cols, tmp_path, "t", title="T", notes=["n"], extra={"k": 1})
    with paths["csv"].open() as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == ["model", "n", "auc", "auc_std", "dm", "dm_std", "t", "paper"]
    assert float(got[0]["auc"]) == 0.94101 and got[1]["auc"] == "nan" and got[1]["paper"] == ""
    payload = json.loads(paths["json"].read_text())
    assert payload["rows"][1]["auc"] is None and payload["extra"] == {"k": 1}
    assert [c["key"] for c in payload["columns"]] == [c.key for c in cols]
    assert paths["md"].read_text().startswith("# T\n")


# ------------------------------------------------------------------------------------------ plots
def test_panel_plots_draw_the_data(tmp_path: Path) -> None:
    hists = {"a": [_hist(0.5), _hist(0.7)], "b": [_hist(0.2)]}
    assert mean_train_loss(hists["a"][0][-1]) == 0.5 and mean_train_loss({"epoch": 1}) is None
    fig = plot_panel_curves({"p1": hists, "p2": {"a": [_hist(1.0)]}}, path=tmp_path / "c.png")
    ax = fig.axes[0]
    line = next(ln for ln in ax.lines if ln.get_label() == "a")
    np.testing.assert_allclose(line.get_ydata(), [2.6, 1.6, 0.6])  # mean of the two runs per epoch
    assert (tmp_path / "c.png").read_bytes()[:8] == PNG
    vals = {"a": [0.1, 0.2, 0.2, 0.9], "b": [0.5, math.nan]}
    fig = plot_panel_histograms({"p": vals}, bins=4, path=tmp_path / "h.png", strip_max_runs=0)
    patches = {p.get_label(): p for p in fig.axes[0].patches}
    edges = np.linspace(0.1, 0.9, 5)
    np.testing.assert_array_equal(patches["a"].get_data().values, np.histogram(vals["a"], edges)[0])
    np.testing.assert_array_equal(patches["b"].get_data().values, [0, 0, 1, 0])
    assert fig.axes[0].get_legend() is None  # models are rows named on the y axis: no legend over the data
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["a", "b"]
    # few runs (the default): a strip plot, one dot per run in the model's row, no legend
    fig = plot_panel_histograms({"p": vals}, path=tmp_path / "s.png")
    ax = fig.axes[0]
    dots = {c.get_label(): c.get_offsets() for c in ax.collections}
    np.testing.assert_allclose(sorted(np.asarray(dots["a"])[:, 0]), sorted(vals["a"]))
    np.testing.assert_allclose(np.asarray(dots["b"])[:, 0], [0.5])  # the NaN run is left out
    rows = {t.get_text(): y for t, y in zip(ax.get_yticklabels(), ax.get_yticks())}
    assert np.all(np.abs(np.asarray(dots["a"])[:, 1] - rows["a"]) < 0.5)  # a's dots lie in a's row
    assert ax.get_legend() is None and rows["a"] > rows["b"]  # the first model on top
    # losses spanning more than a factor of 20 get a logarithmic axis
    assert plot_panel_histograms({"p": {"a": [0.01, 0.5]}}).axes[0].get_xscale() == "log"
    fig = plot_bars(["x", "y"], [3.0, -1.5], [0.5, math.nan], path=tmp_path / "b.png")
    assert [p.get_width() for p in fig.axes[0].patches] == [3.0, -1.5]
    assert (tmp_path / "b.png").read_bytes()[:8] == PNG


def test_synthetic_shape_seed_fixes_the_sine_terms_only() -> None:
    from mtlkit.data import synthetic_correlation

    a = synthetic_correlation(50, 0.5, dim=6, seed=0, shape_seed=7)
    b = synthetic_correlation(50, 0.5, dim=6, seed=1, shape_seed=7)
    plain = synthetic_correlation(50, 0.5, dim=6, seed=0)
    g = torch.Generator().manual_seed(7)
    alpha = torch.randn(10, generator=g, dtype=torch.float64).tolist()
    beta = torch.randn(10, generator=g, dtype=torch.float64).tolist()
    assert a.info["alpha"] == b.info["alpha"] == alpha and a.info["beta"] == b.info["beta"] == beta
    assert plain.info["alpha"] != alpha and plain.info["shape_seed"] is None
    torch.testing.assert_close(a.inputs, plain.inputs)  # x (and u, noise) still come from `seed`
    assert not torch.equal(a.targets["y1"], plain.targets["y1"])
    assert not torch.equal(a.inputs, b.inputs)


# ------------------------------------------------------------------------------------------ esmm
def test_esmm_plan_protocol_and_ali_ccp_smoke_job(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("MTLKIT_DATA", raising=False)
    jobs = {j.key: j for j in ESMMReproduction().plan(Settings())}
    # five models x five seeds, each seed its own data draw shared by the models (paired)
    models = ("esmm", "base", "naive", "base_shared", "esmm_ns")
    assert list(jobs) == [f"{m}_s{s}" for m in models for s in range(5)]
    for key, job in jobs.items():
        seed = int(key.rsplit("_s", 1)[1])
        d = job.config["data"]
        assert job.config["seeds"] == [seed] and d["seed"] == seed and job.meta["model"] == key.rsplit("_s", 1)[0]
        assert d["name"] == "synthetic_ctr_cvr_ids" and d["test_cvr"] == "entire_space"
        assert d["ctr"] <= 0.05 and d["n_users"] >= 1_000 and d["n_items"] >= 1_000  # sparse IDs, few clicks
        assert job.config["backbone"]["name"] == "embedding"
        assert job.config["trainer"]["early_stopping"]["monitor"] == "cvr/loss"
    esmm, base, naive, shared = (jobs[f"{m}_s0"].config for m in ("esmm", "base", "naive", "base_shared"))
    assert esmm["data"]["task_set"] == "esmm" and esmm["model"]["base"]["bottom_dims"] == []
    assert base["data"]["task_set"] == "clicked_cvr" and base["model"]["base"]["name"] == "single_task"
    assert naive["data"]["train_cvr"] == "all" and naive["model"] == base["model"]
    assert shared["data"]["task_set"] == "clicked_cvr" and shared["model"] == esmm["model"]
    ns = jobs["esmm_ns_s0"].config  # the paper's ESMM-NS: ESMM's losses, no shared embeddings
    assert ns["data"]["task_set"] == "esmm" and ns["model"] == base["model"]
    full = {j.key: j for j in ESMMReproduction().plan(Settings(full=True))}
    assert len(full) == 50 and full["esmm_s9"].config["data"]["n_train"] == 1_000_000
    (tmp_path / "ali-ccp-sample").mkdir()
    (tmp_path / "ali-ccp-sample" / "ali_ccp_train_sample.csv").write_text("x\n")
    monkeypatch.setenv("MTLKIT_DATA", str(tmp_path))
    smoke = ESMMReproduction().plan(Settings(seeds=(0,)))[-1]
    assert smoke.key == "ali_ccp_esmm" and not smoke.overridable
    assert smoke.config["data"] == {"name": "ali_ccp_sample", "task_set": "esmm", "path": str(tmp_path)}
    # user overrides (synthetic-data keys) do not reach the smoke job
    _, _, planned = plan_reproduction("esmm", seeds=(0,), overrides=["data.n_train=500"])
    assert [exp.config.data.get("n_train") for _, exp in planned] == [500, 500, 500, 500, 500, None]


def _auc_run(label: str, seed: int, ctr: float, ctcvr: float, cvr: float, tmp: Path, epochs: int = 4) -> RunResult:
    metrics = {t: {"loss": 0.1, "auc": v} for t, v in (("ctr", ctr), ("ctcvr", ctcvr), ("cvr", cvr))}
    directions = {t: {"loss": False, "auc": True} for t in metrics}
    return RunResult(label, seed, tmp, "test", metrics, 10, 1.0, epochs, 2, directions, [])


def test_esmm_report_pairs_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MTLKIT_DATA", raising=False)
    recipe = ESMMReproduction()
    jobs = {j.key: j for j in recipe.plan(Settings(seeds=(0, 1)))}
    values = {  # model -> per seed (ctr, ctcvr, cvr)
        "esmm": [(0.81, 0.87, 0.69), (0.8, 0.88, 0.73)],
        "base": [(0.8, 0.85, 0.70), (0.8, 0.86, 0.72)],
        "naive": [(0.8, 0.84, 0.71), (0.8, 0.85, 0.74)],
        "base_shared": [(0.8, 0.86, 0.66), (0.8, 0.86, 0.70)],
    }
    info = {"oracle_test_cvr_auc": 0.745, "oracle_test_ctcvr_auc": 0.9, "click_rate": 0.04, "cvr_clicked": 0.3}
    results = []
    for model, vs in values.items():
        for seed, v in enumerate(vs):  # the run's label is the job's name; the report uses the job's model
            epochs = 30 if (model, seed) == ("naive", 1) else 4  # the cap (30) bound one naive run
            run = _auc_run(f"{model}_s{seed}", seed, *v, tmp_path, epochs=epochs)
            if epochs == 30:
                run.best_epoch = 30
            results.append(_job_result(jobs[f"{model}_s{seed}"], [run], tmp_path, info))
    report = recipe.report(results, tmp_path, Settings(seeds=(0, 1)))
    rows = {r["model"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert list(rows) == ["esmm", "base", "naive", "base_shared"]
    assert "delta_cvr" not in rows["base"] and rows["base"]["cvr/auc"] == pytest.approx(0.71)
    assert rows["esmm"]["delta_cvr"] == pytest.approx(0.0) and rows["esmm"]["cvr_wins"] == "1/2"
    assert rows["esmm"]["delta_ctcvr"] == pytest.approx(0.02) and rows["esmm"]["ctcvr_wins"] == "2/2"
    assert rows["naive"]["delta_cvr"] == pytest.approx(0.015)
    assert rows["naive"]["delta_cvr_std"] == pytest.approx(statistics.stdev([0.01, 0.02]))
    assert rows["naive"]["ctcvr_wins"] == "0/2" and rows["base_shared"]["cvr_wins"] == "0/2"
    # no checkpoint in these runs: the clicked-impressions CVR AUC is missing, not made up
    assert rows["esmm"]["cvr_clicked/auc"] is None and "delta_cvr_clicked" not in rows["esmm"]
    assert rows["naive"]["capped"] == 1 and rows["esmm"]["capped"] == 0
    assert "naive seed 1" in report.markdown and "Epoch cap (30) binding in 1 of 8 runs" in report.markdown
    assert "Oracle AUCs (the true probabilities): CVR 0.7450, CTCVR 0.9000" in report.markdown
    # ESMM vs naive, paired: -0.02 and -0.01
    assert "ESMM vs naive, CVR AUC over all impressions: -0.0150 ± 0.0071, ESMM higher on 0 of 2 seeds" in report.markdown
    assert "| +0.0150 (2/2) |" in report.markdown  # the paired cell of naive's CVR AUC
    assert "Ali-CCP" not in report.markdown


# ------------------------------------------------------------------------------------------ mmoe-census
# The MMoE paper's Tables 1 and 2 as given by the source (columns: main-task AUC best, mean, then the
# two marital-status columns), typed again from the source so that a typo in PAPER_TABLES fails.
SOURCE_TABLES = """
Group 1 | Single-Task | 0.9398 | 0.9337 | 0.9933 | 0.9922
Group 1 | Shared-Bottom | 0.9361 | 0.9295 | 0.9915 | 0.9921
Group 1 | L2-Constrained | 0.9389 | 0.9359 | 0.9922 | 0.9918
Group 1 | Cross-Stitch | 0.9406 | 0.9361 | 0.9917 | 0.9922
Group 1 | Tensor-Factorization | 0.7460 | 0.6765 | 0.8175 | 0.8412
Group 1 | OMoE | 0.9387 | 0.9319 | 0.9928 | 0.9923
Group 1 | MMoE | 0.9410 | 0.9359 | 0.9926 | 0.9927
Group 2 | Single-Task | 0.8843 | 0.8792 | 0.9933 | 0.9922
Group 2 | Shared-Bottom | 0.8836 | 0.8813 | 0.9927 | 0.9917
Group 2 | L2-Constrained | 0.8855 | 0.8823 | 0.9923 | 0.9918
Group 2 | Cross-Stitch | 0.8855 | 0.8819 | 0.9919 | 0.9921
Group 2 | Tensor-Factorization | 0.7367 | 0.7256 | 0.7453 | 0.7497
Group 2 | OMoE | 0.8852 | 0.8813 | 0.9915 | 0.9912
Group 2 | MMoE | 0.8860 | 0.8826 | 0.9932 | 0.9924
"""
_NAMES = {
    "Single-Task": "single_task",
    "Shared-Bottom": "shared_bottom",
    "L2-Constrained": "l2_constrained",
    "Cross-Stitch": "cross_stitch",
    "Tensor-Factorization": "tensor_factorization",
    "OMoE": "omoe",
    "MMoE": "mmoe",
}


def test_census_paper_numbers_match_the_source() -> None:
    parsed: dict[int, dict[str, tuple[float, ...]]] = {}
    for line in SOURCE_TABLES.strip().splitlines():
        group, name, *vals = (c.strip() for c in line.split("|"))
        parsed.setdefault(int(group.split()[1]), {})[_NAMES[name]] = tuple(float(v) for v in vals)
    assert {g: t["rows"] for g, t in PAPER_TABLES.items()} == parsed
    assert (PAPER_TABLES[1]["main"], PAPER_TABLES[2]["main"]) == ("income", "college")
    for table in PAPER_TABLES.values():
        for best, mean, *_ in table["rows"].values():
            assert best >= mean  # the best run's main-task AUC is never below the mean
    # the figures (MMoE means: main, then the marital column the issue quotes as the mean)
    assert PAPER_TABLES[1]["rows"]["mmoe"][1::2] == (0.9359, 0.9927)
    assert PAPER_TABLES[2]["rows"]["mmoe"][1::2] == (0.8826, 0.9924)


# PLE paper (Tang et al. RecSys 2020), census-income: PLE's AUC of income and marital status (group 1 only).
PLE_SOURCE = "Group 1 | PLE | 0.9522 | 0.9945"


def test_ple_paper_census_numbers_match_the_source() -> None:
    group, name, income, marital = (c.strip() for c in PLE_SOURCE.split("|"))
    assert {int(group.split()[1]): {name.lower(): (float(income), float(marital))}} == PLE_PAPER_CENSUS


CENSUS_LABELS = ("single_task", "shared_bottom", "omoe", "mmoe", "cgc", "ple")


def test_census_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = MMoECensus().plan(Settings())
    assert [(j.meta["group"], j.meta["model"]) for j in jobs] == [(g, m) for g in (1, 2) for m in CENSUS_LABELS]
    for job in jobs:
        assert job.config["data"] == {"name": "census_income", "group": job.meta["group"], "n_train": 40_000}
        assert job.config["model"] == CENSUS_MODELS[job.meta["model"]]
        assert job.config["seeds"] == [0, 1, 2]
        assert job.config["trainer"]["epochs"] == 10 and job.config["trainer"]["batch_size"] == 1024
    # CGC is PLE with one extraction level: the same experts, no second level
    assert CENSUS_MODELS["cgc"] == {
        **{k: v for k, v in CENSUS_MODELS["ple"].items() if k != "num_levels"}, "name": "cgc"
    }
    monkeypatch.setitem(CENSUS_MODELS, "not_registered", {"name": "no_such_model"})
    assert "not_registered" not in {j.meta["model"] for j in MMoECensus().plan(Settings())}


def test_census_full_plan_is_all_rows_to_convergence() -> None:
    full = MMoECensus().plan(Settings(full=True))
    assert [(j.meta["group"], j.meta["model"]) for j in full] == [(g, m) for g in (1, 2) for m in CENSUS_LABELS]
    for job in full:
        assert job.config["data"]["n_train"] is None  # every training row
        assert job.config["seeds"] == [0, 1, 2, 3, 4]
        trainer = job.config["trainer"]
        # early stopping well inside the cap: a converged run stops long before it
        assert trainer["early_stopping"]["patience"] >= 5 and trainer["epochs"] >= 100
        # the larger batch scales the learning rate linearly from the default's (1e-3 at 1024)
        assert job.config["optimizer"]["lr"] / trainer["batch_size"] == pytest.approx(1e-3 / 1024)
    # --seeds overrides the full scale's count; the budget stays the full one
    ten = MMoECensus().plan(Settings(full=True, seeds=tuple(range(10))))
    assert ten[0].config["seeds"] == list(range(10)) and ten[0].config["data"]["n_train"] is None
    _, _, planned = plan_reproduction("mmoe-census", full=True, seeds=5)
    assert len(planned) == 12 and all(e.config.data["n_train"] is None for _, e in planned)


def _census_run(seed: int, val_main: float, test: tuple[float, float], tmp: Path) -> RunResult:
    metrics = {"income": {"loss": 0.3, "auc": test[0]}, "never_married": {"loss": 0.2, "auc": test[1]}}
    directions = {t: {"loss": False, "auc": True} for t in metrics}
    history = [
        {"epoch": 1, "val": {"income": {"auc": val_main - 0.1}}},
        {"epoch": 2, "val": {"income": {"auc": val_main}}},  # the restored best epoch
        {"epoch": 3, "val": {"income": {"auc": val_main + 0.5}}},  # later, worse in loss, not restored
    ]
    return RunResult("group1-x", seed, tmp, "test", metrics, 10, 1.0, 3, 2, directions, history)


def test_census_report_best_run_by_validation_auc(tmp_path: Path) -> None:
    recipe = MMoECensus()
    settings = Settings(seeds=(0, 1, 2))
    jobs = {j.key: j for j in recipe.plan(settings) if j.meta["group"] == 1}
    runs = {
        "group1-single_task": [(0.80, (0.90, 0.99)), (0.82, (0.92, 0.98)), (0.81, (0.94, 0.97))],
        "group1-mmoe": [(0.85, (0.93, 0.99)), (0.84, (0.95, 0.98)), (0.80, (0.91, 0.97))],
    }
    info = {"rows": {"train": 1000, "val": 500, "test": 500}}
    results = [
        _job_result(jobs[k], [_census_run(s, v, t, tmp_path) for s, (v, t) in enumerate(vs)], tmp_path, info)
        for k, vs in runs.items()
    ]
    report = recipe.report(results, tmp_path, settings)
    rows = {r["model"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    # best run = highest validation AUC at the restored epoch: single_task seed 1, mmoe seed 0
    assert rows["single_task"]["main_best"] == 0.92 and rows["single_task"]["aux_best"] == 0.98
    assert rows["mmoe"]["main_best"] == 0.93 and rows["mmoe"]["aux_best"] == 0.99
    assert rows["mmoe"]["main"] == pytest.approx(0.93) and rows["mmoe"]["main_std"] == pytest.approx(0.02)
    assert rows["mmoe"]["paper_main_best"] == 0.9410 and rows["mmoe"]["paper_main_mean"] == 0.9359
    assert rows["mmoe"]["diff_main_mean"] == pytest.approx(0.93 - 0.9359)
    # Δm (AUC of the means): income (0.93 - 0.92)/0.92, never_married (0.98 - 0.98)/0.98
    assert rows["mmoe"]["delta_m"] == pytest.approx(100 * (0.01 / 0.92) / 2)
    assert "## Census-income group 1: income (main) + never_married (MMoE paper Table 1)" in report.markdown
    paper = json.loads((tmp_path / "paper_tables.json").read_text())["rows"]
    assert len(paper) == 14 and paper[-1] == {
        "group": 2, "model": "mmoe", "main_best": 0.886, "main_mean": 0.8826, "aux_a": 0.9932, "aux_b": 0.9924
    }  # fmt: skip


def test_census_report_counts_cap_bound_runs_and_quotes_the_ple_paper(tmp_path: Path) -> None:
    recipe = MMoECensus()
    settings = Settings(seeds=(0, 1))
    jobs = {j.key: j for j in recipe.plan(settings) if j.meta["group"] == 1}
    cap = jobs["group1-mmoe"].config["trainer"]["epochs"]
    info = {"rows": {"train": 1000, "val": 500, "test": 500}}

    def run(seed: int, epochs: int, best: int) -> RunResult:
        r = _census_run(seed, 0.8, (0.9, 0.99), tmp_path)
        return dataclasses.replace(r, epochs=epochs, best_epoch=best)

    runs = {  # mmoe seed 1 trained every allowed epoch and was best at the last: the cap bound it
        "group1-mmoe": [run(0, cap, cap - 3), run(1, cap, cap)],
        "group1-ple": [run(0, cap - 1, cap - 6), run(1, 4, 1)],
    }
    results = [_job_result(jobs[k], rs, tmp_path, info) for k, rs in runs.items()]
    report = recipe.report(results, tmp_path, settings)
    rows = {r["model"]: r for r in json.loads((tmp_path / "results.json").read_text())["rows"]}
    assert (rows["mmoe"]["capped"], rows["ple"]["capped"]) == (1, 0)
    assert rows["mmoe"]["epochs"] == cap and rows["ple"]["epochs"] == pytest.approx((cap - 1 + 4) / 2)
    assert f"Epoch cap ({cap}) binding in 1 of 4 runs" in report.markdown and "mmoe seed 1" in report.markdown
    # the PLE paper's census figures sit on the PLE row of group 1 only; the MMoE paper's marital columns
    assert (rows["ple"]["ple_paper_main"], rows["ple"]["ple_paper_aux"]) == (0.9522, 0.9945)
    assert "ple_paper_main" not in rows["mmoe"] and rows["mmoe"]["paper_aux"] == "0.9926 / 0.9927"
    # nothing capped: the report says so
    calm = [_job_result(jobs["group1-ple"], runs["group1-ple"], tmp_path, info)]
    assert "The epoch cap bound no run" in recipe.report(calm, tmp_path / "calm", settings).markdown
    # a model with one run shows its AUC alone, not a spread of '± 0'
    one = [_job_result(jobs["group1-mmoe"], [run(0, 5, 3)], tmp_path, info)]
    md = recipe.report(one, tmp_path / "one", settings).markdown
    assert "| mmoe | 1 | 0.9000 | 0.9000 |" in md and "0.9000 ± " not in md


# ------------------------------------------------------------------------------------------ mnist-fashion
def test_mnist_fashion_plan_is_seed_000() -> None:
    jobs = {j.key: j for j in MNISTFashion().plan(Settings())}
    assert set(jobs) == {"single_task", "shared_cnn"}
    for job in jobs.values():
        c = job.config
        assert c["backbone"] == {"name": "cnn", "channels": [32, 64], "kernel_sizes": [5, 3]}
        assert c["schedule"] == {"name": "mixed"} and c["trainer"]["batch_size"] == 100
        assert c["data"]["label_smoothing"] == 0.01 and c["data"]["mode"] == "separate"
    assert jobs["shared_cnn"].config["model"] == {
        "name": "shared_bottom", "bottom_dims": [], "tower_dims": [1024, 512], "dropout": 0.5
    }  # fmt: skip
    assert jobs["single_task"].config["model"]["hidden_dims"] == [1024, 512]
    full = {j.key: j for j in MNISTFashion().plan(Settings(full=True))}["shared_cnn"].config
    assert (full["optimizer"]["lr"], full["trainer"]["epochs"], full["data"]["n_train"]) == (1e-4, 20, None)


def test_shared_bottom_without_bottom_shares_only_the_input_layer() -> None:
    from mtlkit.models import shared_bottom
    from mtlkit.tasks import Task

    tasks = (Task(name="a", kind="regression"), Task(name="b", kind="regression"))
    backbone = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU())
    backbone.out_features = 7
    model = shared_bottom(None, tasks, bottom_dims=[], tower_dims=[3], input_layer=backbone)
    x = torch.randn(4, 5)
    out = model(x)
    h = backbone(x)
    for t in ("a", "b"):
        lin1, lin2 = (m for m in model.towers[t].modules() if isinstance(m, torch.nn.Linear))
        torch.testing.assert_close(out[t].reshape(4, -1), lin2(torch.relu(lin1(h))).reshape(4, -1))
    shared = {id(p) for p in model.shared_parameters()}
    assert shared == {id(p) for p in backbone.parameters()}
    linear = shared_bottom(5, tasks, bottom_dims=[], tower_dims=[])  # no input layer: linear heads on x
    assert list(linear.shared_parameters()) == []
    torch.testing.assert_close(linear(x)["a"], linear.towers["a"](x))
