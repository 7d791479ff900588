"""The Trainer's parts on their own: train_step, OptimizerSet, EarlyStopper, EpochStats, TrainSource, shards and seeds."""

from __future__ import annotations

import math

import pytest
import torch

import mtlkit
from mtlkit import EarlyStopping, Task
from mtlkit.data import MultiTaskDataset, TensorBatchLoader
from mtlkit.data.batch import Batch
from mtlkit.distributed import mix_seed, shard
from mtlkit.errors import DataError
from mtlkit.registries import MODELS
from mtlkit.state import TrainState
from mtlkit.training import TrainingDivergedError
from mtlkit.training.balancer import Balancer
from mtlkit.training.early_stopping import EarlyStopper
from mtlkit.training.epoch import EpochStats
from mtlkit.training.optimizers import OptimizerSet
from mtlkit.training.source import as_source
from mtlkit.training.step import StepStats, train_step, trained_subset
from mtlkit.weighting import StaticWeighting

TASKS = (Task(name="a", kind="regression"), Task(name="b", kind="regression"))


def _model():
    torch.manual_seed(0)
    return MODELS.build("shared_bottom", input_dim=4, tasks=TASKS).double()


def _batch(n: int = 8) -> Batch:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 4, generator=g, dtype=torch.float64)
    return Batch(
        x,
        {
            "a": torch.randn(n, generator=g, dtype=torch.float64),
            "b": torch.randn(n, generator=g, dtype=torch.float64),
        },
    )


def test_train_step_is_one_sgd_step_on_the_weighted_sum() -> None:
    model, batch = _model(), _batch()
    reference = _model()
    weighting = StaticWeighting(TASKS, [2.0, 0.5]).double()
    opt = OptimizerSet(model, weighting, ["a", "b"], lambda p: torch.optim.SGD(p, lr=0.1))
    stats = train_step(model, batch, TASKS, Balancer(weighting), opt, TrainState())
    assert isinstance(stats, StepStats) and stats.aux == {}
    tl = mtlkit.task_losses(TASKS, reference(batch.inputs), batch.targets)
    (2.0 * tl.losses[0] + 0.5 * tl.losses[1]).backward()
    with torch.no_grad():
        for p in reference.parameters():
            p -= 0.1 * p.grad
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p, q)
    torch.testing.assert_close(stats.result.losses, tl.losses.detach())
    assert stats.result.weights.tolist() == [2.0, 0.5]


def test_a_step_that_trains_one_task_leaves_the_other_head_alone() -> None:
    model, batch = _model(), _batch()
    weighting = StaticWeighting(TASKS, [1.0, 1.0]).double()
    opt = OptimizerSet(model, weighting, ["a", "b"], lambda p: torch.optim.Adam(p, lr=0.1))
    head_b = [p.detach().clone() for p in model.task_parameters("b")]
    train_step(model, batch, TASKS, Balancer(weighting), opt, TrainState(), trained=("a",))
    for p, before in zip(model.task_parameters("b"), head_b):
        assert torch.equal(p.detach(), before) and p.grad is None
    assert trained_subset(["a", "b"], ["b", "a"]) is None  # every task: no subset
    with pytest.raises(ValueError, match="per-task optimizers every step trains one task"):
        trained_subset(["a", "b"], None, one_task=True)


def test_per_task_optimizer_set_steps_only_the_trained_tasks_optimizer() -> None:
    model = _model()
    weighting = StaticWeighting(TASKS, [1.0, 1.0])
    opts = OptimizerSet(
        model,
        weighting,
        ["a", "b"],
        lambda p: torch.optim.SGD(p, lr=0.1),
        lambda o: torch.optim.lr_scheduler.StepLR(o, 1, gamma=0.5),
        per_task=True,
        interval="step",
    )
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opts.step(("b",))
    assert [o.param_groups[0]["lr"] for o in opts.optimizers.values()] == [0.1, 0.05]
    state = opts.state_dict()
    assert state["optimizer"] is None and set(state["task_optimizers"]) == {"a", "b"}
    with pytest.raises(TypeError, match="must be factories"):
        OptimizerSet(model, weighting, ["a", "b"], torch.optim.SGD(model.parameters(), lr=0.1), per_task=True)
    opts.zero_grad()
    assert all(p.grad is None for p in model.parameters())


def test_early_stopper_stops_after_patience_epochs_without_improvement() -> None:
    snaps = []
    stopper = EarlyStopper(
        lambda with_model: snaps.append(with_model) or {"state": {"w": 1}, "weighting": {}}
    )
    stopper.start(EarlyStopping(patience=2, min_delta=0.1))
    values = [1.0, 0.5, 0.45, math.nan]  # 0.45 is not better by more than min_delta, NaN never is
    stops = [stopper.update(v, higher=False, epoch=i + 1) for i, v in enumerate(values)]
    assert stops == [False, False, False, True]  # epochs 3 and 4 without improvement: patience 2
    assert stopper.best_epoch == 2 and stopper.stopped and snaps == [True, True]
    again = EarlyStopper(lambda _: {})
    again.load_state_dict(stopper.state_dict())
    again.start(EarlyStopping(patience=1))
    assert again.stopped and again.best_state() is not None
    again.start(None)  # no rule in this fit: nothing stops, nothing is restored
    assert not again.stopped and again.best_state() is None


