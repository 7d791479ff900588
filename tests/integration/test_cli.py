"""The command line end to end, through a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mtlkit.cli.main import main
from mtlkit.experiment import evaluate_run_dir

TINY = {
    "name": "tiny",
    "seeds": [0],
    "data": {
        "name": "synthetic_correlation",
        "correlation": 0.5,
        "n_train": 256,
        "n_val": 64,
        "n_test": 64,
        "dim": 10,
    },
    "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]},
    "weighting": {"name": "uncertainty"},
    "trainer": {"epochs": 2, "batch_size": 64, "early_stopping": {"monitor": "mean/loss", "patience": 3}},
    "compare": {"single_task": {"model": {"name": "single_task", "hidden_dims": [8]}}, "mmoe": {}},
}


def mtlkit(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "mtlkit", *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env
    )


def test_run_then_evaluate_end_to_end(tmp_path: Path) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY, sort_keys=False))
    proc = mtlkit("run", str(cfg), "--out", str(tmp_path / "runs"), "trainer.epochs=3", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "y1 mse" in proc.stdout and "Δm vs single_task" in proc.stdout
    run_dirs = list((tmp_path / "runs").iterdir())
    assert len(run_dirs) == 1
    root = run_dirs[0]
    comparison = json.loads((root / "comparison.json").read_text())
    assert list(comparison["labels"]) == ["single_task", "mmoe"]
    assert comparison["labels"]["single_task"]["delta_m"] == 0.0
    for label in ("single_task", "mmoe"):
        rd = root / label / "seed0"
        for f in ("config.yaml", "metrics.json", "history.json", "checkpoint.pt"):
            assert (rd / f).is_file(), f
        saved = yaml.safe_load((rd / "config.yaml").read_text())
        assert saved["trainer"]["epochs"] == 3 and saved["seed"] == 0 and saved["compare"] is None
    # re-evaluating the checkpoints reproduces the metrics written at the end of training
    again = evaluate_run_dir(root)
    for label in ("single_task", "mmoe"):
        written = json.loads((root / label / "seed0" / "metrics.json").read_text())["metrics"]
        got = again[f"{label}/seed0"]
        for task, ms in written.items():
            for m, v in ms.items():
                assert got[task][m] == pytest.approx(v, rel=1e-5), (label, task, m)
    proc = mtlkit("evaluate", str(root), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "mmoe/seed0: test metrics" in proc.stdout


def test_single_run_directory(tmp_path: Path) -> None:
    single = {k: v for k, v in TINY.items() if k not in ("compare", "seeds")}
    cfg = tmp_path / "one.yaml"
    cfg.write_text(yaml.safe_dump(single))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"]) == 0
    (root,) = list((tmp_path / "r").iterdir())
    assert (root / "checkpoint.pt").is_file() and (root / "metrics.json").is_file()
    assert main(["evaluate", str(root), "--split", "val"]) == 0


def test_bad_config_exit_code_and_messages(tmp_path: Path) -> None:
    bad = dict(TINY, model={"name": "mmoe", "num_expert": 4}, trainer={"epochs": -1})
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(bad))
    proc = mtlkit("run", str(cfg), "optimizer.lr=fast", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "problems in" in proc.stderr
    assert "model.num_expert: unknown parameter for model 'mmoe'. Did you mean 'num_experts'?" in proc.stderr
    assert "trainer.epochs: Input should be greater than 0; got -1." in proc.stderr
    assert "optimizer.lr: Input should be a valid number" in proc.stderr
    proc = mtlkit("run", "--preset", "nope", cwd=tmp_path)
    assert proc.returncode == 2 and "unknown preset 'nope'" in proc.stderr


def test_corrupt_checkpoint_is_reported(tmp_path: Path) -> None:
    single = {k: v for k, v in TINY.items() if k not in ("compare", "seeds")}
    cfg = tmp_path / "one.yaml"
    cfg.write_text(yaml.safe_dump(single))
    assert main(["run", str(cfg), "--out", str(tmp_path / "r")]) == 0
    (root,) = list((tmp_path / "r").iterdir())
    (root / "checkpoint.pt").write_bytes(b"not a checkpoint")
    proc = mtlkit("evaluate", str(root), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr and "corrupt, truncated or not an mtlkit checkpoint" in proc.stderr


def test_list_and_validate(tmp_path: Path) -> None:
    proc = mtlkit("list", cwd=tmp_path)
    assert proc.returncode == 0
    for name in (
        "default",
        "mmoe",
        "omoe",
        "shared_bottom",
        "single_task",
        "uncertainty",
        "synthetic_correlation",
    ):
        assert name in proc.stdout
    proc = mtlkit("validate", "model.num_experts=4", cwd=tmp_path)
    assert proc.returncode == 0 and "num_experts: 4" in proc.stdout


@pytest.mark.slow
def test_default_preset_main_job(tmp_path: Path) -> None:
    """`mtlkit run` with no arguments: four models, three seeds, one comparison table."""
    proc = mtlkit("run", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (root,) = list(tmp_path.iterdir())
    comparison = json.loads((root / "comparison.json").read_text())
    assert list(comparison["labels"]) == ["single_task", "shared_bottom", "omoe", "mmoe"]
    for label in ("shared_bottom", "omoe", "mmoe"):
        assert comparison["labels"][label]["delta_m"] > 0  # sharing beats independent networks here
