"""`mtlkit validate` refuses exactly what `mtlkit run` refuses: exit code 2, no traceback, a
message naming the dotted path, the value and the fix, and no run directory left behind."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from mtlkit.cli.main import main
from mtlkit.registries import MODELS

TINY: dict[str, Any] = {
    "name": "tiny",
    "data": {"name": "synthetic_correlation", "n_train": 96, "n_val": 32, "n_test": 32, "dim": 6},
    "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [4], "tower_dims": [2]},
    "trainer": {"epochs": 1, "batch_size": 32, "progress": False},
}


def _write(tmp_path: Path, cfg: dict[str, Any], name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def _both(tmp_path: Path, capsys: pytest.CaptureFixture[str], cfg: Path, *overrides: str) -> tuple[str, str]:
    """Run `validate` and `run` on the same config; both must refuse it the same way."""
    out = tmp_path / "runs"
    rc_validate = main(["validate", str(cfg), *overrides])
    err_validate = capsys.readouterr().err
    rc_run = main(["run", str(cfg), "--out", str(out), "--no-progress", *overrides])
    err_run = capsys.readouterr().err
    assert (rc_validate, rc_run) == (2, 2), (err_validate, err_run)
    assert "Traceback" not in err_validate + err_run
    assert err_validate == err_run  # one code path: the same problems, word for word
    assert not out.exists() or not any(out.iterdir())  # refused before any run directory exists
    return err_validate, err_run


# (override, text the message must contain: the dotted path, the value, the constraint or fix)
CASES = [
    ("model.num_experts=0", "model.num_experts: must be an int >= 1; got 0."),
    ("model.num_experts=-3", "model.num_experts: must be an int >= 1; got -3."),
    ("model.expert_dims=[0]", "model.expert_dims: must be a list of ints >= 1; got [0]."),
    ("model.tower_dims=[-1]", "model.tower_dims: must be a list of ints >= 1; got [-1]."),
    ("model.dropout=1.0", "model.dropout: must be a probability in [0, 1); got 1.0."),
    ("model.dropout=-0.1", "model.dropout: must be a probability in [0, 1); got -0.1."),
    ("optimizer.lr=-1", "optimizer.lr: must be a finite number > 0; got -1"),
    ("optimizer.lr=0", "optimizer.lr: must be a finite number > 0; got 0"),
    ("optimizer.betas=[0.9,1.5]", "optimizer.betas.1: must be a number in [0, 1); got 1.5."),
    ("optimizer.weight_decay=-0.1", "optimizer.weight_decay: must be a finite number >= 0; got -0.1."),
    ("optimizer.eps=-1", "optimizer.eps: must be a finite number >= 0; got -1"),
    ("trainer.early_stopping.monitor=y1/maee", "Did you mean 'y1/mae'?"),
    (
        "trainer.early_stopping.monitor=clik/auc",
        "trainer.early_stopping.monitor: Unknown monitor 'clik/auc'.",
    ),
    ("trainer.gradient_target=representation", "trainer.gradient_target: gradient_target='representation'"),
    ("backbone.name=cnn", "backbone (cnn): the cnn backbone takes images"),
    ("seed=-1", "seed: Input should be greater than or equal to 0; got -1."),
    ("seeds=[0,-2]", "seeds.1: Input should be greater than or equal to 0; got -2."),
    ("data.n_train=0", "data (synthetic_correlation): synthetic_correlation: n_train must be >= 1; got 0."),
]


@pytest.mark.parametrize(("override", "text"), CASES)
def test_validate_and_run_refuse_the_same_bad_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], override: str, text: str
) -> None:
    err, _ = _both(tmp_path, capsys, _write(tmp_path, TINY), override)
    assert text in err


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        (("optimizer.name=sgd", "optimizer.momentum=-1"), "optimizer.momentum: must be a finite number >= 0"),
        (("optimizer.name=sgd", "optimizer.nesterov=true"), "optimizer (sgd): Nesterov momentum requires"),
        (
            ("scheduler.name=step", "scheduler.step_size=0"),
            "scheduler.step_size: must be an int >= 1; got 0.",
        ),
        (("scheduler.name=plateau", "scheduler.factor=1.5"), "scheduler.factor: must be a number in (0, 1)"),
        (
            ("scheduler.name=exponential", "scheduler.gamma=-1"),
            "scheduler.gamma: must be a finite number > 0",
        ),
        (("scheduler.name=cosine", "scheduler.T_max=0"), "scheduler.T_max: must be an int >= 1; got 0."),
        (("model.name=ple", "model.num_levels=0"), "model.num_levels: must be an int >= 1; got 0."),
        (("model.name=dselect_k", "model.k=0"), "model.k: must be an int >= 1; got 0."),
        (("model.name=shared_bottom", "model.bottom_dims=[0]"), "model.bottom_dims: must be a list of ints"),
        (("aggregator.name=pcgrad", "schedule.name=alternating"), "schedule: Gradient aggregator PCGrad"),
    ],
)
def test_validate_and_run_refuse_bad_component_numbers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], overrides: tuple[str, ...], text: str
) -> None:
    err, _ = _both(tmp_path, capsys, _write(tmp_path, TINY), *overrides)
    assert text in err


def test_validate_reports_every_problem_of_every_run_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = dict(TINY, compare={"single": {"model": {"name": "single_task", "hidden_dims": [0]}}, "mmoe": {}})
    err, _ = _both(tmp_path, capsys, _write(tmp_path, cfg), "model.num_experts=0", "optimizer.lr=-1")
    assert "3 problems" in err
    assert "optimizer.lr: must be a finite number > 0" in err  # every run has it: reported once
    assert err.count("optimizer.lr") == 1
    assert "compare.single: model.hidden_dims: must be a list of ints >= 1; got [0]." in err
    assert "compare.mmoe: model.num_experts: must be an int >= 1; got 0." in err


def test_a_good_config_is_accepted_by_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = _write(tmp_path, TINY)
    assert main(["validate", str(cfg), "weighting.name=dwa"]) == 0
    assert "valid (1 run(s) per seed)" in capsys.readouterr().out
    assert main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress", "weighting.name=dwa"]) == 0


def test_esmm_on_tabular_data_is_refused_by_both(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = ["x1,x2,cat,click,buy"] + [
        f"{i % 7 / 7:.3f},{i % 5 / 5:.3f},{'abc'[i % 3]},{i % 2},{i % 4 == 0:d}" for i in range(60)
    ]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "name": "esmm_tab",
        "data": {
            "name": "tabular",
            "train": str(tmp_path / "train.csv"),
            "numeric": ["x1", "x2"],
            "categorical": ["cat"],
            "val_fraction": 0.2,
            "tasks": {
                "ctr": {"column": "click", "kind": "binary"},
                "cvr": {"column": "buy", "kind": "binary"},
            },
        },
        "model": {"name": "esmm"},
        "trainer": {"epochs": 1, "batch_size": 16},
    }
    err, _ = _both(tmp_path, capsys, _write(tmp_path, cfg))
    assert "model (esmm): esmm outputs pCVR, a probability for task 'cvr'" in err
    assert "data declares ctr (binary logits), cvr (binary logits)" in err
    assert "Use data whose tasks model 'esmm' predicts" in err


@pytest.mark.parametrize(
    ("monitor", "suggestion"),
    [
        ("clik/auc", "click/auc"),
        ("click/acu", "click/auc"),
        ("buy/aux", "buy/auc"),
    ],
)
def test_monitor_misspelt_suggests_the_close_match(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monitor: str, suggestion: str
) -> None:
    rows = ["x1,click,buy"] + [f"{i % 7 / 7:.3f},{i % 2},{i % 4 == 0:d}" for i in range(60)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "name": "clicks",
        "data": {
            "name": "tabular",
            "train": str(tmp_path / "train.csv"),
            "numeric": ["x1"],
            "val_fraction": 0.25,
            "tasks": {
                "click": {"column": "click", "kind": "binary"},
                "buy": {"column": "buy", "kind": "binary"},
            },
        },
        "model": {"name": "shared_bottom", "bottom_dims": [4], "tower_dims": [2]},
        "trainer": {"epochs": 1, "batch_size": 16, "early_stopping": {"monitor": monitor}},
    }
    err, _ = _both(tmp_path, capsys, _write(tmp_path, cfg))
    assert f"trainer.early_stopping.monitor: Unknown monitor {monitor!r}. Did you mean {suggestion!r}?" in err
    assert "Available: buy/accuracy" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_cuda_is_a_config_error_without_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = _write(tmp_path, TINY)
    proc = subprocess.run(  # the real command line: no traceback reaches the user
        [sys.executable, "-m", "mtlkit", "validate", str(cfg), "trainer.device=cuda"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "trainer.device: 'cuda' is not available" in proc.stderr
    assert "Use trainer.device=cpu, or auto" in proc.stderr
    err, _ = _both(tmp_path, capsys, cfg, "trainer.device=cuda")  # and `run` says the same
    assert "trainer.device: 'cuda' is not available" in err


def test_a_bug_in_a_model_constructor_surfaces_as_itself_with_the_config_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    @MODELS.register("buggy_for_test")
    def buggy(input_dim: int | None, tasks: Any, *, width: int = 4) -> Any:
        """A model builder with a bug (not a config problem)."""
        return {}["missing key"]  # a KeyError no config can cause

    @MODELS.register("buggy_type_for_test")
    def buggy_type(input_dim: int | None, tasks: Any, *, width: int = 4) -> Any:
        """A model builder calling something with the wrong arguments."""
        return len(width, width)  # type: ignore[call-arg]

    try:
        cfg = _write(tmp_path, dict(TINY, model={"name": "buggy_for_test"}))
        for command in (["validate", str(cfg)], ["run", str(cfg), "--out", str(tmp_path / "r")]):
            with pytest.raises(KeyError, match="missing key") as info:
                main(command)
            notes = " ".join(getattr(info.value, "__notes__", []))
            assert "while building model 'buggy_for_test' from the config section 'model'" in notes
        cfg = _write(tmp_path, dict(TINY, model={"name": "buggy_type_for_test"}))
        with pytest.raises(TypeError, match="len") as info:  # not reported as a config typo
            main(["validate", str(cfg)])
        assert "config section 'model'" in " ".join(getattr(info.value, "__notes__", []))
    finally:
        MODELS.unregister("buggy_for_test")
        MODELS.unregister("buggy_type_for_test")
    capsys.readouterr()


def test_run_threads_sets_torch_threads_for_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtlkit.experiment

    seen: list[int] = []
    monkeypatch.setattr(
        mtlkit.experiment, "run_experiment", lambda *a, **k: seen.append(torch.get_num_threads())
    )
    before = torch.get_num_threads()
    cfg = _write(tmp_path, TINY)
    assert main(["run", str(cfg), "--threads", "1"]) == 0
    assert seen == [1] and torch.get_num_threads() == before  # set for the run, restored after
    assert main(["run", str(cfg), "--threads", "0"]) == 0
    assert seen[-1] == before  # 0: torch's default (unchanged)
    assert main(["run", str(cfg), "--threads", "-2"]) == 2
    err = capsys.readouterr().err
    assert "--threads: must be >= 0 (0: torch's default); got -2." in err and "Traceback" not in err


def test_a_failed_run_is_marked_and_its_directory_printed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from mtlkit.training.trainer import Trainer

    def explode(self: Trainer, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError("boom during training")

    monkeypatch.setattr(Trainer, "fit", explode)
    cfg = _write(tmp_path, dict(TINY, seeds=[0, 1]))
    with pytest.raises(RuntimeError, match="boom during training"):
        main(["run", str(cfg), "--out", str(tmp_path / "r"), "--no-progress"])
    out = capsys.readouterr().out
    (root,) = list((tmp_path / "r").iterdir())
    for folder in (root, root / "tiny" / "seed0"):
        status = json.loads((folder / "status.json").read_text())
        assert status["status"] == "failed" and "RuntimeError: boom during training" in status["error"]
        assert status["run"] == "tiny/seed0"
    assert "Run failed:" in out and f"Run directory: {root}" in out and f"mtlkit run --resume {root}" in out
    assert not (root / "tiny" / "seed0" / "metrics.json").exists()


def test_metrics_json_of_a_nan_metric_is_strict_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from mtlkit.experiment import RunResult, _dump_json, _finished, _run_record

    def refuse(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    from mtlkit.config.build import build_data

    splits = build_data(TINY["data"])
    r = RunResult(
        "x",
        0,
        tmp_path,
        "test",
        {"y1": {"mse": math.nan, "mae": math.inf}, "y2": {"mse": 1.5}},
        3,
        1.0,
        1,
        None,
    )
    _dump_json(_run_record(r, splits), tmp_path / "metrics.json")
    _dump_json([{"loss": math.nan, "t": torch.tensor([1.0, math.inf])}], tmp_path / "history.json")
    rec = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=refuse)
    assert rec["metrics"] == {"y1": {"mse": None, "mae": None}, "y2": {"mse": 1.5}}
    hist = json.loads((tmp_path / "history.json").read_text(), parse_constant=refuse)
    assert hist == [{"loss": None, "t": [1.0, None]}]
    back = _finished(tmp_path, splits)  # a resume reads null back as NaN
    assert back is not None and math.isnan(back.metrics["y1"]["mse"]) and back.metrics["y2"]["mse"] == 1.5


def test_backbone_numbers_are_refused_at_their_path(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = ["x1,cat,y"] + [f"{i % 7 / 7:.3f},{'abc'[i % 3]},{i % 2}" for i in range(40)]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    cfg = {
        "name": "tab",
        "data": {
            "name": "tabular",
            "train": str(tmp_path / "train.csv"),
            "numeric": ["x1"],
            "categorical": ["cat"],
            "tasks": {"y": {"column": "y", "kind": "binary"}, "z": {"column": "y", "kind": "binary"}},
        },
        "backbone": {"name": "embedding", "embedding_dim": 0},
        "model": {"name": "shared_bottom", "bottom_dims": [4], "tower_dims": [2]},
        "trainer": {"epochs": 1, "batch_size": 16},
    }
    err, _ = _both(tmp_path, capsys, _write(tmp_path, cfg))
    assert "backbone.embedding_dim: must be an int >= 1; got 0." in err
