"""The README's streaming YAML is accepted by `mtlkit validate` as written (on a generated log
laid out at the paths it names), and its predict command line parses."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from _helpers import REPO
from mtlkit.cli.main import main
from mtlkit.data import impression_log


def section() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("**Data larger than memory.**")
    return text[start : text.index("\n**", start + 10)]


def test_the_streaming_yaml_validates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (block,) = re.findall(r"```yaml\n(.*?)```", section(), flags=re.S)
    monkeypatch.chdir(tmp_path)
    impression_log(tmp_path / "data" / "train", rows=600, shard_rows=200, seed=0)
    impression_log(tmp_path / "data" / "val", rows=200, shard_rows=200, seed=1)
    log = impression_log(tmp_path / "data" / "test", rows=200, shard_rows=100, seed=2)
    for i, f in enumerate(log.files):
        f.rename(f.with_name(f"part-{i}.parquet"))
    (tmp_path / "exp.yaml").write_text(block + "model: {name: mmoe}\n")
    assert main(["validate", "exp.yaml"]) == 0, capsys.readouterr().err
    assert "valid (1 run(s) per seed)" in capsys.readouterr().out


def test_the_predict_command_is_the_cli_s() -> None:
    (line,) = [ln for ln in section().splitlines() if ln.startswith("$ mtlkit predict")]
    assert "--out preds.parquet" in line and "--keep sample_id" in line
    from mtlkit.cli.main import _parser

    ns = _parser().parse_args(line.removeprefix("$ mtlkit ").replace("'", "").split())
    assert (ns.command, ns.input, ns.keep) == ("predict", "data/new/*.parquet", ["sample_id"])
