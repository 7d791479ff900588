"""Δm (mean relative improvement over a baseline), multi-seed aggregation and the table writers."""

from __future__ import annotations

import csv
import io
import json
import math
import random
import statistics
from pathlib import Path

import pytest

from mtlkit.errors import DataError
from mtlkit.experiment import RunResult, aggregate
from mtlkit.metrics import delta_m, delta_m_per_task, relative_improvements, select_metrics
from mtlkit.report import _columns, comparison_csv, comparison_markdown, comparison_table, write_tables

# task a: binary (auc, logloss, loss), task b: regression (mse, mae, loss)
DIRS = {
    "a": {"loss": False, "auc": True, "logloss": False},
    "b": {"loss": False, "mse": False, "mae": False},
}
BASE = {"a": {"loss": 0.40, "auc": 0.80, "logloss": 0.40}, "b": {"loss": 1.00, "mse": 1.00, "mae": 0.60}}
MODEL = {"a": {"loss": 0.10, "auc": 0.90, "logloss": 0.30}, "b": {"loss": 9.00, "mse": 0.50, "mae": 0.90}}


def test_hand_worked_two_tasks_two_metrics_each() -> None:
    # a: auc (0.9-0.8)/0.8 = +12.5 %; logloss -(0.3-0.4)/0.4 = +25 %  -> Δa = 18.75
    # b: mse -(0.5-1.0)/1.0 = +50 %;  mae -(0.9-0.6)/0.6 = -50 %    -> Δb = 0
    # the losses (which would change the result a lot) are left out; Δm = (18.75 + 0) / 2
    rel = relative_improvements(MODEL, BASE, DIRS)
    assert rel == {
        "a": {"auc": pytest.approx(12.5), "logloss": pytest.approx(25.0)},
        "b": {"mse": pytest.approx(50.0), "mae": pytest.approx(-50.0)},
    }
    assert delta_m_per_task(MODEL, BASE, DIRS) == {"a": pytest.approx(18.75), "b": pytest.approx(0.0)}
    assert delta_m(MODEL, BASE, DIRS) == pytest.approx(9.375)
    assert delta_m(BASE, BASE, DIRS) == 0.0


def test_each_task_counts_equally_whatever_its_number_of_metrics() -> None:
    # task a has three metrics (+10 % each), task b one (-50 %): the mean is over tasks, not metrics
    base = {"a": {"m1": 1.0, "m2": 2.0, "m3": 4.0}, "b": {"m": 2.0}}
    res = {"a": {"m1": 1.1, "m2": 2.2, "m3": 4.4}, "b": {"m": 1.0}}
    dirs = {"a": dict.fromkeys(base["a"], True), "b": {"m": True}}
    assert delta_m(res, base, dirs) == pytest.approx((10.0 - 50.0) / 2)


def test_flat_form_is_one_metric_per_task() -> None:
    # task a: accuracy 0.9 vs 0.8 -> +12.5%; task b: mse 0.5 vs 1.0 -> +50%; mean 31.25%
    assert delta_m({"a": 0.9, "b": 0.5}, {"a": 0.8, "b": 1.0}, {"a": True, "b": False}) == pytest.approx(
        31.25
    )


def test_matches_libmtl_formula_on_random_positive_metrics() -> None:
    """Against an independent loop of LibMTL's count_improvement: (-1)^w (B - M) / B, w=1 if higher is better."""
    rng = random.Random(0)
    for _ in range(20):
        tasks = [f"t{i}" for i in range(rng.randint(1, 4))]
        base, res, dirs = {}, {}, {}
        for t in tasks:
            names = [f"m{j}" for j in range(rng.randint(1, 3))]
            base[t] = {m: rng.uniform(0.1, 5.0) for m in names}
            res[t] = {m: rng.uniform(0.1, 5.0) for m in names}
            dirs[t] = {m: rng.random() < 0.5 for m in names}
        total = 0.0
        for t in tasks:
            terms = [(-1) ** int(dirs[t][m]) * (base[t][m] - res[t][m]) / base[t][m] for m in base[t]]
            total += sum(terms) / len(terms)
        expected = 100.0 * total / len(tasks)
        assert delta_m(res, base, dirs) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_negative_baseline_divides_by_its_absolute_value() -> None:
    # R² from -0.5 to -0.25 is an improvement: +50 % (dividing by B itself would give -50 %)
    assert delta_m({"r": {"r2": -0.25}}, {"r": {"r2": -0.5}}, {"r": {"r2": True}}) == pytest.approx(50.0)


