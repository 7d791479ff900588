"""The Python example of docs/reproduce.md runs and writes what the doc says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "reproduce.md"


@pytest.mark.slow  # ~20 s on a busy 2-core machine; the same path runs in test_reproduce_cli's smoke tests
def test_reproduce_doc_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code, "docs/reproduce.md", "exec"), ns)
    out = capsys.readouterr().out
    assert out.startswith("MMoE paper §5: single-task, shared-bottom, OMoE, MMoE")
    result = ns["result"]
    assert result.run_dir.resolve().parent == (tmp_path / "runs").resolve()
    assert {"results_md", "results_csv", "results_json", "figure4", "figure5", "figure6"} <= set(
        result.report.files
    )
    for f in ("report.md", "reproduction.json", "results.md", "figure4_loss_curves.png"):
        assert (result.run_dir / f).is_file()
    # the table sections the doc describes
    assert "## Synthetic data: test MSE and final training loss" in (result.run_dir / "report.md").read_text()
