"""`mtlkit predict` and `mtlkit export` on trained run directories: raw CSV columns in, one column
per prediction out, equal to the trained model applied to the training-time preprocessing."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from torch import nn

from _helpers import MiniESMM
from mtlkit import Task
from mtlkit.cli.main import main
from mtlkit.config.build import build_model
from mtlkit.config.load import resolve
from mtlkit.data import DataSplits, MultiTaskDataset, TabularPreprocessor
from mtlkit.predict import load_predictor
from mtlkit.registries import DATASETS, MODELS

N_TRAIN, N_TEST = 240, 60


# ---------------------------------------------------------------------------------------------- test data
def raw_table(n: int, seed: int) -> dict[str, np.ndarray]:
    """Columns as a CSV reader returns them: strings, with missing values ("?", "")."""
    rng = np.random.default_rng(seed)
    age = rng.normal(40, 12, n).round(1).astype(str)
    age[rng.random(n) < 0.1] = "?"
    return {
        "color": rng.choice(["red", "green", "blue", ""], n).astype(str),
        "size": rng.choice(["S", "M", "L"], n).astype(str),
        "age": age,
        "income": rng.lognormal(10, 1, n).round(2).astype(str),
    }


def tiny_tabular(*, seed: int = 0) -> DataSplits:
    """Three tasks (binary, 3-class, regression) on two categorical and two numeric columns."""
    raw = raw_table(N_TRAIN + N_TEST, seed)
    pre = TabularPreprocessor(categorical=["color", "size"], numeric=["age", "income"])
    pre.fit({k: v[:N_TRAIN] for k, v in raw.items()})
    x = pre.transform(raw)
    num = x["numeric"]
    targets = {
        "click": ((num[:, 0] + (x["categorical"][:, 0] == 1).float()) > 0.5).float(),
        "segment": x["categorical"][:, 1] % 3,
        "spend": num[:, 1] - 0.5 * num[:, 0],
    }
    tasks = (
        Task(name="click", kind="binary"),
        Task(name="segment", kind="multiclass", num_classes=3),
        Task(name="spend", kind="regression"),
    )
    train, test = MultiTaskDataset(x, targets, tasks=tasks).split([N_TRAIN, N_TEST])
    return DataSplits(train, None, test, tasks, pre.schema, {"generator": "tiny_tabular"}, pre)


FEATURES = ("price", "rank", "hour", "age")


def tiny_clicks(*, seed: int = 0) -> DataSplits:
    """Flat features with declared names; labels ctr and ctcvr (a conversion implies a click)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, len(FEATURES), generator=g)
    ctr = (x[:, 0] + 0.5 * torch.randn(200, generator=g) > 0).float()
    ctcvr = ctr * (x[:, 1] > 0).float()
    tasks = (Task(name="ctr", kind="binary", logits=False), Task(name="ctcvr", kind="binary", logits=False))
    train, test = MultiTaskDataset(x, {"ctr": ctr, "ctcvr": ctcvr}, tasks=tasks).split([160, 40])
    return DataSplits(train, None, test, tasks, len(FEATURES), {"feature_names": list(FEATURES)})


def mini_esmm(input_dim: int, tasks: Any) -> MiniESMM:
    """Test-only ESMM-shaped model."""
    return MiniESMM(input_dim)


@pytest.fixture(scope="module")
def registered():
    DATASETS.register("tiny_tabular")(tiny_tabular)
    DATASETS.register("tiny_clicks")(tiny_clicks)
    MODELS.register("mini_esmm")(mini_esmm)
    yield
    DATASETS.unregister("tiny_tabular")
    DATASETS.unregister("tiny_clicks")
    MODELS.unregister("mini_esmm")


def train(root: Path, config: dict[str, Any]) -> Path:
    path = root / f"{config['name']}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(path), "--out", str(root / "runs"), "--no-progress"]) == 0
    return next((root / "runs").glob(f"{config['name']}-*"))


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory, registered) -> Path:
    root = tmp_path_factory.mktemp("tabular")
    return train(
        root,
        {
            "name": "tab",
            "data": {"name": "tiny_tabular"},
            "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]},
            "trainer": {"epochs": 2, "batch_size": 64},
        },
    )


def write_csv(path: Path, columns: dict[str, Any]) -> Path:
    names = list(columns)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(names)
        w.writerows(zip(*(columns[c] for c in names)))
    return path


def read_csv(path: Path) -> dict[str, list[str]]:
    with path.open(newline="") as fh:
        rows = list(csv.reader(fh))
    return {name: [r[j] for r in rows[1:]] for j, name in enumerate(rows[0])}


def trained_model(run_dir: Path, splits: DataSplits) -> nn.Module:
    """The run's model rebuilt from config.yaml, with the checkpoint's final weights."""
    cfg = next(iter(resolve(yaml.safe_load((run_dir / "config.yaml").read_text())).variants.values()))
    model = build_model(cfg.model, splits, cfg.backbone)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    model.load_state_dict(state["model"])
    return model.eval()


