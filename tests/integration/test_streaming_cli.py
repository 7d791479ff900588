"""Data larger than memory from the command line: a YAML with ``streaming: true`` over a folder of
Parquet (or CSV) shards through `mtlkit validate`, `run`, `evaluate` and `predict`; the refusals
of bad streaming configs are the same from validate and run."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import yaml

from _helpers import assert_loss_decreased
from mtlkit.cli.main import main
from mtlkit.data import impression_log
from mtlkit.predict import load_predictor

# the test and CSV logs hold users the training log never saw (prediction warns about them)
pytestmark = pytest.mark.filterwarnings("ignore:.*categories not seen in training")

TASKS = {
    "click": {"column": "click", "kind": "binary"},
    "conversion": {"column": "conversion", "kind": "binary"},
    "watch_time": {"column": "watch_time", "kind": "regression"},
}
CATEGORICAL = ["user_id", "item_id", "device"]
NUMERIC = ["price", "user_activity", "position"]


def config(train: Any, val: Any, test: Any, **data: Any) -> dict[str, Any]:
    return {
        "name": "stream",
        "data": {
            "name": "tabular",
            "streaming": True,
            "train": train,
            "val": val,
            "test": test,
            "categorical": CATEGORICAL,
            "numeric": NUMERIC,
            "tasks": TASKS,
            "shuffle_buffer": 512,
            "num_workers": 0,
            **data,
        },
        "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [16], "tower_dims": [8]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "trainer": {"epochs": 3, "batch_size": 128, "progress": False},
    }


def write(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("logs")
    impression_log(root / "train", rows=3000, shard_rows=1000, seed=0)
    impression_log(root / "val", rows=600, shard_rows=600, seed=1)
    impression_log(root / "test", rows=900, shard_rows=450, seed=2)
    return root


@pytest.fixture(scope="module")
def trained(logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("run")
    cfg = write(root / "stream.yaml", config(str(logs / "train"), str(logs / "val"), str(logs / "test/*.parquet")))
    assert main(["validate", str(cfg)]) == 0
    assert main(["run", str(cfg), "--out", str(root / "runs"), "--no-progress"]) == 0
    return next((root / "runs").glob("stream-*"))


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.parquet"))


def read_all(files: list[Path], columns: list[str]) -> dict[str, np.ndarray]:
    table = pa.concat_tables([pq.read_table(f, columns=columns) for f in files])
    return {c: table.column(c).to_numpy(zero_copy_only=False) for c in columns}


# ---------------------------------------------------------------------------------------------- run
def test_streamed_run_trains_and_saves_what_prediction_needs(trained: Path) -> None:
    assert (trained / "preprocessor.json").is_file() and (trained / "checkpoint.pt").is_file()
    history = json.loads((trained / "history.json").read_text())
    assert len(history) == 3
    assert_loss_decreased(history, 0.98, "streamed training")
    record = json.loads((trained / "metrics.json").read_text())
    assert record["split"] == "test"
    assert set(record["metrics"]) == set(TASKS)
    assert all(math.isfinite(v) for ms in record["metrics"].values() for v in ms.values())
    assert record["data"]["streaming"] is True
    files = record["data_fingerprint"]["splits"]["train"]["files"]
    assert [Path(f).name for f in files] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [v["rows"] for v in files.values()] == [1000, 1000, 1000]


def test_evaluate_streams_the_test_files(trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", str(trained)]) == 0
    out = capsys.readouterr().out
    assert "test metrics" in out
    saved = json.loads((trained / "metrics.json").read_text())["metrics"]
    assert f"{saved['click']['auc']:.4f}" in out  # the same model on the same test rows
    assert main(["evaluate", str(trained), "--split", "val"]) == 0
    assert "val metrics" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------- predict
def test_predict_a_glob_of_shards_to_parquet_and_csv_in_input_order(
    trained: Path, logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pattern = str(logs / "train" / "*.parquet")
    out = tmp_path / "preds.parquet"
    assert main(["predict", str(trained), pattern, "--out", str(out), "--keep", "sample_id", "--batch-size", "300"]) == 0
    assert f"Wrote predictions to {out}" in capsys.readouterr().out
    preds = pq.read_table(out)
    assert preds.column_names == ["sample_id", "click", "conversion", "watch_time"]
    ids = read_all(shards(logs / "train"), ["sample_id"])["sample_id"]
    assert preds.num_rows == 3000
    np.testing.assert_array_equal(preds.column("sample_id").to_numpy(), ids)
    assert not out.with_name(out.name + ".partial").exists()

    # the same rows held in memory and predicted at once give the same numbers
    raw = read_all(shards(logs / "train"), [*CATEGORICAL, *NUMERIC])
    want = load_predictor(trained).predict({c: v.astype(np.float64) if c != "device" else v for c, v in raw.items()})
    for task in TASKS:
        got = preds.column(task).to_numpy()
        scale = max(1.0, float(np.abs(want[task].numpy()).max()))
        np.testing.assert_allclose(got, want[task].numpy(), rtol=0, atol=1e-6 * scale)
    p = preds.column("click").to_numpy()
    assert np.all((p > 0) & (p < 1))

    out_csv = tmp_path / "preds.csv"
    assert main(["predict", str(trained), str(logs / "train"), "--out", str(out_csv), "--keep", "sample_id"]) == 0
    with out_csv.open(newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["sample_id", "click", "conversion", "watch_time"]
    assert [int(r[0]) for r in rows[1:]] == ids.tolist()
    np.testing.assert_allclose([float(r[1]) for r in rows[1:]], preds.column("click").to_numpy(), rtol=1e-6)


def rank_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """AUC as the Mann-Whitney statistic (average ranks for ties), independent of mtlkit's metric."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    i = 0
    while i < len(scores):
        j = i
        while j + 1 < len(scores) and sorted_scores[j + 1] == sorted_scores[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def test_predictions_reproduce_the_streamed_test_metrics(trained: Path, logs: Path, tmp_path: Path) -> None:
    """Prediction reads the files with its own code path; the run evaluated the test stream with the
    training encoding. The same AUC from both shows they encode the rows alike."""
    out = tmp_path / "test.parquet"
    assert main(["predict", str(trained), str(logs / "test"), "--out", str(out), "--batch-size", "97"]) == 0
    click = pq.read_table(out).column("click").to_numpy()
    labels = read_all(shards(logs / "test"), ["click"])["click"]
    saved = json.loads((trained / "metrics.json").read_text())["metrics"]["click"]["auc"]
    assert rank_auc(click.astype(np.float64), labels) == pytest.approx(saved, abs=1e-6)


def test_predict_refuses_a_shard_without_a_needed_column_and_leaves_no_file(
    trained: Path, logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for i, f in enumerate(shards(logs / "train")):
        table = pq.read_table(f)
        pq.write_table(table.drop_columns(["price"]) if i == 1 else table, folder / f.name)
    out = tmp_path / "p.parquet"
    assert main(["predict", str(trained), str(folder), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "part-00001.parquet lacks column(s) ['price'] that the model needs" in err
    assert "Traceback" not in err and not out.exists()


# ---------------------------------------------------------------------------------------------- CSV shards
def test_csv_shards_stream_too(logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folders = {}
    for split in ("train", "val", "test"):
        folders[split] = tmp_path / f"{split}_csv"
        folders[split].mkdir()
        for f in shards(logs / split):
            pacsv.write_csv(pq.read_table(f), folders[split] / f"{f.stem}.csv")
    cfg = config(str(folders["train"] / "*.csv"), str(folders["val"]), [str(p) for p in sorted(folders["test"].iterdir())])
    cfg["trainer"].update(epochs=2, batch_size=256)
    path = write(tmp_path / "csv.yaml", cfg)
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    run = next((tmp_path / "runs").glob("stream-*"))
    history = json.loads((run / "history.json").read_text())
    assert_loss_decreased(history, 0.99, "streamed CSV training")
    out = tmp_path / "p.csv"
    assert main(["predict", str(run), str(folders["test"]), "--out", str(out), "--keep", "sample_id", "--ignore-extra"]) == 0
    with out.open(newline="") as fh:
        rows = list(csv.reader(fh))
    ids = read_all(shards(logs / "test"), ["sample_id"])["sample_id"]
    assert [int(r[0]) for r in rows[1:]] == ids.tolist()


# ---------------------------------------------------------------------------------------------- refusals
def _both(tmp_path: Path, capsys: pytest.CaptureFixture[str], cfg: Path) -> str:
    """`validate` and `run` refuse the config with the same words, before any run directory exists."""
    out = tmp_path / "runs"
    rc_validate = main(["validate", str(cfg)])
    err_validate = capsys.readouterr().err
    rc_run = main(["run", str(cfg), "--out", str(out), "--no-progress"])
    err_run = capsys.readouterr().err
    assert (rc_validate, rc_run) == (2, 2), (err_validate, err_run)
    assert "Traceback" not in err_validate + err_run
    assert err_validate == err_run
    assert not out.exists() or not any(out.iterdir())
    return err_validate


def test_streaming_with_val_fraction_is_refused_by_both(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(str(logs / "train"), None, str(logs / "test"), val_fraction=0.1)
    del cfg["data"]["val"]
    err = _both(tmp_path, capsys, write(tmp_path / "c.yaml", cfg))
    assert "val_fraction cannot be used with streaming: true" in err and "give the validation rows as files" in err


def test_a_glob_matching_nothing_is_refused_by_both(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = config(str(logs / "train" / "*.parket"), str(logs / "val"), str(logs / "test"))
    err = _both(tmp_path, capsys, write(tmp_path / "c.yaml", cfg))
    assert "tabular: train: The pattern" in err and "*.parket' matches no file" in err


def test_a_shard_missing_a_column_is_refused_by_both(
    logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    for i, f in enumerate(shards(logs / "train")):
        table = pq.read_table(f)
        pq.write_table(table.drop_columns(["user_activity"]) if i == 1 else table, folder / f.name)
    cfg = config(str(folder), str(logs / "val"), str(logs / "test"), fit_rows=500)  # the fit never reads shard 2
    err = _both(tmp_path, capsys, write(tmp_path / "c.yaml", cfg))
    assert "part-00001.parquet has no column(s) 'user_activity'" in err


def test_a_per_task_schedule_is_refused_by_both(logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(str(logs / "train"), str(logs / "val"), str(logs / "test"))
    cfg["schedule"] = {"name": "alternating"}
    err = _both(tmp_path, capsys, write(tmp_path / "c.yaml", cfg))
    assert "schedule (alternating): Schedule 'alternating'" in err and "use schedule 'joint' or 'mixed'" in err


def test_the_mixed_schedule_validates_on_a_stream(logs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = config(str(logs / "train"), str(logs / "val"), str(logs / "test"))
    cfg["schedule"] = {"name": "mixed"}  # one stream: the joint plan
    assert main(["validate", str(write(tmp_path / "c.yaml", cfg))]) == 0, capsys.readouterr().err
