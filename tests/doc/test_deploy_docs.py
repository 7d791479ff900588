"""The Python blocks of docs/deploy.md run in order, as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "deploy.md"


def test_deploy_examples_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("onnxruntime")  # the export example runs the ONNX file
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/deploy.md block {i + 1}", "exec"), namespace)
    run_dir = namespace["run_dir"]
    assert (run_dir / "export-onnx" / "model.onnx").is_file()
    assert (run_dir / "export-torchscript" / "model.pt").is_file()
    assert namespace["names"] == ["y1", "y2"]
