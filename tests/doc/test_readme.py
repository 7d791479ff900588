"""The README's Python examples run as written and print what the README says they print."""

from __future__ import annotations

import ast
import math
import os
import re
from pathlib import Path

import pytest
import torch

from _helpers import REPO

README = REPO / "README.md"
NUMBER = r"-?\d+(?:\.\d+)?(?:e-?\d+)?"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def printed_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().out.splitlines() if line.strip()]


def test_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    code = python_blocks()[0]
    namespace: dict = {}
    capsys.readouterr()
    exec(compile(code, "README quickstart", "exec"), namespace)
    out = printed_lines(capsys)
    # print(data.info["label_correlation"]): a Pearson correlation, positive for correlation=0.5
    corr = float(out[0])
    assert 0.0 < corr < 1.0, out[0]
    # print(trainer.evaluate(test)) prints {'y1': {'loss': ..., 'mse': ..., 'mae': ...}, 'y2': {...}}
    printed = ast.literal_eval(next(line for line in reversed(out) if line.startswith("{")))
    assert set(printed) == {"y1", "y2"}
    assert all({"loss", "mse", "mae"} <= set(m) for m in printed.values()), printed
    assert all(math.isfinite(v) and v >= 0 for m in printed.values() for v in m.values()), printed
    metrics = namespace["trainer"].evaluate(namespace["test"])
    assert set(metrics) == {"y1", "y2"}
    assert metrics["y1"]["mse"] < 1.0  # labels have variance ~5: the model learned something
    assert namespace["gates"]["y1"].shape == (2000, 8)
    assert (tmp_path / "runs" / "mmoe.pt").is_file()


def test_task_examples_run() -> None:
    """Each line ``Task(...)  # LOSS; metric, metric`` builds a task whose default metrics are those listed."""
    from mtlkit import Task
    from mtlkit.metrics import default_metrics

    code = python_blocks()[1]
    exec(compile(code, "README tasks", "exec"), {})
    lines = [line for line in code.splitlines() if line.startswith("Task(")]
    assert len(lines) == 4, lines
    for line in lines:
        expr, comment = line.split("#", 1)
        task = eval(expr, {"Task": Task})
        listed = [m.strip() for m in comment.split(";", 1)[1].split(",")]
        assert list(default_metrics(task)) == listed, line


def test_readme_lists_every_registered_component() -> None:
    from mtlkit.registries import MODELS, WEIGHTINGS

    text = README.read_text()
    for name in [*MODELS.names(), *WEIGHTINGS.names()]:
        assert f"`{name}`" in text, name
    assert os.path.exists(README)


def test_every_other_python_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The examples after the quickstart and the task block, each in a fresh namespace, print
    what their comments say."""
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()[2:]
    assert len(blocks) == 4, "a README Python example was added or removed: check its printed output here"
    printed: list[list[str]] = []
    for i, code in enumerate(blocks, start=3):
        capsys.readouterr()
        exec(compile(code, f"README python block {i}", "exec"), {})
        printed.append(printed_lines(capsys))
    low_level, schedules, esmm, analysis = printed
    # print(result.weights): the two task weights of the last step, positive
    weights = [float(v) for v in re.findall(NUMBER, low_level[-1])]
    assert low_level[-1].startswith("tensor(") and len(weights) == 2 and all(w > 0 for w in weights), low_level
    # print(history[-1]["steps"], mse): tasks drawn uniformly, ceil(100/32) + ceil(1000/32) steps
    steps_text, mse = schedules[-1].rsplit(" ", 1)
    steps = ast.literal_eval(steps_text)
    assert set(steps) == {"y1", "y2"} and sum(steps.values()) == 4 + 32, schedules
    assert math.isfinite(float(mse)) and float(mse) > 0
    # print(sorted(pred), auc): pCTR, pCVR and pCTCVR, and an AUC
    names_text, auc = esmm[-1].rsplit(" ", 1)
    assert ast.literal_eval(names_text) == ["ctcvr", "ctr", "cvr"]
    assert 0.0 <= float(auc) <= 1.0
    # print(delta_m(...)): 12.5 as the comment says; gate statistics over 4 experts
    assert float(analysis[0]) == pytest.approx(12.5, rel=1e-9)
    size_text, effective = analysis[1].rsplit(" ", 1)
    assert size_text == str(torch.Size([4])) and 1.0 <= float(effective) <= 4.0, analysis
