"""Feature specs from YAML: hashed, shared list, log1p and bucketized columns through `mtlkit
validate`, `run`, `predict` and `export --check`, in memory and streamed; a bad spec is refused
alike by validate and run (issue 14 §1)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from mtlkit.cli.main import main
from mtlkit.predict import load_predictor

pytestmark = pytest.mark.filterwarnings("ignore:.*categories not seen in training")

CATEGORICAL = [
    "device",
    {"name": "user_id", "hash_buckets": 5000, "dim": 8},
    {"name": "item_id", "dim": 6},
    {"name": "history", "list": True, "delimiter": "|", "pooling": "mean", "share": "item_id"},
]
NUMERIC = ["price", {"name": "watch", "transform": "log1p"}, {"name": "age", "bucketize": [18, 25, 35, 50]}]


def write_csv(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    items = [f"item{k}" for k in range(40)]
    rows = []
    for _ in range(n):
        hist = rng.choice(items, rng.integers(0, 5))
        k = int(rng.integers(0, 40))
        item, device = items[k], rng.choice(["ios", "android", "web"])
        good = sum(int(h.removeprefix("item")) < 10 for h in hist)  # items 0-9 are popular
        logit = -1.5 + 1.5 * (k < 10) + 0.8 * good + 0.8 * (device == "ios")
        rows.append(
            {
                "device": device,
                "user_id": f"u{rng.integers(0, 400)}",
                "item_id": item,
                "history": "|".join(hist),
                "price": f"{rng.normal(10, 3):.3f}",
                "watch": f"{rng.exponential(50):.3f}",
                "age": f"{rng.uniform(12, 70):.1f}",
                "click": int(rng.random() < 1 / (1 + np.exp(-logit))),
            }
        )
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return path


def config(root: Path, **data: Any) -> dict[str, Any]:
    return {
        "name": "specs",
        "data": {
            "name": "tabular",
            "train": str(write_csv(root / "train.csv", 1200, 0)),
            "val": str(write_csv(root / "val.csv", 300, 1)),
            "test": str(write_csv(root / "test.csv", 300, 2)),
            "categorical": CATEGORICAL,
            "numeric": NUMERIC,
            "tasks": {"click": {"column": "click", "kind": "binary"}},
            **data,
        },
        "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [16], "tower_dims": [8]},
        "optimizer": {"name": "adam", "lr": 0.01},
        "trainer": {"epochs": 3, "batch_size": 128, "progress": False},
    }


@pytest.mark.parametrize("variant", ["memory", "streaming", "sparse"])
def test_feature_specs_run_predict_and_export_from_yaml(
    variant: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    extra = {"streaming": True, "num_workers": 0, "shuffle_buffer": 256} if variant == "streaming" else {}
    spec = config(tmp_path, **extra)
    if variant == "sparse":  # sparse-gradient tables (SparseAdam) and widths from the cardinality
        spec["backbone"] = {"name": "embedding", "sparse_embeddings": True, "embedding_dim": "auto"}
    cfg = tmp_path / "specs.yaml"
    cfg.write_text(yaml.safe_dump(spec, sort_keys=False))
    assert main(["validate", str(cfg)]) == 0
    assert main(["run", str(cfg), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    run = next((tmp_path / "runs").glob("specs-*"))
    saved = json.loads((run / "preprocessor.json").read_text())
    assert saved["features"]["categorical"][1] == {"name": "user_id", "hash_buckets": 5000, "dim": 8}
    auc = json.loads((run / "metrics.json").read_text())["metrics"]["click"]["auc"]
    assert auc > 0.65  # item, history (through the shared table) and device drive the label

    out = tmp_path / "preds.csv"
    assert main(["predict", str(run), str(tmp_path / "test.csv"), "--out", str(out), "--ignore-extra"]) == 0
    with out.open(newline="") as fh:
        got = np.array([float(r["click"]) for r in csv.DictReader(fh)])
    predictor = load_predictor(run)
    with (tmp_path / "test.csv").open(newline="") as fh:
        raw = list(csv.DictReader(fh))
    columns = {c: np.array([r[c] for r in raw]) for c in predictor.input_columns}
    want = predictor.predict(columns)["click"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    capsys.readouterr()
    assert main(["export", str(run), "--check"]) == 0
    assert "max |export - eager|" in capsys.readouterr().out


def test_a_bad_spec_is_refused_by_validate_and_run_alike(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = config(tmp_path)
    bad["data"]["categorical"] = [*CATEGORICAL[:3], {"name": "history", "list": True, "share": "item"}]
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad, sort_keys=False))
    for cmd in (["validate", str(cfg)], ["run", str(cfg), "--out", str(tmp_path / "runs")]):
        assert main(cmd) == 2  # a config problem
        err = capsys.readouterr().err
        assert "categorical column 'history' shares the table of 'item', which is not a categorical column" in err
        assert "Traceback" not in err