def test_epoch_stats_weigh_losses_by_label_counts_and_report_divergence() -> None:
    from mtlkit.autograd import BackwardResult
    from mtlkit.losses import TaskLosses

    stats = EpochStats(["a", "b"], torch.device("cpu"), epoch=0, first_step=10)
    for losses, counts in (([1.0, 2.0], [3.0, 0.0]), ([3.0, 4.0], [1.0, 0.0])):
        result = BackwardResult(torch.tensor(0.0), torch.tensor([1.0, 0.0]), torch.tensor(losses))
        tl = TaskLosses(torch.tensor(losses), torch.tensor(counts), ())
        stats.add(StepStats(result, tl, {"pen": torch.tensor(0.5)}), ("a",))
    means = stats.means()
    assert means[0] == pytest.approx((1.0 * 3 + 3.0 * 1) / 4) and math.isnan(means[1])
    summary = stats.summary(means, steps_per_task=True)
    assert summary["steps"] == {"a": 2, "b": 0} and summary["aux"] == {"pen": 0.5}
    assert summary["weights"]["a"] == 1.0 and math.isnan(summary["weights"]["b"])
    bad = BackwardResult(torch.tensor(0.0), torch.ones(2), torch.tensor([1.0, float("inf")]))
    stats.add(StepStats(bad, TaskLosses(torch.ones(2), torch.ones(2), ()), {}), None)
    with pytest.raises(TrainingDivergedError, match="task 'b' became inf in epoch 1 at step 13"):
        stats.means()


def test_train_sources_refuse_the_shape_a_schedule_cannot_use() -> None:
    ds = MultiTaskDataset(torch.randn(6, 4), {"a": torch.randn(6), "b": torch.randn(6)}, tasks=TASKS)
    per_task = as_source({"a": ds, "b": ds}, exclude=["b"])
    assert per_task.per_task_names == ("a",)
    assert as_source(ds).per_task_names is None and set(as_source(ds).task_datasets(TASKS, schedule="x")) == {
        "a",
        "b",
    }
    with pytest.raises(DataError, match="Schedule 'alternating' draws each task's batches.*got list"):
        as_source([]).task_datasets(TASKS, schedule="alternating")
    assert as_source(per_task) is per_task


@pytest.mark.parametrize("n", [1, 7, 12])
def test_shards_partition_the_order_and_match_the_batch_loader(n: int) -> None:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    padded = [shard(order, 3, r) for r in range(3)]
    assert {len(p) for p in padded} == {-(-n // 3)}
    assert set(torch.cat(padded).tolist()) == set(order.tolist())
    exact = [shard(order, 3, r, pad=False) for r in range(3)]
    assert sorted(torch.cat(exact).tolist()) == sorted(order.tolist())
    for r in range(3):  # torch's DistributedSampler pads the same way (an independent reference)
        sampler = torch.utils.data.DistributedSampler(range(n), num_replicas=3, rank=r, shuffle=False)
        assert shard(torch.arange(n), 3, r).tolist() == list(sampler)
    x = torch.cat([torch.arange(n, dtype=torch.float32)[:, None], torch.randn(n, 3)], 1)  # column 0: row id
    ds = MultiTaskDataset(x, {"a": torch.randn(n), "b": torch.randn(n)}, tasks=TASKS)

    def ids(loader: TensorBatchLoader) -> torch.Tensor:
        return torch.cat([b.inputs[:, 0] for b in loader]).long()

    full = ids(TensorBatchLoader(ds, n, shuffle=True, seed=5))
    for r in range(3):  # the dataset loader's shard, computed on its own
        assert torch.equal(
            ids(TensorBatchLoader(ds, n, shuffle=True, seed=5, num_replicas=3, rank=r)), shard(full, 3, r)
        )


def test_one_seed_mixer() -> None:
    from mtlkit.data.dataset import epoch_seed

    assert mix_seed(3, 7) == epoch_seed(3, 7) and mix_seed(3, 7, 1) == epoch_seed(3, 7, stream=1)
    assert len({mix_seed(0, e) for e in range(100)}) == 100 and 0 <= mix_seed(-1, 2) < 2**63


@pytest.mark.parametrize(("patience", "bad_epochs_run"), [(0, 1), (1, 1), (3, 3)])
def test_early_stopper_runs_exactly_patience_bad_epochs(patience: int, bad_epochs_run: int) -> None:
    """A hand-counted case: best at epoch 2, then only worse values; the stop comes after
    ``patience`` further epochs (at least one)."""
    stopper = EarlyStopper(lambda _: {"state": None, "weighting": {}})
    stopper.start(EarlyStopping(patience=patience))
    values = [2.0, 1.0] + [5.0] * 10
    stopped_at = next(i + 1 for i, v in enumerate(values) if stopper.update(v, higher=False, epoch=i + 1))
    assert stopped_at == 2 + bad_epochs_run
    assert stopper.best_epoch == 2
