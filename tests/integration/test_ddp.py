"""The Trainer under DistributedDataParallel: 2 CPU processes (gloo), sharded data, synced weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, port: int, out: str, aggregate: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        import mtlkit
        from mtlkit.data import TensorBatchLoader, synthetic_correlation
        from mtlkit.registries import MODELS

        torch.set_num_threads(1)
        data = synthetic_correlation(512, 0.5, dim=8, seed=0)
        torch.manual_seed(0)  # same initial weights on every rank (DDP also broadcasts them)
        model = MODELS.build("mmoe", input_dim=8, tasks=data.tasks, num_experts=2, dropout=0.1)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        loader = TensorBatchLoader(data, 32, shuffle=True, seed=0, num_replicas=world, rank=rank)
        trainer = mtlkit.Trainer(
            ddp,
            data.tasks,
            weighting=mtlkit.weighting.UncertaintyWeighting(data.tasks),
            progress=False,
            device="cpu",
            seed=0,
            aggregator=mtlkit.aggregation.Mean() if aggregate else None,
        )
        trainer.fit(loader, epochs=2)
        metrics = trainer.evaluate(TensorBatchLoader(data, 64, num_replicas=world, rank=rank))
        if rank == 0:
            trainer.save_checkpoint(Path(out) / "ck.pt")
        params = [p.detach() for p in [*model.parameters(), *trainer.weighting.parameters()]]
        torch.save({"params": params, "metrics": metrics}, Path(out) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
@pytest.mark.parametrize("aggregate", [False, True], ids=["loss-level", "gradient-level"])
def test_trainer_under_ddp_keeps_replicas_in_sync(tmp_path: Path, aggregate: bool) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(2, port, str(tmp_path), aggregate), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"r{r}.pt") for r in (0, 1))
    for a, b in zip(r0["params"], r1["params"]):
        torch.testing.assert_close(a, b)  # gradients were all-reduced: replicas identical
    assert r0["metrics"] == r1["metrics"]  # metrics reduced over both shards
    # the checkpoint holds the bare model (no "module." prefix) and loads into an unwrapped trainer
    import mtlkit
    from mtlkit.data import synthetic_correlation
    from mtlkit.registries import MODELS

    data = synthetic_correlation(512, 0.5, dim=8, seed=0)
    model = MODELS.build("mmoe", input_dim=8, tasks=data.tasks, num_experts=2, dropout=0.1)
    t = mtlkit.Trainer(
        model,
        data.tasks,
        weighting=mtlkit.weighting.UncertaintyWeighting(data.tasks),
        progress=False,
        aggregator=mtlkit.aggregation.Mean() if aggregate else None,
    )
    t.load_checkpoint(tmp_path / "ck.pt")
    for a, b in zip([*model.parameters(), *t.weighting.parameters()], r0["params"]):
        torch.testing.assert_close(a.detach(), b)
