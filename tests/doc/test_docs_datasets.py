"""The tabular example in docs/datasets.md runs as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "datasets.md"


def test_tabular_example_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/datasets.md", "exec"), {})
    auc, vocabulary = capsys.readouterr().out.strip().splitlines()[-2:]
    assert 0.0 <= float(auc) <= 1.0
    assert sorted(eval(vocabulary)) == ["oslo", "paris", "rome"]