def test_nan_and_zero_baseline_give_nan() -> None:
    assert math.isnan(delta_m({"a": 0.5}, {"a": 0.0}, {"a": True}))
    assert math.isnan(delta_m({"a": math.nan, "b": 1.0}, {"a": 0.5, "b": 1.0}, {"a": True, "b": True}))
    assert math.isnan(relative_improvements({"a": 1.0}, {"a": math.nan}, {"a": True})["a"]["value"])


def test_metric_selection() -> None:
    # a list: the listed metrics each task has
    assert delta_m(MODEL, BASE, DIRS, metrics=["auc", "mse"]) == pytest.approx((12.5 + 50.0) / 2)
    # a mapping: those metrics for the named tasks, the default (all but the loss) for the others
    assert delta_m(MODEL, BASE, DIRS, metrics={"a": ["logloss"]}) == pytest.approx((25.0 + 0.0) / 2)
    # nothing excluded: the losses count too. a: loss -(0.1-0.4)/0.4 = +75; b: loss -(9-1)/1 = -800
    a = (75.0 + 12.5 + 25.0) / 3
    b = (-800.0 + 50.0 - 50.0) / 3
    assert delta_m(MODEL, BASE, DIRS, exclude=()) == pytest.approx((a + b) / 2)
    # a task that reports only its loss falls back to it
    assert select_metrics({"x": ["loss"], "y": ["loss", "auc"]}) == {"x": ["loss"], "y": ["auc"]}


def test_selection_errors() -> None:
    with pytest.raises(
        DataError, match=r"names \['f1'\] for task 'a', which has \['loss', 'auc', 'logloss'\]"
    ):
        delta_m(MODEL, BASE, DIRS, metrics={"a": ["f1"]})
    with pytest.raises(DataError, match="Δm has no metric for task 'b'"):
        delta_m(MODEL, BASE, DIRS, metrics=["auc"])
    with pytest.raises(TypeError, match="metrics must be a list of names"):
        delta_m(MODEL, BASE, DIRS, metrics="auc")  # type: ignore[arg-type]


def test_input_errors() -> None:
    with pytest.raises(DataError, match=r"baseline has no results for task\(s\) \['c'\]"):
        delta_m({"a": 1.0, "c": 1.0}, {"a": 1.0}, {"a": True, "c": True})
    with pytest.raises(DataError, match="baseline has no metric 'auc' for task 'a'"):
        delta_m({"a": {"auc": 0.9}}, {"a": {"acc": 0.8}}, {"a": {"auc": True}})
    with pytest.raises(DataError, match="needs the direction of metric 'auc' of task 'a'"):
        delta_m({"a": {"auc": 0.9}}, {"a": {"auc": 0.8}}, {"a": {}})
    with pytest.raises(DataError, match="got a mix of both"):
        delta_m({"a": 0.9, "b": {"m": 1.0}}, {"a": 0.8, "b": {"m": 1.0}}, {"a": True, "b": {"m": True}})


# ---------------------------------------------------------------------------------------- aggregate


def _run(label: str, seed: int, metrics: dict, directions: dict = DIRS) -> RunResult:
    return RunResult(label, seed, Path("."), "test", metrics, 100, 1.5, 3, None, directions)


def _scaled(metrics: dict, f: float) -> dict:
    return {t: {m: v * f for m, v in ms.items()} for t, ms in metrics.items()}


