"""Every balancing method trains the default preset (shrunk to seconds) end to end: finite metrics,
and the training loss of the last epoch well below the first (every method more than halves it here)."""

from __future__ import annotations

import io
import math
from pathlib import Path

import pytest
import torch
from rich.console import Console

import mtlkit
from _helpers import assert_loss_decreased
from mtlkit.config import apply_overrides, load_preset, resolve
from mtlkit.experiment import RunResult, run_experiment
from mtlkit.registries import AGGREGATORS, MODELS, WEIGHTINGS

EXTRA = {"static": ["weighting.weights={y1: 1.0, y2: 0.5}"]}
SMALL = [
    "seeds=[0]",
    "data.n_train=512",
    "data.n_val=128",
    "data.n_test=128",
    "trainer.epochs=3",
    "trainer.batch_size=64",
    "optimizer.lr=0.01",  # 24 steps that cut the training loss by more than half with every method
]


def run(tmp_path: Path, overrides: list[str]) -> RunResult:
    raw = load_preset("default")
    raw.pop("compare")
    raw.pop("baseline")
    exp = resolve(apply_overrides(raw, SMALL + overrides))
    result = run_experiment(exp, output_dir=tmp_path, console=Console(file=io.StringIO()), progress=False)
    (r,) = result.runs
    return r


def assert_trained(r: RunResult) -> None:
    """Finite test metrics, and the summed training loss of the last epoch below 0.8 x the first."""
    for task, ms in r.metrics.items():
        for name, v in ms.items():
            assert math.isfinite(v), (task, name, v)
    assert r.epochs == 3
    assert_loss_decreased(r.history, 0.8)


@pytest.mark.parametrize("name", WEIGHTINGS.names())
def test_every_loss_weighting_trains_the_default_preset(name: str, tmp_path: Path) -> None:
    assert_trained(run(tmp_path, [f"weighting.name={name}", *EXTRA.get(name, [])]))


@pytest.mark.parametrize("name", AGGREGATORS.names())
@pytest.mark.parametrize("target", ["parameters", "representation"])
def test_every_aggregator_trains_the_default_preset(name: str, target: str, tmp_path: Path) -> None:
    assert_trained(run(tmp_path, [f"aggregator.name={name}", f"trainer.gradient_target={target}"]))


def test_gradnorm_on_the_representation(tmp_path: Path) -> None:
    assert_trained(run(tmp_path, ["weighting.name=gradnorm", "trainer.gradient_target=representation"]))


def test_famo_next_batch_trains_the_default_preset(tmp_path: Path) -> None:
    assert_trained(run(tmp_path, ["weighting.name=famo", "weighting.update=next_batch"]))


# ------------------------------------------------------------------ the trainer drives the weightings as their papers say


def _trainer(weighting_name: str, **params: object) -> tuple[mtlkit.data.MultiTaskDataset, mtlkit.Trainer]:
    data = mtlkit.data.synthetic_correlation(128, 0.5, dim=8, seed=0)
    torch.manual_seed(0)
    model = MODELS.build("shared_bottom", input_dim=8, tasks=data.tasks)
    weighting = WEIGHTINGS.build(weighting_name, tasks=data.tasks, **params)
    return data, mtlkit.Trainer(model, data.tasks, weighting=weighting, progress=False)


def test_gradnorm_weights_sum_to_the_number_of_tasks_during_training() -> None:
    data, trainer = _trainer("gradnorm", alpha=1.5)
    history = trainer.fit(data, epochs=2, batch_size=32)
    w = trainer.weighting.loss_weights.detach()
    assert w.sum().item() == pytest.approx(2.0, rel=1e-6)
    assert (w - 1).abs().max() > 1e-4  # they moved
    for record in history:  # every step's weights sum to T, so does their epoch mean
        assert sum(record["weights"].values()) == pytest.approx(2.0, rel=1e-6)


def test_dwa_is_uniform_for_two_epochs_then_follows_the_loss_ratios() -> None:
    data, trainer = _trainer("dwa", temperature=2.0)
    history = trainer.fit(data, epochs=3, batch_size=32)
    assert history[0]["weights"] == {"y1": 1.0, "y2": 1.0}
    assert history[1]["weights"] == {"y1": 1.0, "y2": 1.0}
    l1, l2 = history[0]["train"], history[1]["train"]
    r = [l2[t] / l1[t] / 2.0 for t in ("y1", "y2")]
    expected = [2 * math.exp(v) / sum(math.exp(u) for u in r) for v in r]
    assert list(history[2]["weights"].values()) == pytest.approx(expected, rel=1e-6)


def test_famo_same_batch_updates_its_logits_from_the_losses_after_the_step() -> None:
    """One trainer step against the update written out: log D before the step, log D of the
    same batch after it, one Adam step of the logits on softmax's Jacobian times the drop."""
    data, trainer = _trainer("famo", gamma=0.01, w_lr=0.025)
    batch = next(iter(mtlkit.data.TensorBatchLoader(data, 64, shuffle=False)))
    before = trainer.train_step(batch).losses.losses.detach()
    with torch.no_grad():
        after = mtlkit.task_losses(data.tasks, trainer.model(batch.inputs), batch.targets).losses
    delta = torch.log(before + 1e-8) - torch.log(after + 1e-8)
    z = torch.softmax(torch.zeros(2), 0)
    grad = z * (delta - (z * delta).sum())  # + gamma * logits (= 0 at the first step)
    m, v = 0.1 * grad, 0.001 * grad**2
    expected = -0.025 * (m / 0.1) / ((v / 0.001).sqrt() + 1e-8)
    torch.testing.assert_close(trainer.weighting.logits, expected, rtol=1e-5, atol=1e-7)
