"""Distributed training equals single-process training on the global batch.

Two CPU processes (gloo) each train on half of every global batch; the parameters after
several steps must equal those of one process training on the whole batches, for loss-level
weighting (through DDP) and for gradient aggregation (per-task gradients reduced across ranks
before PCGrad / MGDA see them), with missing labels making the ranks' label counts differ.
Evaluation metrics are reduced over the ranks' shards and equal the single-process ones.
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
STEPS_EPOCHS = 2  # 96 samples / 32 per global batch = 3 steps per epoch

# (label, weighting, aggregator, gradient target)
METHODS = [
    ("equal", "equal", None, "parameters"),
    ("uncertainty", "uncertainty", None, "parameters"),
    ("dwa", "dwa", None, "parameters"),
    ("pcgrad", "equal", "pcgrad", "parameters"),
    ("mgda", "equal", "mgda", "parameters"),
    ("mgda-representation", "equal", "mgda", "representation"),
    ("gradnorm", "gradnorm", None, "parameters"),
    ("uncertainty-unwrapped", "uncertainty", None, "parameters"),  # no DDP wrapper: the Trainer averages
]


def _data() -> Any:
    from mtlkit.data import synthetic_correlation

    data = synthetic_correlation(96, 0.5, dim=6, seed=3)
    # missing labels, unevenly spread over the ranks' shards: their label counts differ
    y = data.targets["y2"].clone()
    y[torch.arange(96) % 5 == 0] = math.nan
    y[:12:2] = math.nan  # rank 0 loses more in the first batch
    data.targets["y2"] = y
    # epoch 0: rank 0 has no y2 label in the first global batch (rank 1 has some), and the second
    # global batch has no y1 label on any rank
    from mtlkit.data import TensorBatchLoader

    order = TensorBatchLoader(data, 32, shuffle=True, seed=1)._indices()
    # data.targets["y2"][order[0:32:2]] = math.nan
    data.targets["y1"][order[32:64]] = math.nan
    return data


def _trainer(model: torch.nn.Module, data: Any, weighting: str, aggregator: str | None, target: str) -> Any:
    import mtlkit
    from mtlkit.registries import AGGREGATORS, WEIGHTINGS

    return mtlkit.Trainer(
        model,
        data.tasks,
        weighting=WEIGHTINGS.build(weighting, tasks=data.tasks),
        aggregator=AGGREGATORS.build(aggregator, tasks=data.tasks) if aggregator else None,
        gradient_target=target,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        progress=False,
        device="cpu",
        seed=0,
    )


def _model(data: Any) -> torch.nn.Module:
    from mtlkit.registries import MODELS

    torch.manual_seed(0)
    return MODELS.build("mmoe", input_dim=6, tasks=data.tasks, num_experts=3, expert_dims=[8], tower_dims=[4])


def _train(method: tuple[str, str, str | None, str], world: int, rank: int, wrap: bool) -> tuple[Any, ...]:
    from mtlkit.data import TensorBatchLoader

    _, weighting, aggregator, target = method
    data = _data()
    model = _model(data)
    net = torch.nn.parallel.DistributedDataParallel(model) if wrap else model
    trainer = _trainer(net, data, weighting, aggregator, target)
    loader = TensorBatchLoader(
        data, RANK_BATCH * (WORLD // world), shuffle=True, seed=1, num_replicas=world, rank=rank
    )
    trainer.fit(loader, epochs=STEPS_EPOCHS)
    metrics = trainer.evaluate(data, batch_size=20)
    params = [p.detach().clone() for p in [*model.parameters(), *trainer.weighting.parameters()]]
    return params, metrics, [h["train"] for h in trainer.history]


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        results = {m[0]: _train(m, WORLD, rank, wrap=not m[0].endswith("-unwrapped")) for m in METHODS}
        torch.save(results, Path(out) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_equal_single_process_on_the_global_batch(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"r{r}.pt") for r in range(WORLD)]
    torch.set_num_threads(1)
    for method in METHODS:
        label = method[0]
        params, metrics, train_losses = _train(method, 1, 0, wrap=False)
        initial = [p.detach() for p in _model(_data()).parameters()]
        assert any((a - b).abs().max() > 1e-3 for a, b in zip(params, initial)), label  # it trained
        for rank, (r_params, r_metrics, r_losses) in enumerate(ranks[i][label] for i in range(WORLD)):
            assert len(r_params) == len(params)
            where = f"{label} rank {rank}"
            for a, b in zip(r_params, params):
                torch.testing.assert_close(
                    a, b, atol=1e-5, rtol=0, msg=lambda m, where=where: f"{where}: {m}"
                )
            for task, values in metrics.items():  # evaluation reduced over the two shards
                for name, v in values.items():
                    assert r_metrics[task][name] == pytest.approx(v, rel=1e-5, abs=1e-6), (label, task, name)
            for mine, single in zip(r_losses, train_losses):  # epoch losses of the global batches
                for task in single:
                    assert mine[task] == pytest.approx(single[task], rel=1e-5), (label, task)


def test_sharded_loaders_partition_the_single_process_batches() -> None:
    from mtlkit.data import TensorBatchLoader

    data = _data()
    single = [b.inputs for b in TensorBatchLoader(data, 32, shuffle=True, seed=1)]
    shards = [list(TensorBatchLoader(data, 16, shuffle=True, seed=1, num_replicas=2, rank=r)) for r in (0, 1)]
    for i, whole in enumerate(single):
        parts = torch.cat([shards[0][i].inputs, shards[1][i].inputs])
        assert sorted(map(tuple, parts.tolist())) == sorted(map(tuple, whole.tolist()))
    # evaluation shards are not padded: every sample counts once
    ev = [TensorBatchLoader(data, 7, num_replicas=3, rank=r, pad=False) for r in range(3)]
    assert sum(len(b.inputs) for loader in ev for b in loader) == len(data)
    assert [len(loader) for loader in ev] == [-(-len(range(r, 96, 3)) // 7) for r in range(3)]