def test_aggregate_every_metric_mean_std_and_delta_m() -> None:
    runs = [
        _run("single", 0, _scaled(BASE, 1.0)),
        _run("single", 1, _scaled(BASE, 1.2)),
        _run("mtl", 0, _scaled(MODEL, 1.0)),
        _run("mtl", 1, _scaled(MODEL, 0.9)),
    ]
    every = {"a": ["auc", "logloss"], "b": ["mse", "mae"]}
    comp = aggregate(runs, "single", metrics=every)
    assert comp["baseline"] == "single" and comp["primary"] == {"a": "auc", "b": "mse"}
    assert comp["delta_m_metrics"] == every
    for label, rs in (("single", runs[:2]), ("mtl", runs[2:])):
        entry = comp["labels"][label]
        assert entry["seeds"] == [0, 1]
        for t in DIRS:
            for m in DIRS[t]:  # every metric, the loss included
                vals = [r.metrics[t][m] for r in rs]
                st = entry["metrics"][t][m]
                assert st["values"] == vals
                assert st["mean"] == pytest.approx(sum(vals) / 2)
                assert st["std"] == pytest.approx(abs(vals[0] - vals[1]) / math.sqrt(2))
    base_means = {t: {m: comp["labels"]["single"]["metrics"][t][m]["mean"] for m in DIRS[t]} for t in DIRS}
    mtl_means = {t: {m: comp["labels"]["mtl"]["metrics"][t][m]["mean"] for m in DIRS[t]} for t in DIRS}
    mtl = comp["labels"]["mtl"]
    assert mtl["delta_m"] == pytest.approx(delta_m(mtl_means, base_means, DIRS))
    assert mtl["delta_m_tasks"] == pytest.approx(delta_m_per_task(mtl_means, base_means, DIRS))
    per_seed = [delta_m(r.metrics, base_means, DIRS) for r in runs[2:]]
    assert mtl["delta_m_std"] == pytest.approx(statistics.stdev(per_seed))
    primary = delta_m(
        {"a": mtl_means["a"]["auc"], "b": mtl_means["b"]["mse"]},
        {"a": base_means["a"]["auc"], "b": base_means["b"]["mse"]},
        {"a": True, "b": False},
    )
    assert mtl["delta_m_primary"] == pytest.approx(primary)
    assert comp["labels"]["single"]["delta_m"] == 0.0
    # by default Δm uses the metric the table shows, each task's primary one
    default = aggregate(runs, "single")
    assert default["delta_m_metrics"] == {"a": ["auc"], "b": ["mse"]}
    assert default["labels"]["mtl"]["delta_m"] == pytest.approx(primary)
    # a metric selection is passed through
    only_auc = aggregate(runs, "single", metrics={"a": ["auc"], "b": ["mse"]})
    assert only_auc["labels"]["mtl"]["delta_m"] == pytest.approx(primary)


def test_aggregate_without_baseline_and_variant_on_other_tasks() -> None:
    comp = aggregate([_run("x", 0, BASE)], None)
    assert "delta_m" not in comp["labels"]["x"] and comp["labels"]["x"]["metrics"]["a"]["auc"]["std"] == 0.0
    other = {"c": {"loss": 1.0, "mse": 1.0}}
    comp = aggregate(
        [_run("single", 0, BASE), _run("odd", 0, other, {"c": {"loss": False, "mse": False}})], "single"
    )
    assert math.isnan(comp["labels"]["odd"]["delta_m"])
    assert "no results for task(s) ['c']" in comp["labels"]["odd"]["delta_m_note"]


# ---------------------------------------------------------------------------------------- tables


def _comparison() -> dict:
    base = _scaled(BASE, 1.0)
    nan_model = _scaled(MODEL, 1.0)
    nan_model["a"]["auc"] = math.nan  # e.g. a split with one class
    runs = [_run("single", 0, base), _run("single", 1, _scaled(BASE, 1.1)), _run("mtl", 0, nan_model)]
    runs.append(_run("mtl", 1, _scaled(MODEL, 1.1)))
    return aggregate(runs, "single")


