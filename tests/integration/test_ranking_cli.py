"""A ranking model end to end from the CLI: generated log -> tabular run with a bias tower, fusion
and an auxiliary task -> `mtlkit predict` (score column, position left blank) -> ONNX export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import torch
import yaml

from mtlkit.cli.main import main
from mtlkit.models import fuse
from mtlkit.models.fusion import fusion_terms
from mtlkit.runs import find_runs

FEATURES = ["u0", "u1", "u2", "u3", "v0", "v1", "v2", "v3", "promo", "device", "position"]


def test_tabular_ranking_run_predicts_the_score_without_the_position(tmp_path: Path) -> None:
    log = tmp_path / "log.csv"
    assert main(["generate", "youtube-log", str(log), "--slates", "120", "--seed", "1"]) == 0
    config = {
        "name": "rank",
        "data": {
            "name": "tabular",
            "train": str(log),
            "val_fraction": 0.1,
            "test_fraction": 0.1,
            "numeric": FEATURES[:9],
            "categorical": ["device", "position"],
            "tasks": {
                "click": {"column": "click", "kind": "binary"},
                "watch_time": {"column": "watch_time", "kind": "regression"},
                "like": {"column": "like", "kind": "binary", "auxiliary": True},
            },
        },
        "model": {
            "name": "shared_bottom",
            "bottom_dims": [16],
            "tower_dims": [8],
            "bias_tower": {"features": ["position", "device"], "tasks": ["click"], "dims": [4]},
            "fusion": {"terms": {"click": 1, "watch_time": {"weight": 0.5, "transform": "plus_one"}}},
        },
        "trainer": {"epochs": 1, "batch_size": 256, "device": "cpu"},
        "output_dir": str(tmp_path / "runs"),
    }
    cfg = tmp_path / "rank.yaml"
    cfg.write_text(yaml.safe_dump(config))
    assert main(["validate", str(cfg)]) == 0
    assert main(["run", str(cfg), "--no-progress"]) == 0
    (run_dir,) = find_runs(tmp_path / "runs")
    with log.open() as fh:
        rows = list(csv.DictReader(fh))[:15]
    new = tmp_path / "new.csv"
    with new.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", *FEATURES])
        for i, r in enumerate(rows):
            w.writerow([i, *(r[c] for c in FEATURES[:-1]), ""])  # position unknown at serving
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_dir), str(new), "--out", str(out), "--keep", "id"]) == 0
    with out.open() as fh:
        preds = list(csv.DictReader(fh))
    assert next(iter(preds[0])) == "id"
    assert set(preds[0]) == {"id", "click", "watch_time", "like", "score"}
    got = np.array([float(p["score"]) for p in preds])
    want = fuse(
        {
            "click": torch.tensor([float(p["click"]) for p in preds], dtype=torch.float64),
            "watch_time": torch.tensor([float(p["watch_time"]) for p in preds], dtype=torch.float64),
        },
        fusion_terms({"click": 1, "watch_time": {"weight": 0.5, "transform": "plus_one"}}),
    ).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert main(["export", str(run_dir), "--check"]) == 0
    manifest = json.loads((run_dir / "export-onnx" / "manifest.json").read_text())
    assert {o["name"] for o in manifest["outputs"]} == {"click", "watch_time", "like", "score"}
    comparison = json.loads((run_dir / "comparison.json").read_text())
    assert comparison["auxiliary"] == ["like"]
