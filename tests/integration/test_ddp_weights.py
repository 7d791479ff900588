"""Sample weights under torch.distributed: two processes equal one process on the global batch.

The ranks' shards carry different weight sums (weights below 1, zeros, missing labels), so the
exact reduction must weigh each rank's loss by its weight sum where it used label counts: the
parameters after training, the epoch losses and the (weighted) evaluation metrics of two gloo
processes equal those of one process within 1e-5.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
RANK_BATCH = 16
# (label, weighting, aggregator, gradient target): the loss-share reduction (loss-level, DDP
# averages) and the fused reduction of the per-task gradients (gradient aggregation)
METHODS = [
    ("equal", "equal", None, "parameters"),
    ("pcgrad", "equal", "pcgrad", "parameters"),
]


def _data() -> Any:
    from mtlkit import Task
    from mtlkit.data import MultiTaskDataset, synthetic_correlation

    base = synthetic_correlation(96, 0.5, dim=6, seed=3)
    y2 = base.targets["y2"].clone()
    y2[torch.arange(96) % 5 == 0] = math.nan
    g = torch.Generator().manual_seed(7)
    w1 = torch.rand(96, generator=g) * 0.9  # sums below the label counts
    w1[:20:3] = 0.0
    w2 = torch.rand(96, generator=g) * 4
    tasks = (
        Task(name="y1", kind="regression", loss={"name": "huber", "delta": 0.5}),
        Task(name="y2", kind="regression"),
    )
    return MultiTaskDataset(
        base.inputs, {"y1": base.targets["y1"], "y2": y2}, tasks=tasks, weights={"y1": w1, "y2": w2}
    )


def _train(method: tuple[str, str, str | None, str], world: int, rank: int) -> tuple[Any, ...]:
    import mtlkit
    from mtlkit.data import TensorBatchLoader
    from mtlkit.registries import AGGREGATORS, MODELS, WEIGHTINGS

    _, weighting, aggregator, target = method
    data = _data()
    torch.manual_seed(0)
    model = MODELS.build(
        "mmoe", input_dim=6, tasks=data.tasks, num_experts=3, expert_dims=[8], tower_dims=[4]
    )
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    trainer = mtlkit.Trainer(
        net,
        data.tasks,
        weighting=WEIGHTINGS.build(weighting, tasks=data.tasks),
        aggregator=AGGREGATORS.build(aggregator, tasks=data.tasks) if aggregator else None,
        gradient_target=target,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        progress=False,
        device="cpu",
        seed=0,
    )
    loader = TensorBatchLoader(
        data, RANK_BATCH * (WORLD // world), shuffle=True, seed=1, num_replicas=world, rank=rank
    )
    trainer.fit(loader, epochs=2)
    metrics = trainer.evaluate(data, batch_size=20)
    return [p.detach().clone() for p in model.parameters()], metrics, [h["train"] for h in trainer.history]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        torch.save({m[0]: _train(m, WORLD, rank) for m in METHODS}, Path(out) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_with_sample_weights_equal_one_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"r{r}.pt") for r in range(WORLD)]
    torch.set_num_threads(1)
    for method in METHODS:
        label = method[0]
        params, metrics, losses = _train(method, 1, 0)
        for rank in range(WORLD):
            r_params, r_metrics, r_losses = ranks[rank][label]
            for a, b in zip(r_params, params, strict=True):
                torch.testing.assert_close(
                    a, b, atol=1e-5, rtol=0, msg=lambda m, w=f"{label} rank {rank}": f"{w}: {m}"
                )
            for task, values in metrics.items():
                for name, v in values.items():
                    assert r_metrics[task][name] == pytest.approx(v, rel=1e-5, abs=1e-6), (label, task, name)
            for mine, single in zip(r_losses, losses, strict=True):
                for task in single:
                    assert mine[task] == pytest.approx(single[task], rel=1e-5), (label, task)


def test_the_weighted_run_differs_from_the_unweighted_one() -> None:
    """The weights matter: the same data without them trains to other parameters."""
    from mtlkit.data import MultiTaskDataset

    data = _data()
    plain = MultiTaskDataset(data.inputs, data.targets, tasks=data.tasks)
    from mtlkit.losses import task_losses

    out = {"y1": torch.zeros(96, 1), "y2": torch.zeros(96, 1)}
    weighted = task_losses(data.tasks, out, data.targets, None, data.weights)
    unweighted = task_losses(plain.tasks, out, plain.targets)
    assert (weighted.losses - unweighted.losses).abs().min() > 1e-3
    assert weighted.counts[0] < unweighted.counts[0]