# ---------------------------------------------------------------------------------------------- tests
def test_run_directory_holds_the_signature_and_the_preprocessor(tabular_run: Path) -> None:
    signature = json.loads((tabular_run / "signature.json").read_text())
    assert [t["name"] for t in signature["tasks"]] == ["click", "segment", "spend"]
    assert signature["input"]["kind"] == "tabular"
    assert signature["input"]["schema"]["categorical"] == ["color", "size"]
    saved = json.loads((tabular_run / "preprocessor.json").read_text())
    assert saved == tiny_tabular().preprocessor.state_dict()


def test_predict_csv_equals_the_trained_model_on_the_training_preprocessing(
    tabular_run: Path, tmp_path: Path, capsys
) -> None:
    raw = {k: v[N_TRAIN:] for k, v in raw_table(N_TRAIN + N_TEST, 0).items()}
    rows = {"id": [f"u{i}" for i in range(N_TEST)], **raw}
    inp = write_csv(tmp_path / "input.csv", rows)
    out = tmp_path / "preds.csv"
    assert main(["predict", str(tabular_run), str(inp), "--out", str(out), "--keep", "id"]) == 0
    assert f"Wrote predictions to {out}" in capsys.readouterr().out
    preds = read_csv(out)
    assert list(preds) == ["id", "click", "segment_p0", "segment_p1", "segment_p2", "segment_class", "spend"]
    assert preds["id"] == rows["id"]

    splits = tiny_tabular()  # preprocessing as in training, independent of preprocessor.json
    assert splits.test is not None
    model = trained_model(tabular_run, splits)
    with torch.no_grad():
        out_ = model(splits.test.inputs)
    click = torch.sigmoid(out_["click"]).reshape(-1)
    segment = torch.softmax(out_["segment"].double(), dim=1).float()
    got = lambda c: np.array(preds[c], dtype=np.float64)  # noqa: E731
    np.testing.assert_allclose(got("click"), click.numpy(), rtol=0, atol=1e-6)
    for k in range(3):
        np.testing.assert_allclose(got(f"segment_p{k}"), segment[:, k].numpy(), rtol=0, atol=1e-6)
    assert [int(v) for v in preds["segment_class"]] == segment.argmax(1).tolist()
    np.testing.assert_allclose(got("spend"), out_["spend"].reshape(-1).numpy(), rtol=1e-6, atol=1e-6)

    # the Python API gives the same numbers
    api = load_predictor(tabular_run).predict(raw)
    assert list(api) == ["click", "segment", "spend"]
    np.testing.assert_allclose(api["click"].numpy(), got("click"), rtol=0, atol=1e-7)
    assert api["segment"].shape == (N_TEST, 3)


