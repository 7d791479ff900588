"""Every registered aggregator trains end to end (Trainer and CLI) without NaN."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

import mtlkit
from _helpers import assert_loss_decreased
from mtlkit import Task, Trainer
from mtlkit.aggregation import AGGREGATORS
from mtlkit.cli.main import main
from mtlkit.registries import MODELS

NAMES = AGGREGATORS.names()
SIZES = {
    "mmoe": {"num_experts": 2, "expert_dims": (8,), "tower_dims": (4,)},
    "shared_bottom": {"bottom_dims": (8,), "tower_dims": (4,)},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _finite_history(history: list[dict]) -> bool:
    return all(math.isfinite(v) for epoch in history for v in epoch["train"].values())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("model_name", ["mmoe", "shared_bottom"])
@pytest.mark.parametrize("target", ["parameters", "representation"])
def test_every_aggregator_trains_without_nan_and_lowers_the_loss(name: str, model_name: str, target: str) -> None:
    data = mtlkit.data.synthetic_correlation(256, 0.5, dim=8, seed=0)
    torch.manual_seed(0)
    model = MODELS.build(model_name, input_dim=8, tasks=data.tasks, **SIZES[model_name])
    aggregator = AGGREGATORS.build(name, tasks=data.tasks)
    trainer = Trainer(
        model,
        data.tasks,
        aggregator=aggregator,
        gradient_target=target,
        progress=False,
        optimizer=lambda p: torch.optim.Adam(p, lr=0.03),
    )
    history = trainer.fit(data, epochs=3, batch_size=48)  # 6 batches an epoch, the last one smaller
    assert _finite_history(history), history
    # it learns: every method here about halves the summed loss (at most 0.53 x the first epoch's)
    assert_loss_decreased(history, 0.8, f"{name} on {model_name} ({target})")
    assert all(torch.isfinite(p).all() for p in model.parameters())
    metrics = trainer.evaluate(data)
    assert all(math.isfinite(m["mse"]) for m in metrics.values()), metrics


TASKS3 = (Task(name="a", kind="regression"), Task(name="b", kind="binary"), Task(name="c", kind="regression"))


def _batches_with_missing_tasks() -> list[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(6):
        x = torch.randn(16, 6, generator=g)
        y = {
            "a": x[:, 0] + 0.1 * torch.randn(16, generator=g),
            "b": (x[:, 1] > 0).float(),
            "c": x[:, 2] - x[:, 3],
        }
        if i % 3 == 1:
            y["b"] = torch.full((16,), float("nan"))  # task b has no label in this batch
        if i % 3 == 2:
            del y["c"]  # task c's targets are absent altogether
        batches.append((x, y))
    return batches


@pytest.mark.parametrize("name", NAMES)
def test_tasks_without_labels_in_a_batch_are_handled(name: str) -> None:
    torch.manual_seed(0)
    model = MODELS.build("shared_bottom", input_dim=6, tasks=TASKS3, **SIZES["shared_bottom"])
    trainer = Trainer(model, TASKS3, aggregator=AGGREGATORS.build(name, tasks=TASKS3), progress=False)
    history = trainer.fit(_batches_with_missing_tasks(), epochs=2)
    assert _finite_history(history), history
    assert all(torch.isfinite(p).all() for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_cli_validates_every_aggregator(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    # the default preset without its comparison (its single_task run shares no parameters, so
    # `run` refuses an aggregator there, and `validate` refuses exactly what `run` refuses)
    assert main(["validate", f"aggregator.name={name}", "compare=null", "baseline=null"]) == 0
    out = capsys.readouterr().out
    assert f"name: {name}" in out
    assert main(["validate", f"aggregator.name={name}"]) == 2
    assert "compare.single_task: aggregator:" in capsys.readouterr().err


def test_cli_runs_a_config_with_an_aggregator(tmp_path: Path) -> None:
    cfg = {
        "name": "agg",
        "data": {"name": "synthetic_correlation", "n_train": 128, "n_val": 32, "n_test": 32, "dim": 6},
        "model": {"name": "shared_bottom", "bottom_dims": [8], "tower_dims": [4]},
        "aggregator": {"name": "cagrad", "c": 0.4},
        "trainer": {"epochs": 1, "batch_size": 32, "gradient_target": "representation"},
        "compare": {"cagrad": {}, "nash_mtl": {"aggregator": {"name": "nash_mtl", "max_norm": 0.0}}},
    }
    path = tmp_path / "agg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--out", str(tmp_path / "runs"), "--no-progress"]) == 0
    (root,) = list((tmp_path / "runs").iterdir())
    for label in ("cagrad", "nash_mtl"):
        saved = yaml.safe_load((root / label / "seed0" / "config.yaml").read_text())
        assert saved["aggregator"]["name"] == label
        assert saved["trainer"]["gradient_target"] == "representation"
    assert yaml.safe_load((root / "cagrad" / "seed0" / "config.yaml").read_text())["aggregator"]["c"] == 0.4


def test_cli_reports_a_bad_aggregator_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", "aggregator.name=cagrad", "aggregator.alpha=0.5"]) == 2
    err = capsys.readouterr().err
    assert "aggregator.alpha: unknown parameter for gradient aggregator 'cagrad'" in err


@pytest.mark.parametrize("name", ["gradvac", "nash_mtl", "db_mtl", "pcgrad", "graddrop"])
def test_resume_from_a_checkpoint_continues_the_aggregator_state(name: str, tmp_path: Path) -> None:
    """Stateful (EMAs, stored weights) and stochastic aggregators resume exactly."""
    data = mtlkit.data.synthetic_correlation(192, 0.5, dim=6, seed=1)
    params = {"update_weights_every": 2} if name == "nash_mtl" else {}

    def trainer(seed: int) -> Trainer:
        torch.manual_seed(seed)
        model = MODELS.build("mmoe", input_dim=6, tasks=data.tasks, **SIZES["mmoe"])
        return Trainer(
            model, data.tasks, aggregator=AGGREGATORS.build(name, tasks=data.tasks, **params), progress=False
        )

    full = trainer(0)
    full.fit(data, epochs=3, batch_size=40)
    first = trainer(0)
    first.fit(data, epochs=1, batch_size=40, checkpoint=tmp_path / "ck.pt")  # 5 steps: odd
    resumed = trainer(123)  # a fresh process: other initial weights, fresh aggregator state
    resumed.fit(data, epochs=3, batch_size=40, resume=tmp_path / "ck.pt")
    assert [h["train"] for h in resumed.history] == [h["train"] for h in full.history]
    for a, b in zip(resumed.model.parameters(), full.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
