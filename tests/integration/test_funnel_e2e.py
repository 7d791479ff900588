"""Funnel tasks in YAML end to end (issue 14 §4): the ``funnel`` preset over a generated impression
log through generate -> validate -> run -> predict -> export; streamed labels equal the in-memory
ones; validate and run refuse the same configs with the same messages; the funnel composes with
bases, balancing methods and schedules; torchrun (slow)."""

from __future__ import annotations

import csv
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mtlkit.cli.main import main
from mtlkit.config import resolve
from mtlkit.config.build import build_data, build_model, build_trainer, model_data
from mtlkit.config.check import run_problems
from mtlkit.config.load import load_preset

pytest.importorskip("pyarrow")
pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = [  # a small, fast version of the preset
    "trainer.epochs=2",
    "trainer.batch_size=256",
    "model.base.expert_dims=[16]",
    "model.base.tower_dims=[8]",
    "model.base.num_experts=2",
    "trainer.early_stopping=null",
]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3,000-row log in two Parquet shards and the same rows as CSV (history '|'-delimited)."""
    root = tmp_path_factory.mktemp("impressions")
    for fmt in ("parquet", "csv"):
        argv = ["generate", "impressions", str(root / fmt), "--rows", "3000", "--shard-rows", "2000",
                "--history", "4", "--weights", "--seed", "5", "--format", fmt]  # fmt: skip
        assert main(argv) == 0
    return root


def _overrides(log: Path, fmt: str = "parquet") -> list[str]:
    return [f"data.train={log / fmt / f'part-00000.{fmt}'}", *SMALL]


def test_the_funnel_preset_from_generated_log_to_onnx(log: Path, tmp_path: Path, capsys) -> None:
    ov = _overrides(log)
    assert main(["validate", "--preset", "funnel", *ov]) == 0
    assert main(["run", "--preset", "funnel", *ov, "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    (run,) = (tmp_path / "runs").iterdir()
    record = json.loads((run / "metrics.json").read_text())
    assert set(record["metrics"]) == {"click", "ctcvr", "purchase", "watch_time"}
    history = json.loads((run / "history.json").read_text())
    assert history[-1]["train"]["purchase"] is None  # pCVR: evaluated, never trained
    assert history[-1]["train"]["ctcvr"] > 0 and history[-1]["train"]["watch_time"] > 0
    signature = json.loads((run / "signature.json").read_text())
    flags = {t["name"]: (t["logits"], t["train"]) for t in signature["tasks"]}
    assert flags == {"click": (True, True), "ctcvr": (False, True), "purchase": (False, False),
                     "watch_time": (True, True)}  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0  # rebuilds the funnel's data and labels from config.yaml
    assert "ctcvr" in capsys.readouterr().out
    out = tmp_path / "pred.csv"
    data = log / "parquet" / "part-00001.parquet"
    assert main(["predict", str(run), str(data), "--out", str(out), "--keep", "sample_id"]) == 0
    with out.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1000 and list(rows[0]) == ["sample_id", "click", "purchase", "ctcvr", "watch_time"]
    for r in rows:
        click, purchase, ctcvr = float(r["click"]), float(r["purchase"]), float(r["ctcvr"])
        assert 0 < click < 1 and 0 < purchase < 1
        assert ctcvr == pytest.approx(click * purchase, rel=1e-5)  # pCTCVR = pCTR x pCVR, probabilities
        assert float(r["watch_time"]) > -1  # expm1 of the log1p-scale output
    assert main(["export", str(run), "--check"]) == 0
    text = capsys.readouterr().out
    assert "max relative error" in text and "tolerance 1e-05" in text
    manifest = json.loads((run / "export-onnx" / "manifest.json").read_text())
    assert [t["output"] for t in manifest["tasks"]] == ["click", "ctcvr", "purchase", "watch_time"]


def test_streamed_funnel_labels_and_weights_equal_the_in_memory_ones(log: Path) -> None:
    raw = load_preset("funnel")
    files = {"train": str(log / "csv" / "part-00000.csv"), "val": str(log / "csv" / "part-00001.csv")}
    raw["data"] = {**raw["data"], **files, "val_fraction": 0.0, "test_fraction": 0.0}
    memory = model_data(raw["model"], build_data(resolve(raw).config.data))
    raw["data"] = {**raw["data"], "streaming": True, "num_workers": 0}
    stream = model_data(raw["model"], build_data(resolve(raw).config.data))
    assert [t.name for t in stream.tasks] == [t.name for t in memory.tasks]
    batches = list(stream.val.eval_loader(stream.tasks, 256))
    for name in ("click", "ctcvr", "purchase", "watch_time"):
        got = torch.cat([b.targets[name] for b in batches])
        torch.testing.assert_close(got, memory.val.targets[name], equal_nan=True)
        w = torch.cat([b.weights[name] for b in batches])
        torch.testing.assert_close(w, memory.val.weights[name])
    ctcvr = memory.val.targets["ctcvr"]
    assert not ctcvr.isnan().any() and ctcvr.sum() > 0  # every impression: click and purchase
    clicked = memory.val.targets["click"] == 1
    assert memory.val.targets["purchase"][~clicked].isnan().all()  # pCVR labels: clicked rows only


def _problems(capsys, argv: list[str]) -> tuple[int, list[str]]:
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err  # a config error
    return code, [line.strip() for line in err.splitlines() if line.strip().startswith("- ")]


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.funnel.ctr=clik"], ["model.funnel.ctr: 'clik' is not a task of the data", "Did you mean 'click'"]),
        (["model.funnel.ctr=watch_time", "model.funnel.ctcvr=click"],
         ["model.funnel.ctr: task 'watch_time' is regression", "model.funnel.ctcvr: 'click' is already a task"]),
        (["data.tasks.purchase.kind=regression"],  # the preset's metrics for it are refused too, together
         ["model.funnel.cvr: task 'purchase' is regression", "data.tasks.purchase.metrics[0] auc does not apply"]),
        (["model.funnel=null"], ["none of the tasks ['click', 'purchase', 'watch_time'] is its CTR task 'ctr'",
                                 "model.funnel: {ctr: <click task>, cvr: <purchase task>}"]),
        (["model.name=mmoe", "model.base=null"], ["model.base: unknown parameter for model 'mmoe'"]),
        (["model.funnel.cvr=null"], ["model.funnel.cvr: Input should be a valid string; got None"]),
        (["model.funnel.ctcvr=watch_time", "model.funnel.typo=x", "optimizer.lr=-1"],
         ["model.funnel.typo: unknown key. Allowed: ctr, cvr, ctcvr", "optimizer.lr: must be"]),
        (["model.funnel.ctcvr=watch_time", "optimizer.lr=-1"],
         ["model.funnel.ctcvr: 'watch_time' is already a task", "optimizer.lr: must be"]),
    ],
)  # fmt: skip
def test_validate_and_run_refuse_the_same_funnel_configs(
    log: Path, tmp_path: Path, capsys, overrides: list[str], expected: list[str]
) -> None:
    ov = [*_overrides(log), *overrides]
    validate = _problems(capsys, ["validate", "--preset", "funnel", *ov])
    run = _problems(capsys, ["run", "--preset", "funnel", *ov, "--out", str(tmp_path), "--no-progress"])
    assert validate == run and validate[1]
    text = "\n".join(validate[1])
    for piece in expected:
        assert piece in text, (piece, text)
    assert not list(tmp_path.iterdir())  # refused before any run directory


@pytest.mark.parametrize(
    "variant",
    [
        {"model": {"base": {"name": "shared_bottom", "bottom_dims": [16], "tower_dims": [8]}},
         "weighting": {"name": "uncertainty"}},
        {"aggregator": {"name": "pcgrad"}, "trainer": {"gradient_target": "representation"}},
        {"model": {"base": {"name": "ple", "num_levels": 1, "expert_dims": [8], "tower_dims": [4]}},
         "schedule": {"name": "mixed"}},
        {"model": {"name": "aitm", "base": None, "tower_dims": [16, 8]}, "aggregator": {"name": "pcgrad"}},
        {"data": {"streaming": True, "val_fraction": 0.0, "test_fraction": 0.0, "num_workers": 0,
                  "shuffle_buffer": 500}, "weighting": {"name": "uncertainty"}},
    ],
    ids=["shared_bottom-uncertainty", "mmoe-pcgrad-representation", "ple-mixed", "aitm-pcgrad", "mmoe-streamed"],
)  # fmt: skip
def test_the_funnel_composes_with_bases_methods_and_schedules(log: Path, variant: dict) -> None:
    raw = load_preset("funnel")
    raw["data"] = {**raw["data"], "train": str(log / "parquet" / "part-00000.parquet"), **variant.get("data", {})}
    if raw["data"].get("streaming"):
        raw["data"]["val"] = str(log / "parquet" / "part-00001.parquet")
    raw["trainer"] = {"epochs": 1, "batch_size": 256, **variant.get("trainer", {})}
    model = {**raw["model"], **variant.get("model", {})}
    raw["model"] = {k: v for k, v in model.items() if v is not None}
    if "base" in variant.get("model", {}) and variant["model"]["base"] is not None:
        raw["model"]["base"] = variant["model"]["base"]
    for key in ("weighting", "aggregator", "schedule"):
        if key in variant:
            raw[key] = variant[key]
    cfg = resolve(raw).config
    assert run_problems(cfg) == []
    splits = model_data(cfg.model, build_data(cfg.data))
    torch.manual_seed(0)
    net = build_model(cfg.model, splits, cfg.backbone)
    trainer = build_trainer(cfg, net, splits.tasks, device="cpu", progress=False, seed=0)
    trainer.fit(splits.train, epochs=1, batch_size=256)
    metrics = trainer.evaluate(splits.val, batch_size=512)
    funnel = {"click", "ctcvr", "watch_time"} | ({"purchase"} if cfg.model["name"] == "esmm" else set())
    assert set(metrics) == funnel
    assert all(math.isfinite(metrics[t]["loss"]) for t in funnel)
    assert 0 <= metrics["ctcvr"]["auc"] <= 1


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_torchrun_two_processes_match_one_process_on_the_funnel(log: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = ["--preset", "funnel", *_overrides(log), "data.unknown_fraction=0", "trainer.device=cpu",
              "--no-progress"]  # fmt: skip
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={port}",
         "-m", "mtlkit", "run", *common, "trainer.batch_size=128", "--out", str(tmp_path / "ddp")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run(
        [sys.executable, "-m", "mtlkit", "run", *common, "--out", str(tmp_path / "single")],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    def metrics(root: Path) -> dict:
        (run,) = [p for p in root.iterdir() if p.is_dir()]
        return json.loads((run / "metrics.json").read_text())["metrics"]

    a, b = metrics(tmp_path / "ddp"), metrics(tmp_path / "single")
    assert a.keys() == b.keys() == {"click", "ctcvr", "purchase", "watch_time"}
    for task in a:
        for name, value in b[task].items():
            assert a[task][name] == pytest.approx(value, rel=1e-5), (task, name)