def test_missing_and_extra_columns(tabular_run: Path, tmp_path: Path, capsys) -> None:
    raw = raw_table(5, 3)
    no_age = write_csv(tmp_path / "no_age.csv", {k: v for k, v in raw.items() if k != "age"})
    assert main(["predict", str(tabular_run), str(no_age), "--out", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err
    assert (
        "no_age.csv lacks column(s) ['age'] that the model needs. Expected columns: color, size, age, income"
        in err
    )
    assert "Traceback" not in err
    extra = write_csv(tmp_path / "extra.csv", {**raw, "label": ["1"] * 5})
    assert main(["predict", str(tabular_run), str(extra), "--out", str(tmp_path / "p.csv")]) == 1
    assert "extra.csv has column(s) ['label'] that the model does not read" in capsys.readouterr().err
    assert (
        main(["predict", str(tabular_run), str(extra), "--out", str(tmp_path / "p.csv"), "--ignore-extra"])
        == 0
    )
    assert next(iter(read_csv(tmp_path / "p.csv"))) == "click"
    header_only = write_csv(tmp_path / "empty.csv", {k: [] for k in raw})
    assert main(["predict", str(tabular_run), str(header_only), "--out", str(tmp_path / "p.csv")]) == 1
    assert "empty.csv has no data rows" in capsys.readouterr().err


def test_export_cli_onnx_torchscript_and_embedded_preprocessing(
    tabular_run: Path, tmp_path: Path, capsys
) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    assert main(["export", str(tabular_run), "--check"]) == 0
    out = capsys.readouterr().out
    assert f"Exported onnx to {tabular_run / 'export-onnx'}" in out and "max |export - eager|" in out
    folder = tabular_run / "export-onnx"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx", "preprocessor.json"]
    assert json.loads((folder / "preprocessor.json").read_text()) == json.loads(
        (tabular_run / "preprocessor.json").read_text()
    )
    assert (
        main(
            ["export", str(tabular_run), "--format", "torchscript", "--out", str(tmp_path / "ts"), "--check"]
        )
        == 0
    )
    assert (tmp_path / "ts" / "model.pt").is_file()

    # raw CSV columns straight into ONNX Runtime give the predictions of `mtlkit predict`
    assert main(["export", str(tabular_run), "--embed-preprocessing", "--out", str(tmp_path / "raw")]) == 0
    raw = raw_table(25, 9)
    inp = write_csv(tmp_path / "in.csv", raw)
    assert main(["predict", str(tabular_run), str(inp), "--out", str(tmp_path / "p.csv")]) == 0
    preds = read_csv(tmp_path / "p.csv")
    session = ort.InferenceSession(str(tmp_path / "raw" / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {
        "color": raw["color"],
        "size": raw["size"],
        "age": np.where(raw["age"] == "?", "nan", raw["age"]).astype(np.float64),
        "income": raw["income"].astype(np.float64),
    }
    click, segment, spend = session.run(["click", "segment", "spend"], feed)
    np.testing.assert_allclose(click, np.array(preds["click"], dtype=np.float64), rtol=0, atol=1e-5)
    np.testing.assert_allclose(
        segment[:, 2], np.array(preds["segment_p2"], dtype=np.float64), rtol=0, atol=1e-5
    )
    np.testing.assert_allclose(spend, np.array(preds["spend"], dtype=np.float64), rtol=1e-5, atol=1e-5)


def test_flat_features_and_outputs_that_are_not_tasks(tmp_path: Path, registered, capsys) -> None:
    run = train(
        tmp_path,
        {
            "name": "esmm",
            "data": {"name": "tiny_clicks"},
            "model": {"name": "mini_esmm"},
            "trainer": {"epochs": 1, "batch_size": 40},
        },
    )
    predictor = load_predictor(run)
    assert predictor.input_columns == FEATURES  # the dataset's declared feature names
    splits = tiny_clicks()
    assert splits.test is not None
    x = splits.test.inputs
    inp = write_csv(
        tmp_path / "x.csv", {n: [f"{v:.9g}" for v in x[:, j].tolist()] for j, n in enumerate(FEATURES)}
    )
    assert main(["predict", str(run), str(inp), "--out", str(tmp_path / "p.csv")]) == 0
    preds = {k: np.array(v, dtype=np.float64) for k, v in read_csv(tmp_path / "p.csv").items()}
    assert list(preds) == ["ctr", "cvr", "ctcvr"]  # pCTR, pCVR (not a task), pCTCVR
    with torch.no_grad():
        want = trained_model(run, splits)(x)
    for k in preds:
        np.testing.assert_allclose(preds[k], want[k].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(preds["ctcvr"], preds["ctr"] * preds["cvr"], rtol=1e-6)

    bad = write_csv(
        tmp_path / "bad.csv", {n: ["1.0", "oops"] if n == "rank" else ["1", "2"] for n in FEATURES}
    )
    assert main(["predict", str(run), str(bad), "--out", str(tmp_path / "p.csv")]) == 1
    assert "bad.csv: column 'rank' holds non-numeric values" in capsys.readouterr().err
    nan = write_csv(tmp_path / "nan.csv", {n: ["1", "nan"] for n in FEATURES})
    assert main(["predict", str(run), str(nan), "--out", str(tmp_path / "p.csv")]) == 1
    assert "column 'price' has a missing or non-finite value in row 2" in capsys.readouterr().err


def test_a_comparison_directory_asks_for_one_run(tmp_path: Path, capsys) -> None:
    for label in ("mmoe", "single_task"):
        (tmp_path / label / "seed0").mkdir(parents=True)
        (tmp_path / label / "seed0" / "checkpoint.pt").write_bytes(b"")
    assert main(["predict", str(tmp_path), "in.csv", "--out", "p.csv"]) == 1
    err = capsys.readouterr().err
    assert "holds 2 trained models (mmoe/seed0, single_task/seed0); pass one of them" in err
    assert main(["export", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_predict_warns_about_categories_unseen_in_training(tabular_run: Path, tmp_path: Path) -> None:
    from mtlkit.data.preprocessing import UnknownCategoryWarning

    raw = raw_table(6, 5)
    raw["color"] = np.array(["purple", "red", "teal", "green", "", "blue"])  # "" is missing, not unseen
    raw["size"] = np.array(["XL", "S", "M", "L", "S", "M"])
    inp = write_csv(tmp_path / "new.csv", raw)
    with pytest.warns(UnknownCategoryWarning) as record:
        assert main(["predict", str(tabular_run), str(inp), "--out", str(tmp_path / "p.csv")]) == 0
    msg = str(record[0].message)
    assert msg.startswith(f"{inp}: 2 of 6 rows hold categories not seen in training")
    assert "'color': 2, 'size': 1" in msg and "1 rows have no known category in any column" in msg
    assert len(read_csv(tmp_path / "p.csv")["click"]) == 6


def test_predict_refuses_infinite_numeric_values_naming_the_file_and_row(
    tabular_run: Path, tmp_path: Path, capsys
) -> None:
    raw = raw_table(4, 6)
    raw["income"] = np.array(["10.5", "12", "inf", "9"])
    inp = write_csv(tmp_path / "inf.csv", raw)
    assert main(["predict", str(tabular_run), str(inp), "--out", str(tmp_path / "p.csv")]) == 1
    err = capsys.readouterr().err
    assert f"{inp}: TabularPreprocessor: numeric column 'income' holds inf in row 3" in err
    assert "Traceback" not in err and not (tmp_path / "p.csv").exists()