def test_write_tables(tmp_path: Path) -> None:
    comp = _comparison()
    paths = write_tables(comp, tmp_path / "out", title="demo")
    assert {p.name for p in paths.values()} == {"comparison.md", "comparison.csv", "comparison.json"}
    # JSON: strict (NaN written as null), same numbers
    loaded = json.loads(paths["json"].read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    assert loaded["labels"]["mtl"]["metrics"]["a"]["auc"]["mean"] is None
    assert (
        loaded["labels"]["mtl"]["metrics"]["b"]["mae"]["mean"]
        == comp["labels"]["mtl"]["metrics"]["b"]["mae"]["mean"]
    )
    assert loaded["delta_m_metrics"] == {"a": ["auc"], "b": ["mse"]}  # the primary metrics (the table's)
    # CSV: one row per model; every task/metric mean and std
    rows = list(csv.DictReader(io.StringIO(paths["csv"].read_text())))
    assert [r["model"] for r in rows] == ["single", "mtl"]
    for row in rows:
        entry = comp["labels"][row["model"]]
        assert row["seeds"] == "0 1"
        for t in DIRS:
            for m in DIRS[t]:
                st = entry["metrics"][t][m]
                for key, v in ((f"{t}/{m}", st["mean"]), (f"{t}/{m}_std", st["std"])):
                    if math.isnan(v):
                        assert row[key] == "nan"
                    else:
                        assert float(row[key]) == v
        assert (math.isnan(entry["delta_m"]) and row["delta_m"] == "nan") or float(row["delta_m"]) == entry[
            "delta_m"
        ]
        for t in DIRS:
            got, want = float(row[f"delta_m/{t}"]), entry["delta_m_tasks"][t]
            assert (math.isnan(got) and math.isnan(want)) or got == want
    # markdown: header with directions, mean ± std cells, Δm column and the note on the metrics used
    md = paths["md"].read_text()
    assert md.startswith("# demo\n")
    assert (
        "| model | seeds | a loss ↓ | a auc ↑ | a logloss ↓ | b loss ↓ | b mse ↓ | b mae ↓ | Δm vs single |"
        in md
    )
    single = comp["labels"]["single"]["metrics"]["b"]["mse"]
    assert f"{single['mean']:.4f} ± {single['std']:.4f}" in md
    assert "| mtl | 2 | " in md and "n/a" in md  # the NaN AUC mean
    assert "averaged per task over a: auc; b: mse." in md
    assert comparison_markdown(comp) == md.split("\n", 2)[2]  # same body without the title
    assert comparison_csv(comp) == paths["csv"].read_text()


def test_json_safe() -> None:
    import torch

    from mtlkit.report import json_safe

    out = json_safe(
        {
            "nan": math.nan,
            "dev": torch.device("cpu"),
            "p": Path("/x"),
            "t": torch.tensor([1.0, math.inf]),
            2: (1, None, True),
        }
    )
    assert (
        json.dumps(out, allow_nan=False)
        == '{"nan": null, "dev": "cpu", "p": "/x", "t": [1.0, null], "2": [1, null, true]}'
    )


def test_delta_m_uses_the_displayed_metrics_not_hidden_columns() -> None:
    """A model worse on every metric the table shows must not get a positive Δm, however much
    better it is on a column the table hides (the old default averaged every metric but the loss)."""
    dirs = {"a": {"loss": False, "auc": True, "logloss": False}, "b": {"loss": False, "mse": False, "mae": False}}
    base = {"a": {"loss": 0.5, "auc": 0.80, "logloss": 0.50}, "b": {"loss": 1.0, "mse": 1.00, "mae": 1.0}}
    worse = {"a": {"loss": 0.5, "auc": 0.79, "logloss": 0.05}, "b": {"loss": 1.0, "mse": 1.01, "mae": 0.1}}
    runs = [_run("single", 0, base, dirs), _run("mtl", 0, worse, dirs)]
    assert delta_m(worse, base, dirs) > 0  # over every metric the hidden columns flip the sign
    comp = aggregate(runs, "single")
    shown = _columns(comp, all_metrics=False)
    assert shown == [("a", "auc"), ("b", "mse")]
    assert comp["delta_m_metrics"] == {t: [m] for t, m in shown}
    assert comp["labels"]["mtl"]["delta_m"] < 0
    # a configured selection is what the table shows, and what Δm averages
    chosen = aggregate(runs, "single", metrics={"a": ["auc", "logloss"], "b": ["mse"]})
    assert _columns(chosen, all_metrics=False) == [("a", "auc"), ("a", "logloss"), ("b", "mse")]
    table = comparison_table(chosen)
    headers = [c.header for c in table.columns]
    assert "a logloss ↓" in headers and "b mae ↓" not in headers


def test_delta_m_and_monitor_compare_calibration_by_its_distance_to_one() -> None:
    from mtlkit.training.early_stopping import resolve_monitor

    dirs = {"a": {"calibration": False}}
    base = {"a": {"calibration": 1.2}}
    # 0.9 is closer to 1 than 1.2: an improvement of (0.2 - 0.1) / 0.2 = 50 %
    assert delta_m({"a": {"calibration": 0.9}}, base, dirs) == pytest.approx(50.0)
    assert delta_m({"a": {"calibration": 1.4}}, base, dirs) == pytest.approx(-100.0)
    value, higher = resolve_monitor("a/calibration", {"a": {"calibration": 0.9}}, dirs)
    assert value == pytest.approx(0.1) and higher is False
