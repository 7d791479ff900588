"""Ranking metrics from YAML (`tasks.<name>.metrics`): GAUC by a user column (a feature or an
extra column), NE and calibration, in memory and streamed; equal to an independent per-group
computation on the model's predictions; the early-stopping monitor and the comparison table; and
`validate` refusing exactly what `run` refuses, every problem at once."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml

from mtlkit.cli.main import main
from mtlkit.config.build import build_data, build_model
from mtlkit.metrics import group_auc

METRICS = ["auc", {"gauc": {"group": "user"}}, "ne", {"calibration": {"bins": 5}}]


def _write_csv(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    ids = rng.integers(0, 25, n)
    user = np.array([f"{u:03d}" if i % 2 else str(u) for i, u in enumerate(ids)])  # 7 and 007: one user
    click = (x + rng.normal(size=n) > 0).astype(int)
    watch = np.round(np.exp(x).clip(0, 50), 3)
    w = np.round(rng.uniform(0.2, 2.0, n), 3)
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["user", "x", "click", "watch", "w"])
        out.writerows(zip(user, np.round(x, 4), click, watch, w))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rank")
    return {"train": _write_csv(root / "train.csv", 240, 0), "val": _write_csv(root / "val.csv", 160, 1)}


def _data(files: dict[str, Path], *, streaming: bool, user_is_feature: bool) -> dict[str, Any]:
    return {
        "name": "tabular",
        "train": str(files["train"]),
        "val": str(files["val"]),
        "numeric": ["x"],
        "categorical": ["user"] if user_is_feature else [],
        "weights": {"column": "w"},
        "streaming": streaming,
        "tasks": {
            "click": {"column": "click", "kind": "binary", "metrics": METRICS},
            "watch": {"column": "watch", "kind": "regression"},
        },
    }


@pytest.mark.parametrize("user_is_feature", [False, True])
def test_gauc_ne_calibration_in_memory_and_streamed_equal_an_independent_computation(
    files: dict[str, Path], user_is_feature: bool
) -> None:
    import mtlkit
    results = {}
    for streaming in (False, True):
        splits = build_data(_data(files, streaming=streaming, user_is_feature=user_is_feature))
        torch.manual_seed(0)
        model = build_model({"name": "shared_bottom", "bottom_dims": [8], "tower_dims": [4]}, splits)
        trainer = mtlkit.Trainer(model, splits.tasks, progress=False, device="cpu")
        results[streaming] = trainer.evaluate(splits.val, batch_size=37)
    mem, streamed = results[False]["click"], results[True]["click"]
    assert list(mem)[:6] == ["loss", "auc", "gauc", "gauc_skipped", "ne", "calibration"]
    for k in ("auc", "gauc", "gauc_skipped", "ne", "calibration", "ece"):
        assert math.isfinite(mem[k]) and streamed[k] == pytest.approx(mem[k], rel=1e-5)
    # independent: the in-memory model's predicted probabilities, the raw user column, the weights
    splits = build_data(_data(files, streaming=False, user_is_feature=user_is_feature))
    torch.manual_seed(0)
    model = build_model({"name": "shared_bottom", "bottom_dims": [8], "tower_dims": [4]}, splits).eval()
    val = splits.val
    with torch.no_grad():
        p = torch.sigmoid(model(val.inputs)["click"].reshape(-1)).double().numpy()
    rows = list(csv.DictReader(files["val"].open()))
    y = np.array([float(r["click"]) for r in rows])
    w = np.array([float(r["w"]) for r in rows])
    users = np.array([int(r["user"]) for r in rows])
    expected = group_auc(p, y, users, weighting="size", weights=w)
    assert mem["gauc"] == pytest.approx(expected, rel=1e-5)
    rate = (w * y).sum() / w.sum()
    pc = p.clip(1e-7, 1 - 1e-7)
    ll = -(w * (y * np.log(pc) + (1 - y) * np.log(1 - pc))).sum() / w.sum()
    assert mem["ne"] == pytest.approx(ll / -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate)), rel=1e-5)
    assert mem["calibration"] == pytest.approx((w * p).sum() / (w * y).sum(), rel=1e-5)
    b = np.minimum(np.floor(p * 5), 4).astype(int)
    ece = sum(abs((w * (p - y))[b == k].sum()) for k in range(5)) / w.sum()
    assert mem["ece"] == pytest.approx(ece, rel=1e-5, abs=1e-9)


def _config(files: dict[str, Path], **data_changes: Any) -> dict[str, Any]:
    data = _data(files, streaming=False, user_is_feature=False)
    data.update(data_changes)
    return {
        "name": "rank",
        "data": data,
        "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]},
        "trainer": {"epochs": 2, "batch_size": 64, "progress": False},
    }


def test_run_monitors_gauc_and_the_table_shows_it(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _config(files)
    cfg["data"]["tasks"]["click"]["metrics"] = [{"gauc": {"group": "user"}}, "auc", "ne", "calibration"]
    cfg["trainer"]["early_stopping"] = {"monitor": "click/gauc", "patience": 1}
    cfg["compare"] = {"single": {"model": {"name": "single_task", "hidden_dims": [8]}}, "mmoe": {}}
    cfg["baseline"] = "single"
    path = tmp_path / "rank.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "click gauc ↑" in out  # the primary metric (first listed) is the table's column
    assert "averaged per task over click: gauc; watch: mse" in " ".join(out.split())


BAD = [
    ({"click": ["auc", "gaucc"]}, ["data.tasks.click.metrics[1] unknown metric 'gaucc'. Did you mean 'gauc'?"]),
    ({"click": ["gauc"]}, ["data.tasks.click.metrics[0] gauc needs the group column"]),
    ({"click": [{"gauc": {"group": "userid"}}]}, ["gauc's group column 'userid' is not in"]),
    ({"watch": ["mse", "ne"]}, ["data.tasks.watch.metrics[1] ne does not apply to a regression task"]),
    ({"click": [{"calibration": {"bins": 0}}]}, ["data.tasks.click.metrics[0] calibration: bins must be an integer >= 1; got 0."]),
    (  # every problem at once
        {"click": ["gauc", {"ece": {"bins": 0}}], "watch": ["ne"]},
        ["metrics[0] gauc needs the group", "metrics[1] ece: bins must be", "data.tasks.watch.metrics[0] ne does not"],
    ),
]


@pytest.mark.parametrize(("metrics", "texts"), BAD)
@pytest.mark.parametrize("streaming", [False, True])
def test_validate_and_run_refuse_the_same_bad_metrics(
    files: dict[str, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    metrics: dict[str, list[Any]],
    texts: list[str],
    streaming: bool,
) -> None:
    cfg = _config(files, streaming=streaming)
    tasks = copy.deepcopy(cfg["data"]["tasks"])
    for name, entries in metrics.items():
        tasks[name]["metrics"] = entries
    cfg["data"]["tasks"] = tasks
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    out = tmp_path / "runs"
    rc_validate = main(["validate", str(path)])
    err_validate = capsys.readouterr().err
    rc_run = main(["run", str(path), "--out", str(out), "--no-progress"])
    err_run = capsys.readouterr().err
    assert (rc_validate, rc_run) == (2, 2), (err_validate, err_run)
    assert err_validate == err_run and "Traceback" not in err_validate
    flat = " ".join(err_validate.split())
    for text in texts:
        assert text in flat, flat
    assert f"{len(texts)} problem" in flat


def test_gauc_by_user_on_the_funnel_preset(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The issue's funnel (ESMM over MMoE, hashed user id, history list, sample weights) with GAUC by
    user on its click and purchase tasks and click/gauc as the monitor runs from one YAML."""
    import json


    assert main(["generate", "impressions", str(tmp_path / "log"), "--rows", "2000", "--history", "5", "--weights"]) == 0
    cfg = yaml.safe_load((Path(__file__).parents[2] / "src/mtlkit/config/presets/funnel.yaml").read_text())
    cfg["data"]["train"] = str(sorted((tmp_path / "log").glob("*.parquet"))[0])
    cfg["data"]["tasks"]["click"]["metrics"] = [{"gauc": {"group": "user_id"}}, "auc", "ne", "calibration"]
    cfg["data"]["tasks"]["purchase"]["metrics"] = ["auc", {"gauc": {"group": "user_id"}}]
    cfg["model"]["base"] = {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]}
    cfg["trainer"] = {"epochs": 2, "batch_size": 256, "progress": False, "early_stopping": {"monitor": "click/gauc"}}
    path = tmp_path / "funnel.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    click = json.loads((run / "metrics.json").read_text())["metrics"]["click"]
    assert 0.0 <= click["gauc"] <= 1.0 and click["gauc_skipped"] >= 1  # users with one class are skipped
    assert click["ne"] > 0 and click["calibration"] > 0 and 0 <= click["ece"] <= 1
    capsys.readouterr()
