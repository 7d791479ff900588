"""The examples in docs/analysis.md run and print what the page says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "analysis.md"


def _blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_delta_m_example_values() -> None:
    (code,) = [b for b in _blocks() if "relative_improvements(model" in b]
    ns: dict = {}
    exec(compile(code, "docs/analysis.md", "exec"), ns)
    d, b, h = ns["model"], ns["baseline"], ns["higher"]
    assert ns["delta_m"](d, b, h) == pytest.approx(9.375)
    assert ns["delta_m_per_task"](d, b, h) == {"ctr": pytest.approx(18.75), "price": pytest.approx(0.0)}
    assert ns["delta_m"](d, b, h, metrics=["auc", "mse"]) == pytest.approx(31.25)
    # the values in the comments are the ones the code gives
    for line in code.splitlines():
        m = re.match(r"delta_m\((.*)\)\s+# ([-\d.]+)$", line)
        if m:
            assert eval(f"delta_m({m.group(1)})", ns) == pytest.approx(float(m.group(2)))


def test_plot_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    monkeypatch.chdir(tmp_path)
    (code,) = [b for b in _blocks() if "plot_gate_distributions(stats" in b]
    ns: dict = {}
    exec(compile(code, "docs/analysis.md", "exec"), ns)
    assert (tmp_path / "loss_curves.png").is_file() and (tmp_path / "gates.png").is_file()
    assert sorted(ns["stats"]) == ["y1", "y2"]
    assert all(1.0 <= s.effective_experts <= 4.0 for s in ns["stats"].values())
