"""TensorBoard events read back equal what the trainer recorded; `mtlkit run` writes tables and plots."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

import mtlkit
from mtlkit.aggregation import MGDA
from mtlkit.cli.main import main
from mtlkit.data import TensorBatchLoader, collate
from mtlkit.metrics import MultiTaskMetrics, delta_m

PNG = b"\x89PNG\r\n\x1a\n"


def _data() -> tuple[Any, Any]:
    data = mtlkit.data.synthetic_correlation(320, 0.5, dim=6, seed=3)
    return data.split([256, 64], seed=0)


def _fit(log_dir: Path | None, epochs: int = 3) -> tuple[mtlkit.Trainer, list[dict]]:
    train, val = _data()
    torch.manual_seed(0)
    model = mtlkit.models.mmoe(6, train.tasks, num_experts=3, expert_dims=[8], tower_dims=[4])
    trainer = mtlkit.Trainer(
        model,
        train.tasks,
        aggregator=MGDA(),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.02),
        progress=False,
        log_dir=log_dir,
    )
    # torch DataLoaders draw their base seed from the global RNG: watching the validation data for
    # the gate histograms must not change the run
    train_loader = torch.utils.data.DataLoader(train, batch_size=64, shuffle=True, collate_fn=collate)
    val_loader = torch.utils.data.DataLoader(val, batch_size=40, collate_fn=collate)
    history = trainer.fit(train_loader, val_loader, epochs=epochs)
    return trainer, history


def test_tensorboard_events_equal_the_history(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer, history = _fit(tmp_path / "tb")
    _, plain = _fit(None)
    assert [r["train"] for r in history] == [r["train"] for r in plain]  # logging changed nothing

    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"scalars": 0, "histograms": 0})
    ea.Reload()

    def scalars(tag: str) -> list[tuple[int, float]]:
        return [(e.step, e.value) for e in ea.Scalars(tag)]

    epochs = [r["epoch"] for r in history]
    assert epochs == [1, 2, 3]
    for t in ("y1", "y2"):
        assert scalars(f"train_loss/{t}") == [
            (e, pytest.approx(r["train"][t], rel=1e-6)) for e, r in zip(epochs, history)
        ]
        assert scalars(f"weight/{t}") == [
            (e, pytest.approx(r["weights"][t], rel=1e-6)) for e, r in zip(epochs, history)
        ]
        # equal loss weights: the effective weights the trainer averaged are MGDA's row weights,
        # which the logger averaged on its own from every step's BackwardResult
        assert scalars(f"aggregator_weight/{t}") == [
            (e, pytest.approx(r["weights"][t], rel=1e-6)) for e, r in zip(epochs, history)
        ]
        for m in ("loss", "mse", "mae"):
            assert scalars(f"val/{t}/{m}") == [
                (e, pytest.approx(r["val"][t][m], rel=1e-6)) for e, r in zip(epochs, history)
            ]
    assert scalars("lr") == [(e, pytest.approx(0.02)) for e in epochs]
    steps = [s for s, _ in scalars("train/total_loss")]
    assert steps == [10]  # steps 1..12 (4 per epoch), a point every 10 steps

    # gate histograms: every epoch, per task and expert, over the first 64 validation rows
    # (all of them; the default sample is 512 rows); the last equals the trained model's gates
    _, val = _data()
    with torch.no_grad():
        trainer.model.eval()
        gates = trainer.model.gates(val.inputs)
    for t in ("y1", "y2"):
        for e in range(3):
            hist = ea.Histograms(f"gates/{t}/expert{e}")
            assert [h.step for h in hist] == epochs
            last = hist[-1].histogram_value
            g = gates[t][:, e].double()
            assert last.num == 64
            assert last.sum == pytest.approx(float(g.sum()), rel=1e-5)
            assert last.min == pytest.approx(float(g.min()), rel=1e-5)
            assert last.max == pytest.approx(float(g.max()), rel=1e-5)
            assert sum(last.bucket) == 64
        assert [s for s, _ in scalars(f"gate_effective_experts/{t}")] == epochs


class Recorder:
    """A user logger: records what the trainer passes."""

    def __init__(self) -> None:
        self.watched: Any = None
        self.steps: list[tuple[int, mtlkit.BackwardResult]] = []
        self.records: list[dict] = []
        self.flushes = 0

    def watch(self, data: Any) -> None:
        self.watched = data

    def log_step(self, step: int, result: mtlkit.BackwardResult) -> None:
        self.steps.append((step, result))

    def log_epoch(self, record: dict, model: torch.nn.Module) -> None:
        assert isinstance(model, mtlkit.models.MultiTaskModel)
        self.records.append(record)

    def flush(self) -> None:
        self.flushes += 1


def test_custom_logger_receives_steps_and_epochs() -> None:
    train, val = _data()
    rec = Recorder()
    assert isinstance(rec, mtlkit.training.EpochLogger)
    model = mtlkit.models.mmoe(6, train.tasks, num_experts=2)
    trainer = mtlkit.Trainer(model, train.tasks, progress=False, logger=rec)
    history = trainer.fit(train, val, epochs=2, batch_size=128)
    assert isinstance(rec.watched, TensorBatchLoader) and rec.flushes == 1
    assert [s for s, _ in rec.steps] == [1, 2, 3, 4]
    assert rec.steps[0][1].aggregator_weights is None  # no aggregator
    assert rec.records == history


def test_missing_tensorboard_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    train, _ = _data()
    model = mtlkit.models.mmoe(6, train.tasks, num_experts=2)
    with pytest.raises(
        ImportError, match=r"needs the tensorboard package: pip install 'mtlkit\[tensorboard\]'"
    ):
        mtlkit.Trainer(model, train.tasks, log_dir=tmp_path / "tb", progress=False)


TINY = {
    "name": "tiny",
    "seeds": [0, 1],
    "data": {
        "name": "synthetic_correlation",
        "correlation": 0.5,
        "n_train": 256,
        "n_val": 64,
        "n_test": 64,
        "dim": 8,
    },
    "model": {"name": "mmoe", "num_experts": 2, "expert_dims": [8], "tower_dims": [4]},
    "trainer": {"epochs": 2, "batch_size": 64},
    "compare": {"single_task": {"model": {"name": "single_task", "hidden_dims": [8]}}, "mmoe": {}},
}


def _run(tmp_path: Path, name: str, config: dict) -> Path:
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["run", str(cfg), "--out", str(tmp_path / name), "--no-progress"]) == 0
    (root,) = list((tmp_path / name).iterdir())
    return root


def test_run_writes_tables_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    root = _run(tmp_path, "plots", dict(TINY, plots=True, delta_m_metrics=["mse"]))
    for name in ("comparison.md", "comparison.csv", "comparison.json"):
        assert (root / name).is_file()
    for name in ("loss_curves.png", "weights.png", "final_loss.png"):
        assert (root / name).read_bytes()[:8] == PNG, name
    for seed in (0, 1):
        mmoe = root / "mmoe" / f"seed{seed}"
        assert (mmoe / "gates.png").read_bytes()[:8] == PNG
        gates = json.loads((mmoe / "gates.json").read_text())
        assert sorted(gates) == ["y1", "y2"] and gates["y1"]["num_samples"] == 64  # the test split
        assert not (root / "single_task" / f"seed{seed}" / "gates.json").exists()  # no gates

    # the table's Δm equals one recomputed from the runs' own metrics.json (means over seeds, mse only)
    def means(label: str) -> dict:
        runs = [
            json.loads((root / label / f"seed{s}" / "metrics.json").read_text())["metrics"] for s in (0, 1)
        ]
        return {t: {"mse": (runs[0][t]["mse"] + runs[1][t]["mse"]) / 2} for t in ("y1", "y2")}

    tasks = mtlkit.data.synthetic_correlation(8, 0.5, dim=8).tasks
    dirs = MultiTaskMetrics(tasks).directions()
    want = delta_m(means("mmoe"), means("single_task"), dirs)
    rows = {r["model"]: r for r in csv.DictReader((root / "comparison.csv").open())}
    assert float(rows["mmoe"]["delta_m"]) == pytest.approx(want, rel=1e-9)
    assert float(rows["single_task"]["delta_m"]) == 0.0
    assert "averaged per task over y1: mse; y2: mse." in (root / "comparison.md").read_text()


def test_run_without_plots_still_writes_tables_and_checks_the_selection(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    single = {k: v for k, v in TINY.items() if k not in ("compare", "seeds")}
    root = _run(tmp_path, "plain", single)
    assert (root / "comparison.md").is_file() and (root / "comparison.csv").is_file()
    assert not list(root.glob("*.png"))
    # a Δm metric that no task reports fails before any training
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(yaml.safe_dump(dict(TINY, delta_m_metrics={"y1": ["auc"]})))
    capsys.readouterr()
    # a config problem (exit 2), refused by `validate` too, before any run directory exists
    assert main(["run", str(cfg), "--out", str(tmp_path / "bad"), "--no-progress"]) == 2
    out = capsys.readouterr()
    assert (
        "delta_m_metrics: Δm metric selection names ['auc'] for task 'y1', which has ['loss', 'mse', 'mae']"
        in out.err
    )
    assert "seed 0" not in out.out and not (tmp_path / "bad").exists()
    assert main(["validate", str(cfg)]) == 2
    assert "delta_m_metrics: Δm metric selection names ['auc']" in capsys.readouterr().err
