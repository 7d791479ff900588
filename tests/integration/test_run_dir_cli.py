"""`mtlkit run` and its run directory under hostile conditions: the data changed before a resume,
`--out` is a file or read-only, the disk fills up, a second process resumes the same directory,
Ctrl-C; and one loader (`load_run`) behind evaluate, predict, export and the reproductions."""

from __future__ import annotations

import errno
import os
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from mtlkit.cli.main import main
from mtlkit.experiment import evaluate_run_dir
from mtlkit.predict import load_predictor
from mtlkit.reproduce._trained import load_trained
from mtlkit.runs import load_run
from mtlkit.training import Trainer
from mtlkit.training import checkpoint as ckpt_module
from mtlkit.training.checkpoint import load_checkpoint, save_checkpoint
from mtlkit.training.run_lock import LOCK_FILE


def write_csv(path: Path, n: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    x1, x2 = rng.normal(size=n), rng.normal(size=n)
    y, z = x1 - x2 + 0.1 * rng.normal(size=n), (x1 + x2 > 0).astype(int)
    lines = ["x1,x2,y,z", *(f"{a:.6f},{b:.6f},{c:.6f},{d}" for a, b, c, d in zip(x1, x2, y, z))]
    path.write_text("\n".join(lines) + "\n")
    return path


def config(csv: Path, epochs: int = 2) -> dict:
    return {
        "name": "csv",
        "data": {
            "name": "tabular",
            "train": str(csv),
            "numeric": ["x1", "x2"],
            "tasks": {"y": {"column": "y", "kind": "regression"}, "z": {"column": "z", "kind": "binary"}},
            "test_fraction": 0.25,
        },
        "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]},
        "trainer": {"epochs": epochs, "batch_size": 32},
    }


def run(tmp_path: Path, cfg: dict, *extra: str) -> tuple[int, Path | None]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    code = main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-progress", *extra])
    found = sorted((tmp_path / "runs").glob("csv-*")) if (tmp_path / "runs").is_dir() else []
    return code, (found[-1] if found else None)


@pytest.fixture
def interrupted(tmp_path: Path) -> Path:
    """A one-run experiment stopped after its first epoch (checkpoint.pt, no metrics.json)."""
    csv = write_csv(tmp_path / "train.csv", 80, seed=0)
    code, root = run(tmp_path, config(csv, epochs=1))
    assert code == 0 and root is not None
    (root / "metrics.json").unlink()
    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["trainer"]["epochs"] = 2  # config.yaml and checkpoint config must agree: edit both
    (root / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    state = load_checkpoint(root)
    state["extra"]["config"]["trainer"]["epochs"] = 2
    save_checkpoint(
        {k: v for k, v in state.items() if k not in ("format", "version")}, root / "checkpoint.pt"
    )
    return root


# ---------------------------------------------------------------------------------------------- data changed
def test_resume_refuses_changed_data_and_continues_with_the_override(
    interrupted: Path, tmp_path: Path, capsys
) -> None:
    root = interrupted
    assert load_checkpoint(root)["data_fingerprint"]["splits"]["train"]["rows"] == 60
    capsys.readouterr()
    write_csv(tmp_path / "train.csv", 84, seed=0)  # four rows more, in place
    assert main(["run", "--resume", str(root), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "The data changed since checkpoint" in err and "checkpoint.pt' was written" in err
    assert "the training split had 60 rows then, 63 now" in err
    assert "--allow-data-change" in err and "Traceback" not in err
    assert f"run directory {str(root)!r} is incomplete" in err and "continue it with" not in err
    assert load_checkpoint(root)["epoch"] == 1  # nothing was trained or written

    write_csv(tmp_path / "train.csv", 80, seed=1)  # same size, other values
    assert main(["run", "--resume", str(root), "--no-progress"]) == 1
    assert "the training split: inputs['numeric'] holds different values" in capsys.readouterr().err

    assert main(["run", "--resume", str(root), "--no-progress", "--allow-data-change"]) == 0
    out = capsys.readouterr().out
    assert "resuming after epoch 1" in out and "continuing on changed data" in out
    assert (root / "metrics.json").is_file()

    # the finished run recorded the new data: resuming it again on other data is refused too
    write_csv(tmp_path / "train.csv", 80, seed=2)
    assert main(["run", "--resume", str(root), "--no-progress"]) == 1
    assert f"The data changed since the run in {str(root)!r} finished" in capsys.readouterr().err
    assert main(["run", "--allow-data-change", str(tmp_path / "cfg.yaml")]) == 2
    assert "--allow-data-change applies to --resume RUN_DIR only" in capsys.readouterr().err


def test_unchanged_data_resumes_exactly_like_an_uninterrupted_run(interrupted: Path, tmp_path: Path) -> None:
    assert main(["run", "--resume", str(interrupted), "--no-progress"]) == 0
    full_cfg = config(tmp_path / "train.csv", epochs=2)
    code, full = run(tmp_path / "full", full_cfg)
    assert code == 0 and full is not None
    a, b = load_checkpoint(interrupted), load_checkpoint(full)
    assert a["data_fingerprint"] == b["data_fingerprint"]
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k


# ---------------------------------------------------------------------------------------------- write errors
def test_out_that_is_a_file_or_read_only_gives_a_clear_error(tmp_path: Path, monkeypatch, capsys) -> None:
    csv = write_csv(tmp_path / "train.csv", 40, seed=0)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(config(csv, epochs=1)))
    assert main(["run", str(cfg), "--out", str(csv), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"The output folder {str(csv)!r} cannot be created: {str(csv)!r} is a file, not a folder" in err
    assert "Pass a folder with --out" in err and "Traceback" not in err

    real_mkdir = Path.mkdir

    def read_only(self: Path, *args, **kwargs) -> None:
        if str(self).startswith(str(tmp_path / "ro")):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(["run", str(cfg), "--out", str(tmp_path / "ro"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"Cannot create the run directory in {str(tmp_path / 'ro')!r}: it is not writable" in err
    assert "pass a writable folder with --out" in err and "Traceback" not in err


def test_a_full_disk_stops_with_the_path_the_fix_and_the_resume_command(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    csv = write_csv(tmp_path / "train.csv", 80, seed=0)
    real_save = ckpt_module.torch.save
    calls = {"n": 0}

    def fills_up(obj: object, fh) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the checkpoint of epoch 2
            fh.write(b"\0" * 64)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_save(obj, fh)

    monkeypatch.setattr(ckpt_module.torch, "save", fills_up)
    code, root = run(tmp_path, config(csv, epochs=3))
    err = capsys.readouterr().err
    assert code == 1 and root is not None
    assert f"Cannot write {str(root / 'checkpoint.pt')!r}: the disk is full (No space left on device)" in err
    assert "free some space" in err and "Traceback" not in err
    assert f"mtlkit run --resume {shlex.quote(str(root))}" in err
    assert load_checkpoint(root)["epoch"] == 1  # the last good checkpoint is intact
    assert sorted(root.glob(".*.tmp")) == [] and not (root / LOCK_FILE).exists()
    monkeypatch.undo()
    assert main(["run", "--resume", str(root), "--no-progress"]) == 0
    assert load_checkpoint(root)["epoch"] == 3


# ---------------------------------------------------------------------------------------------- lock, Ctrl-C
@pytest.mark.skipif(os.name != "posix", reason="run-directory locks use fcntl.flock (POSIX)")
def test_a_second_resume_of_the_same_directory_is_refused(interrupted: Path, tmp_path: Path, capsys) -> None:
    holder = tmp_path / "hold.py"
    holder.write_text(
        textwrap.dedent(
            f"""
            import fcntl, os, time
            fd = os.open({str(interrupted / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{{os.getpid()}}\\n".encode())
            print("locked", flush=True)
            time.sleep(120)
            """
        )
    )
    proc = subprocess.Popen([sys.executable, str(holder)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        capsys.readouterr()
        assert main(["run", "--resume", str(interrupted), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert f"Run directory {str(interrupted)!r} is in use by pid {proc.pid}" in err
        assert "incomplete" not in err  # the other process is working on it
        assert "Traceback" not in err
        assert load_checkpoint(interrupted)["epoch"] == 1
    finally:
        proc.kill()
        proc.wait()
    assert main(["run", "--resume", str(interrupted), "--no-progress"]) == 0  # the holder is gone


def test_ctrl_c_prints_the_run_directory_and_the_exact_resume_command(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    csv = write_csv(tmp_path / "train.csv", 80, seed=0)
    real = Trainer.save_checkpoint

    def then_ctrl_c(self, *args, **kwargs):
        real(self, *args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "save_checkpoint", then_ctrl_c)
    code, root = run(tmp_path, config(csv, epochs=2))
    assert code == 130 and root is not None
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "interrupted"
    assert lines[1] == f"run directory {str(root)!r} was interrupted; continue it with:"
    command = shlex.split(lines[2])
    assert command[:3] == ["mtlkit", "run", "--resume"]
    assert not (root / LOCK_FILE).exists()
    monkeypatch.undo()
    assert main([*command[1:], "--no-progress"]) == 0  # the printed command works
    assert load_checkpoint(root)["epoch"] == 2 and (root / "metrics.json").is_file()


# ---------------------------------------------------------------------------------------------- load_run
def test_every_reader_of_a_run_uses_the_best_weights_else_the_last(tmp_path: Path) -> None:
    csv = write_csv(tmp_path / "train.csv", 80, seed=0)
    code, root = run(tmp_path, config(csv, epochs=1))
    assert code == 0 and root is not None
    state = load_checkpoint(root)
    last = state["model"]
    best = {k: v + 0.25 if v.is_floating_point() else v for k, v in last.items()}  # distinguishable

    def weights_seen() -> list[dict[str, torch.Tensor]]:
        return [
            load_run(root).model.state_dict(),
            load_predictor(root).model.state_dict(),
            load_trained(root)[0].state_dict(),
        ]

    def write(best_state: dict | None) -> None:
        payload = {k: v for k, v in state.items() if k not in ("format", "version")}
        payload["best"] = {"epoch": 1, "value": 0.0, "bad_epochs": 0, "state": best_state, "weighting": {}}
        save_checkpoint(payload, root / "checkpoint.pt")

    write(best)
    for seen in weights_seen():
        assert all(torch.equal(seen[k], best[k]) for k in best)
    evaluated_best = evaluate_run_dir(root)
    write(None)  # early stopping without restore_best: the last epoch's weights
    for seen in weights_seen():
        assert all(torch.equal(seen[k], last[k]) for k in last)
    evaluated_last = evaluate_run_dir(root)
    assert evaluated_best != evaluated_last  # evaluate reads the same weights as the others

    cfg = yaml.safe_load((root / "config.yaml").read_text())
    cfg["model"]["num_experts"] = 3
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(
        Exception, match=r"does not fit the model described by .*config\.yaml.*edited after training"
    ):
        load_run(root)
