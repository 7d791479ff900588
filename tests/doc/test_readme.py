"""The README's Python examples run as written."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_quickstart_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code = python_blocks()[0]
    namespace: dict = {}
    exec(compile(code, "README quickstart", "exec"), namespace)
    metrics = namespace["trainer"].evaluate(namespace["test"])
    assert set(metrics) == {"y1", "y2"}
    assert metrics["y1"]["mse"] < 1.0  # labels have variance ~5: the model learned something
    assert namespace["gates"]["y1"].shape == (2000, 8)
    assert (tmp_path / "runs" / "mmoe.pt").is_file()


def test_task_examples_run() -> None:
    exec(compile(python_blocks()[1], "README tasks", "exec"), {})


def test_readme_lists_every_registered_component() -> None:
    from mtlkit.registries import MODELS, WEIGHTINGS

    text = README.read_text()
    for name in [*MODELS.names(), *WEIGHTINGS.names()]:
        assert f"`{name}`" in text, name
    assert os.path.exists(README)


def test_every_other_python_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples after the quickstart and the task block, each in a fresh namespace."""
    monkeypatch.chdir(tmp_path)
    blocks = python_blocks()[2:]
    assert blocks, "the README has no further Python examples"
    for i, code in enumerate(blocks, start=3):
        exec(compile(code, f"README python block {i}", "exec"), {})
