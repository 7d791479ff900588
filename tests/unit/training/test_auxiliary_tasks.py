"""Auxiliary tasks: trained, but out of Δm, of the default mean/... monitor and of the main table."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from mtlkit.data.tabular import tabular
from mtlkit.experiment import RunResult, aggregate
from mtlkit.metrics import delta_m
from mtlkit.report import comparison_csv, comparison_markdown, comparison_table
from mtlkit.tasks import Task
from mtlkit.training.early_stopping import monitored, resolve_monitor

DIRS = {"click": {"auc": True}, "watch": {"mse": False}, "like": {"auc": True}}


def _run(label: str, seed: int, click: float, watch: float, like: float) -> RunResult:
    metrics = {"click": {"auc": click}, "watch": {"mse": watch}, "like": {"auc": like}}
    return RunResult(label, seed, Path("."), "test", metrics, 10, 1.0, 1, None, DIRS)


def test_task_auxiliary_flag_is_checked() -> None:
    assert Task(name="like", kind="binary", auxiliary=True).auxiliary
    with pytest.raises(ValueError, match="auxiliary must be True or False"):
        Task(name="like", kind="binary", auxiliary="yes")  # type: ignore[arg-type]


def test_mean_monitor_averages_main_tasks_only() -> None:
    metrics = {"click": {"loss": 0.2}, "watch": {"loss": 0.6}, "like": {"loss": 5.0}}
    assert resolve_monitor("mean/loss", metrics)[0] == pytest.approx((0.2 + 0.6 + 5.0) / 3)
    assert resolve_monitor("mean/loss", metrics, auxiliary={"like"})[0] == pytest.approx(0.4)
    assert resolve_monitor("like/loss", metrics, auxiliary={"like"})[0] == 5.0  # named: still monitorable
    # every holder auxiliary: the mean falls back to them rather than to nothing
    assert resolve_monitor("mean/auc", {"like": {"auc": 0.7}, "click": {}}, auxiliary={"like"})[0] == 0.7
    tasks = [
        Task(name="click", kind="binary"),
        Task(name="watch", kind="regression"),
        Task(name="like", kind="binary", auxiliary=True),
    ]
    record = {"train": {"click": 0.2, "watch": 0.6, "like": 5.0}}
    assert monitored(record, tasks, None)[1] == pytest.approx(0.4)


def test_delta_m_and_main_table_leave_auxiliary_tasks_out() -> None:
    runs = [
        _run("single", 0, 0.70, 1.00, 0.60),
        _run("single", 1, 0.72, 1.20, 0.62),
        _run("mtl", 0, 0.77, 0.90, 0.30),
        _run("mtl", 1, 0.79, 1.00, 0.32),
    ]
    comparison = aggregate(runs, "single", auxiliary=["like"])
    assert comparison["auxiliary"] == ["like"]
    base = {"click": {"auc": 0.71}, "watch": {"mse": 1.1}}
    means = {"click": {"auc": 0.78}, "watch": {"mse": 0.95}}
    by_hand = 100 * ((0.78 - 0.71) / 0.71 + (1.1 - 0.95) / 1.1) / 2
    entry = comparison["labels"]["mtl"]
    assert entry["delta_m"] == pytest.approx(by_hand)
    assert entry["delta_m"] == pytest.approx(delta_m(means, base, DIRS))
    assert set(entry["delta_m_tasks"]) == {"click", "watch"}
    with_like = aggregate(runs, "single")["labels"]["mtl"]["delta_m"]
    assert with_like < entry["delta_m"]  # the worse auxiliary task would have pulled Δm down
    md = comparison_markdown(comparison)
    main, _, block = md.partition("Auxiliary tasks")
    assert "click auc" in main and "like auc" not in main
    assert "like auc" in block and "click auc" not in block
    csv_header = comparison_csv(comparison).splitlines()[0].split(",")
    assert "delta_m/like" not in csv_header and "like/auc" in csv_header
    table = comparison_table(comparison)
    assert [c.header for c in table.columns][1:3] == ["click auc ↑", "watch mse ↓"]
    aux_table = comparison_table(comparison, auxiliary=True)
    assert [c.header for c in aux_table.columns][1:2] == ["like auc ↑"]
    assert not math.isnan(entry["delta_m_std"])


def test_tabular_task_declares_auxiliary(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    rows = ["x,y,z"] + [f"{i % 7},{i % 2},{(i // 2) % 2}" for i in range(40)]
    path.write_text("\n".join(rows) + "\n")
    splits = tabular(
        train=str(path),
        numeric=["x"],
        tasks={
            "y": {"column": "y", "kind": "binary"},
            "z": {"column": "z", "kind": "binary", "auxiliary": True},
        },
    )
    assert [t.auxiliary for t in splits.tasks] == [False, True]
