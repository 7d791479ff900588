"""GAUC, NE, calibration and ECE under torch.distributed: two gloo processes, each seeing its own
uneven share of the rows (one of them no labels at all of one task), compute the same values as
one process over every row, within 1e-5, in float32 and float64; and through ``Trainer.evaluate``
on a dataset whose group ids travel in the batches' ``columns``."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

WORLD = 2
N = 150
SHARES = [(0, 90), (90, 150)]  # uneven


def _tasks() -> tuple[Any, ...]:
    from mtlkit import Task
    from mtlkit.metrics import AUROC
    from mtlkit.metrics.ranking_metrics import (
        Calibration,
        ExpectedCalibrationError,
        GroupAUC,
        NormalizedEntropy,
    )

    metrics = {
        "auc": AUROC,
        "gauc": lambda: GroupAUC("user"),
        "ne": NormalizedEntropy,
        "calibration": Calibration,
        "ece": lambda: ExpectedCalibrationError(bins=6),
    }
    return Task(name="a", kind="binary", metrics=metrics), Task(name="b", kind="binary", metrics=metrics)


def _rows(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(N, 2, generator=g).to(dtype)
    y = (torch.rand(N, 2, generator=g) < torch.sigmoid(logits.double())).to(dtype)
    mask = torch.rand(N, 2, generator=g) > 0.15
    mask[90:, 1] = False  # rank 1 sees no label of task b
    w = torch.rand(N, generator=g, dtype=torch.float64) * 2
    users = torch.randint(0, 12, (N,), generator=g) * 7_919_000_000_017
    return {"logits": logits, "y": y, "mask": mask, "w": w.to(dtype), "users": users}


def _direct(lo: int, hi: int, dtype: torch.dtype) -> dict[str, dict[str, float]]:
    from mtlkit.metrics import MultiTaskMetrics

    d = _rows(dtype)
    m = MultiTaskMetrics(_tasks())
    for a in range(lo, hi, 25):
        b = min(a + 25, hi)
        m.update(
            {"a": d["logits"][a:b, :1], "b": d["logits"][a:b, 1:]},
            {"a": d["y"][a:b, 0], "b": d["y"][a:b, 1]},
            {"a": d["mask"][a:b, 0], "b": d["mask"][a:b, 1]},
            {"a": d["w"][a:b], "b": d["w"][a:b]},
            {"user": d["users"][a:b]},
        )
    return m.compute()


def _dataset(dtype: torch.dtype) -> Any:
    from mtlkit.data import MultiTaskDataset

    d = _rows(dtype)
    y = d["y"].clone()
    y[~d["mask"]] = float("nan")
    return MultiTaskDataset(
        d["logits"],
        {"a": y[:, 0], "b": y[:, 1]},
        tasks=_tasks(),
        weights=d["w"],
        columns={"user": d["users"]},
        dtype=dtype,
    )


def _evaluate(dtype: torch.dtype) -> dict[str, dict[str, float]]:
    import mtlkit
    from mtlkit.registries import MODELS

    data = _dataset(dtype)
    torch.manual_seed(0)
    model = MODELS.build("shared_bottom", input_dim=2, tasks=data.tasks, bottom_dims=[4], tower_dims=[3]).to(dtype)
    trainer = mtlkit.Trainer(model, data.tasks, progress=False, device="cpu")
    return trainer.evaluate(data, batch_size=16)


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        torch.set_num_threads(1)
        res = {}
        for dtype in (torch.float32, torch.float64):
            res[str(dtype)] = (_direct(*SHARES[rank], dtype), _evaluate(dtype))
        torch.save(res, Path(out) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed unavailable")
def test_two_processes_equal_one_process(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_worker, args=(port, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"r{r}.pt") for r in range(WORLD)]
    for dtype in (torch.float32, torch.float64):
        single = (_direct(0, N, dtype), _evaluate(dtype))
        for rank in range(WORLD):
            for got, want in zip(ranks[rank][str(dtype)], single, strict=True):
                for task, values in want.items():
                    assert set(got[task]) == set(values)
                    for name, v in values.items():
                        assert v == v, (task, name)  # every value is a number (no NaN)
                        assert got[task][name] == pytest.approx(v, rel=1e-5, abs=1e-7), (dtype, rank, task, name)
