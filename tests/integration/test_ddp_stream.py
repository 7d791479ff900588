"""Distributed training on a stream equals single-process training on the same global batches.

Two CPU processes (gloo) each train on their rank's share of a :class:`TabularStream` (uneven
rank ranges and last batches, a funnel task labelled on clicks only so the ranks' label counts
differ); one process trains on the union of the two ranks' batches, step by step. The
parameters must agree within 1e-5 of their scale, for label-count-weighted losses (through
DDP) and for a gradient aggregator (per-task gradients reduced over the ranks, then PCGrad).
Every rank takes the same number of steps and every row is read once per epoch over the ranks.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from mtlkit.data.batch import Batch

WORLD = 2
RANK_BATCH = 32
EPOCHS = 2
ROWS = 301  # odd: the ranks' ranges differ by one row; 5 steps per epoch, the last ones uneven
CAT = ["user_id", "item_id", "position"]
NUM = ["price", "user_activity"]
TASKS = {
    "ctr": {"column": "click", "kind": "binary"},
    "cvr": {"column": "conversion", "kind": "binary"},  # labelled on clicks only
    "device": {"column": "device", "kind": "multiclass"},
}  # (the heavy-tailed watch time, unscaled, would make round-off, not the reduction, the error)
# (label, weighting, aggregator)
METHODS = [("equal", "equal", None), ("pcgrad", "equal", "pcgrad")]


def _splits(files: Path, tasks: dict[str, Any] = TASKS) -> Any:
    from mtlkit.data.streaming import tabular_stream

    # shuffle_buffer smaller than a rank's share: several windows per rank and epoch
    return tabular_stream(
        train=files, tasks=tasks, categorical=CAT, numeric=NUM, shuffle_buffer=70, num_workers=0
    )


def _trainer(splits: Any, weighting: str, aggregator: str | None, wrap: bool) -> tuple[Any, Any]:
    import mtlkit
    from mtlkit.models import EmbeddingFrontEnd, mmoe
    from mtlkit.registries import AGGREGATORS, WEIGHTINGS

    torch.manual_seed(0)
    model = mmoe(
        None,
        splits.tasks,
        num_experts=2,
        expert_dims=(8,),
        tower_dims=(4,),
        input_layer=lambda: EmbeddingFrontEnd(splits.input_spec, 3),
    )
    net = torch.nn.parallel.DistributedDataParallel(model) if wrap else model
    trainer = mtlkit.Trainer(
        net,
        splits.tasks,
        weighting=WEIGHTINGS.build(weighting, tasks=splits.tasks),
        aggregator=AGGREGATORS.build(aggregator, tasks=splits.tasks) if aggregator else None,
        optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
        progress=False,
        device="cpu",
        seed=0,
    )
    return model, trainer


def _result(model: torch.nn.Module, trainer: Any) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "losses": [h["train"] for h in trainer.history],
        "step": trainer.step,
    }


def _worker(rank: int, port: int, files: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        splits = _splits(Path(files))
        results = {}
        for label, weighting, aggregator in METHODS:
            model, trainer = _trainer(splits, weighting, aggregator, wrap=True)
            trainer.fit(splits.train, epochs=EPOCHS, batch_size=RANK_BATCH)  # this rank's share
            results[label] = _result(model, trainer)
        results["steps_per_epoch"] = len(
            splits.train.loader(splits.tasks, RANK_BATCH, seed=0, num_replicas=WORLD, rank=rank)
        )
        torch.save(results, Path(out) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


class GlobalBatches:
    """The union of the ranks' batches, step by step (rank order), per epoch: one process's data."""

    def __init__(self, epochs: list[list[Batch]]) -> None:
        self.epochs, self.epoch = epochs, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.epochs[self.epoch])

    def __iter__(self) -> Iterator[Batch]:
        return iter(self.epochs[self.epoch])


def _concat(parts: list[Batch]) -> Batch:
    return Batch(
        {k: torch.cat([p.inputs[k] for p in parts]) for k in parts[0].inputs},
        {k: torch.cat([p.targets[k] for p in parts]) for k in parts[0].targets},
    )


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_on_a_stream_equal_one_process_on_the_global_batches(
    tmp_path: Path, one_thread
) -> None:
    from mtlkit.data.impressions import impression_log

    files = tmp_path / "log"
    impression_log(files, ROWS, shard_rows=120, row_group_rows=50, seed=11)  # 3 files, uneven row groups
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(files), str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"r{r}.pt") for r in range(WORLD)]

    # the ranks' batches, as their loaders give them (seed = the trainer's), and the same layout with
    # the sample id as a target: every row once per epoch over the ranks
    splits = _splits(files)
    with_ids = _splits(files, {**TASKS, "sid": {"column": "sample_id", "kind": "regression"}})
    epochs = []
    for e in range(EPOCHS):
        per_rank, ids = [], []
        for rank in range(WORLD):
            loaders = [
                s.train.loader(s.tasks, RANK_BATCH, seed=0, num_replicas=WORLD, rank=rank)
                for s in (splits, with_ids)
            ]
            for loader in loaders:
                loader.set_epoch(e)
            batches, id_batches = (list(loader) for loader in loaders)
            assert len(batches) == len(id_batches) == ranks[rank]["steps_per_epoch"]
            for a, b in zip(batches, id_batches):  # the same rows
                assert torch.equal(a.inputs["numeric"], b.inputs["numeric"])
            per_rank.append(batches)
            ids.append(torch.cat([b.targets["sid"] for b in id_batches]))
        assert sorted(torch.cat(ids).long().tolist()) == list(range(ROWS)), e
        assert len(per_rank[0]) == len(per_rank[1])
        assert {len(b) for b in per_rank[0]} != {len(b) for b in per_rank[1]}  # uneven last batches
        epochs.append([_concat([per_rank[0][k], per_rank[1][k]]) for k in range(len(per_rank[0]))])
    steps = ranks[0]["steps_per_epoch"]
    assert steps == ranks[1]["steps_per_epoch"] == len(epochs[0]) == 5

    for label, weighting, aggregator in METHODS:
        model, trainer = _trainer(splits, weighting, aggregator, wrap=False)
        initial = [p.detach().clone() for p in model.parameters()]
        trainer.fit(GlobalBatches(epochs), epochs=EPOCHS, batch_size=RANK_BATCH * WORLD)
        single = _result(model, trainer)
        assert single["step"] == EPOCHS * steps
        assert any((a - b).abs().max() > 1e-3 for a, b in zip(single["params"], initial)), label  # it trained
        for rank, result in enumerate(r[label] for r in ranks):
            where = f"{label} rank {rank}"
            assert result["step"] == single["step"], where  # every rank took the same number of steps
            for a, b in zip(result["params"], single["params"]):
                scale = b.abs().max().clamp_min(1.0)
                assert ((a - b).abs().max() / scale).item() <= 1e-5, where
            for mine, one in zip(result["losses"], single["losses"]):
                for task in one:
                    assert mine[task] == pytest.approx(one[task], rel=1e-5), (where, task)
