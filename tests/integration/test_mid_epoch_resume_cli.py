"""`mtlkit run` with `trainer.checkpoint_every_steps`: killed with SIGKILL in the middle of an epoch
(a watcher reads the checkpoint's recorded position), `--resume` continues that epoch from its next
step and ends with the metrics and history of an uninterrupted run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from mtlkit.cli.main import main
from mtlkit.training.checkpoint import load_checkpoint

STEPS_PER_EPOCH = 32  # 1024 rows / 32
CONFIG = {
    "name": "mid",
    "seed": 3,
    "data": {"name": "synthetic_correlation", "n_train": 1024, "n_val": 64, "n_test": 128, "dim": 6},
    "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4], "dropout": 0.1},
    "weighting": {"name": "uncertainty"},
    "trainer": {"epochs": 3, "batch_size": 32, "checkpoint_every_steps": 3},
}


def close(a: object, b: object, rtol: float = 1e-6) -> bool:
    """Nested dicts/lists equal, numbers within ``rtol`` of their scale."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k], rtol) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y, rtol) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= rtol * max(1.0, abs(a))
    return a == b


def only_dir(parent: Path) -> Path:
    (d,) = [p for p in parent.iterdir() if p.is_dir()]
    return d


def position(path: Path) -> tuple[int, int] | None:
    """(epoch, steps done in it) recorded by a mid-epoch checkpoint; None between epochs or unreadable."""
    try:
        pos = torch.load(path, map_location="cpu", weights_only=True).get("position")
    except Exception:  # not there yet
        return None
    return (int(pos["epoch"]), int(pos["steps"])) if pos else None


@pytest.mark.slow  # ~14 s: a subprocess, a watcher and two more runs; the in-process variant below is fast
def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(
    tmp_path: Path, capsys, one_thread
) -> None:
    cfg = tmp_path / "mid.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtlkit", "run", str(cfg), "--out", str(tmp_path / "killed"), "--no-progress"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    try:
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no mid-epoch checkpoint of epoch 2 or later appeared"
            found = list((tmp_path / "killed").glob("*/checkpoint.pt"))
            pos = position(found[0]) if found else None
            if pos is not None and pos[0] >= 1 and pos[1] <= STEPS_PER_EPOCH // 2:
                os.kill(proc.pid, signal.SIGKILL)  # in the first half of epoch 2 (or a later one)
                break
            time.sleep(0.002)
    finally:
        proc.kill()
        proc.wait()
    root = only_dir(tmp_path / "killed")
    assert not (root / "metrics.json").exists(), "the run finished before the kill"
    saved = load_checkpoint(root / "checkpoint.pt")
    assert saved["position"] is not None, "the kill landed between epochs"  # the watcher kills mid-epoch
    epoch, steps = saved["position"]["epoch"], saved["position"]["steps"]
    assert 1 <= epoch < 3 and 0 < steps < STEPS_PER_EPOCH and steps % 3 == (-epoch * STEPS_PER_EPOCH) % 3

    assert main(["run", "--resume", str(root), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert f"resuming after epoch {epoch}, at step {steps} of epoch {epoch + 1}" in out

    assert main(["run", str(cfg), "--out", str(tmp_path / "full"), "--no-progress"]) == 0
    full = only_dir(tmp_path / "full")
    a = json.loads((root / "metrics.json").read_text())
    b = json.loads((full / "metrics.json").read_text())
    assert close(a["metrics"], b["metrics"]) and a["epochs"] == b["epochs"] == 3
    ha = json.loads((root / "history.json").read_text())
    hb = json.loads((full / "history.json").read_text())
    for key in ("train", "val", "weights", "lr"):
        assert close([h[key] for h in ha], [h[key] for h in hb]), key
    pa = load_checkpoint(root / "checkpoint.pt")["model"]
    pb = load_checkpoint(full / "checkpoint.pt")["model"]
    for name, t in pb.items():
        scale = t.abs().max().clamp_min(1e-12) if t.is_floating_point() else 1
        assert ((pa[name] - t).abs().max() / scale).item() <= 1e-6, name


@pytest.mark.parametrize("bad", ["0", "-2", "1.5", "true"])
def test_validate_and_run_refuse_a_bad_checkpoint_every_steps(bad: str, tmp_path: Path, capsys) -> None:
    cfg = tmp_path / "mid.yaml"
    cfg.write_text(yaml.safe_dump(CONFIG, sort_keys=False))
    override = f"trainer.checkpoint_every_steps={bad}"
    for argv in (["validate", str(cfg), override], ["run", str(cfg), override, "--out", str(tmp_path / "r")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "trainer.checkpoint_every_steps: must be a whole number of optimizer steps >= 1" in err
        assert "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_a_run_stopped_mid_epoch_resumes_from_the_cli(
    tmp_path: Path, capsys, monkeypatch, one_thread
) -> None:
    """The fast variant, in-process: the run fails at a step inside epoch 2 (as a crash would), then
    `mtlkit run --resume` continues from the mid-epoch checkpoint."""
    from mtlkit.training.trainer import Trainer

    cfg = tmp_path / "mid.yaml"
    small = {
        **CONFIG,
        "data": {**CONFIG["data"], "n_train": 256},
        "trainer": {**CONFIG["trainer"], "epochs": 2},
    }
    cfg.write_text(yaml.safe_dump(small, sort_keys=False))  # 8 steps per epoch
    original = Trainer.train_step

    def crash_at_step_13(self: Trainer, *args: object, **kwargs: object) -> object:
        if self.step == 12:  # the 13th step: after the checkpoint of step 12 (epoch 2, 4 steps done)
            raise RuntimeError("simulated crash")
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Trainer, "train_step", crash_at_step_13)
    with pytest.raises(RuntimeError, match="simulated crash"):  # not an mtlkit error: it propagates
        main(["run", str(cfg), "--out", str(tmp_path / "stopped"), "--no-progress"])
    monkeypatch.setattr(Trainer, "train_step", original)
    root = only_dir(tmp_path / "stopped")
    assert position(root / "checkpoint.pt") == (1, 4)
    capsys.readouterr()
    assert main(["run", "--resume", str(root), "--no-progress"]) == 0
    assert "resuming after epoch 1, at step 4 of epoch 2" in capsys.readouterr().out
    assert main(["run", str(cfg), "--out", str(tmp_path / "full"), "--no-progress"]) == 0
    full = only_dir(tmp_path / "full")
    a = json.loads((root / "metrics.json").read_text())
    b = json.loads((full / "metrics.json").read_text())
    assert close(a["metrics"], b["metrics"]) and a["epochs"] == b["epochs"] == 2
    ha = json.loads((root / "history.json").read_text())
    hb = json.loads((full / "history.json").read_text())
    for key in ("train", "val", "weights", "lr"):
        assert close([h[key] for h in ha], [h[key] for h in hb]), key
