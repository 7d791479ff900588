"""One YAML with per-task losses, target transforms and sample weights through `run`, `predict`
and an ONNX export: predictions are on the labels' scale (the transform inverted) and the export
equals the eager model within a relative 1e-5; the reported metrics are on the labels' scale."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtlkit.cli.main import main
from mtlkit.config.build import build_data, build_model
from mtlkit.config.load import resolve
from mtlkit.predict import load_predictor

N = 160


def _table(n: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    city = rng.choice(["paris", "rome", "oslo"], n)
    watch = np.round(np.expm1(2 + x + rng.normal(scale=0.3, size=n)).clip(0), 2)  # heavy-tailed
    return {
        "city": city,
        "x": np.round(x, 4),
        "click": (x + rng.normal(size=n) > 0).astype(int),
        "watch": watch,
        "spend": np.round(1000 + 300 * x, 2),
        "views": rng.poisson(np.exp(0.5 + 0.3 * x)),
        "w": np.round(rng.uniform(0.2, 3.0, n), 3),
    }


def _write(path: Path, cols: dict[str, np.ndarray]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(cols))
        w.writerows(zip(*cols.values()))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("opts")
    train = _write(root / "train.csv", _table(N, 0))
    test = _write(root / "test.csv", _table(60, 1))
    config = {
        "name": "opts",
        "data": {
            "name": "tabular",
            "train": str(train),
            "test": str(test),
            "val_fraction": 0.2,
            "categorical": ["city"],
            "numeric": ["x"],
            "weights": {"column": "w"},
            "tasks": {
                "click": {"column": "click", "kind": "binary", "pos_weight": 2.0},
                "watch": {
                    "column": "watch",
                    "kind": "regression",
                    "transform": "log1p",
                    "loss": {"name": "huber", "delta": 1.0},
                },
                "spend": {"column": "spend", "kind": "regression", "transform": "standardise"},
                "views": {"column": "views", "kind": "regression", "loss": "poisson"},
            },
        },
        "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]},
        "trainer": {"epochs": 2, "batch_size": 32},
    }
    path = root / "opts.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 0
    assert main(["run", str(path), "--out", str(root / "runs"), "--no-progress"]) == 0
    return next((root / "runs").glob("opts-*"))


def _eager(run: Path) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray], object]:
    cfg = next(iter(resolve(yaml.safe_load((run / "config.yaml").read_text())).variants.values()))
    splits = build_data(cfg.data)
    model = build_model(cfg.model, splits, cfg.backbone)
    model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    model.eval()
    assert splits.test is not None
    with torch.no_grad():
        out = model(splits.test.inputs)
    return out, {k: v.numpy() for k, v in splits.test.targets.items()}, splits


def test_predictions_are_on_the_label_scale_and_metrics_too(run: Path) -> None:
    signature = json.loads((run / "signature.json").read_text())
    by_name = {t["name"]: t for t in signature["tasks"]}
    assert by_name["watch"]["transform"] == {"name": "log1p"}
    assert by_name["spend"]["transform"]["name"] == "standardise"
    assert by_name["views"]["loss"] == {"name": "poisson"} and by_name["click"]["pos_weight"] == 2.0

    out, targets, _ = _eager(run)
    raw = _table(60, 1)
    preds = load_predictor(run).predict({"city": raw["city"], "x": raw["x"].astype(str)})
    watch = torch.expm1(out["watch"].double()).reshape(-1).numpy()
    np.testing.assert_allclose(preds["watch"].numpy(), watch, rtol=1e-5, atol=0)
    std = by_name["spend"]["transform"]
    spend = (out["spend"].double() * std["std"] + std["mean"]).reshape(-1).numpy()
    np.testing.assert_allclose(preds["spend"].numpy(), spend, rtol=1e-5, atol=0)
    views = torch.exp(out["views"].double()).reshape(-1).numpy()
    np.testing.assert_allclose(preds["views"].numpy(), views, rtol=1e-5, atol=0)
    assert preds["spend"].mean().item() == pytest.approx(
        float(np.mean(raw["spend"])), rel=0.5
    )  # the label scale

    # the test metrics of the run: weighted MSE on the original scale
    results = json.loads((run / "metrics.json").read_text())
    assert results["split"] == "test"
    test = results["metrics"]
    w = raw["w"]
    mse = float(np.sum(w * (preds["spend"].double().numpy() - targets["spend"]) ** 2) / np.sum(w))
    assert test["spend"]["mse"] == pytest.approx(mse, rel=1e-4)


def test_the_onnx_export_equals_the_eager_model(run: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mtlkit.export import export_run, relative_error

    folder = export_run(run, out=tmp_path / "onnx")
    manifest = json.loads((folder / "manifest.json").read_text())
    act = {o["name"]: o["activation"] for o in manifest["outputs"]}
    assert act["watch"] == "expm1" and act["views"] == "exp" and act["spend"].startswith("x * ")
    out, _, splits = _eager(run)
    assert splits.test is not None
    names = [o["name"] for o in manifest["outputs"]]
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    feed = {i["name"]: splits.test.inputs[i["name"]].numpy() for i in manifest["inputs"]}
    got = dict(zip(names, session.run(names, feed)))
    pred = load_predictor(run)
    want = {t.name: t.activate(out[t.name].float()).numpy() for t in pred.tasks}
    for name in ("watch", "spend", "views", "click"):
        # relative to each output's scale (mtlkit's export check): an output near 0 is not held to
        # its own magnitude, which float32 round-off of the network already exceeds
        _, rel = relative_error(got[name], want[name])
        assert rel <= 1e-5, (name, rel)
