"""`mtlkit run --resume`: a run killed with SIGKILL mid-training, resumed, ends with the metrics of
an uninterrupted run; finished runs are kept; bad run directories give clear errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mtlkit.cli.main import main

# two variants: the first finishes before the kill, the second is killed after its first epoch
TINY = {
    "name": "tiny",
    "seeds": [0],
    "data": {"name": "synthetic_correlation", "n_train": 1024, "n_val": 64, "n_test": 128, "dim": 10},
    "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]},
    "weighting": {"name": "uncertainty"},
    "trainer": {"epochs": 4, "batch_size": 32, "early_stopping": {"monitor": "mean/loss", "patience": 5}},
    "compare": {"single_task": {"model": {"name": "single_task", "hidden_dims": [8]}}, "mmoe": {}},
}


def close(a: object, b: object, tol: float = 1e-6) -> bool:
    """Nested dicts/lists equal, numbers within ``tol``."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], tol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, tol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tol
    return a == b


def only_dir(parent: Path) -> Path:
    (d,) = [p for p in parent.iterdir() if p.is_dir()]
    return d


@pytest.fixture
def one_thread_env(one_thread: None) -> dict[str, str]:
    """One intra-op thread here and in the subprocess: same arithmetic, and tiny models run fastest."""
    return {**os.environ, "OMP_NUM_THREADS": "1"}


def test_kill_9_then_resume_matches_an_uninterrupted_run(tmp_path: Path, capsys, one_thread_env: dict[str, str]) -> None:
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY, sort_keys=False))
    env = one_thread_env
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlkit", "run", str(cfg), "--out", str(tmp_path / "killed"), "--no-progress"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    try:
        while not list((tmp_path / "killed").glob("*/mmoe/seed0/checkpoint.pt")):
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)  # mid-run, after at least one epoch of the second variant
    finally:
        proc.kill()
        proc.wait()
    root = only_dir(tmp_path / "killed")
    interrupted = root / "mmoe" / "seed0"
    assert not (interrupted / "metrics.json").exists(), "the run finished before the kill"
    assert not (root / "comparison.json").exists()
    finished = (root / "single_task" / "seed0" / "metrics.json").read_bytes()

    assert main(["run", "--resume", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(finished earlier)" in out and "resuming after epoch" in out
    assert (root / "single_task" / "seed0" / "metrics.json").read_bytes() == finished  # kept, not retrained

    assert main(["run", str(cfg), "--out", str(tmp_path / "full"), "--no-progress"]) == 0
    full = only_dir(tmp_path / "full")
    for label in ("single_task", "mmoe"):
        a = json.loads((root / label / "seed0" / "metrics.json").read_text())
        b = json.loads((full / label / "seed0" / "metrics.json").read_text())
        assert close(a["metrics"], b["metrics"]), label
        assert a["epochs"] == b["epochs"] == 4
        ha = json.loads((root / label / "seed0" / "history.json").read_text())
        hb = json.loads((full / label / "seed0" / "history.json").read_text())
        assert close([h["train"] for h in ha], [h["train"] for h in hb]), label
        assert close([h["val"] for h in ha], [h["val"] for h in hb]), label
    ca = json.loads((root / "comparison.json").read_text())
    cb = json.loads((full / "comparison.json").read_text())
    for label in ("single_task", "mmoe"):
        assert close(ca["labels"][label]["metrics"], cb["labels"][label]["metrics"])
        assert close(ca["labels"][label]["delta_m"], cb["labels"][label]["delta_m"])

    # resuming a finished experiment trains nothing and changes no run
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "comparison.json"}
    assert main(["run", "--resume", str(root), "--no-progress"]) == 0
    assert capsys.readouterr().out.count("(finished earlier)") == 2
    assert {p: p.read_bytes() for p in before} == before


@pytest.fixture
def finished_run(tmp_path: Path) -> Path:
    cfg = {
        **TINY,
        "seeds": None,
        "compare": None,
        "data": {**TINY["data"], "n_train": 128},
        "trainer": {"epochs": 1, "batch_size": 64},
    }
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    return only_dir(tmp_path / "runs")


def test_resume_errors_are_clear(finished_run: Path, tmp_path: Path, capsys) -> None:
    def error(*argv: str) -> tuple[int, str]:
        code = main(list(argv))
        return code, capsys.readouterr().err

    code, err = error("run", "--resume", str(tmp_path / "nope"))
    assert code == 1 and "Run directory" in err and "does not exist" in err
    (tmp_path / "empty").mkdir()
    code, err = error("run", "--resume", str(tmp_path / "empty"))
    assert code == 1 and "has no config.yaml; pass the run directory printed by `mtlkit run`" in err
    code, err = error("run", "--resume", str(finished_run), "trainer.epochs=3")
    assert code == 2 and "--resume uses the run's own config.yaml" in err

    # an interrupted run whose config.yaml was edited afterwards does not silently train something else
    (finished_run / "metrics.json").unlink()
    cfg = yaml.safe_load((finished_run / "config.yaml").read_text())
    cfg["model"]["num_experts"] = 3
    (finished_run / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    code, err = error("run", "--resume", str(finished_run))
    assert code == 1
    assert "checkpoint.pt' was written with another config than the run's config.yaml" in err
    assert "model.num_experts" in err and "Traceback" not in err


def test_resume_refuses_one_seed_of_a_comparison(tmp_path: Path, capsys) -> None:
    root = tmp_path / "exp"
    (root / "mmoe" / "seed0").mkdir(parents=True)
    (root / "config.yaml").write_text(yaml.safe_dump(TINY))
    (root / "mmoe" / "seed0" / "config.yaml").write_text(yaml.safe_dump({**TINY, "compare": None}))
    assert main(["run", "--resume", str(root / "mmoe" / "seed0")]) == 1
    assert (
        f"is one run of the experiment in {str(root)!r}; resume the whole experiment"
        in capsys.readouterr().err
    )


def test_damaged_metrics_file_is_reported(finished_run: Path, capsys) -> None:
    (finished_run / "metrics.json").write_text('{"label": ')
    assert main(["run", "--resume", str(finished_run)]) == 1
    assert "metrics.json' is damaged" in capsys.readouterr().err
