"""Distributed training steps: N gloo processes on the global batch vs one process on it.

Each variant is one ``Trainer.train_step`` (forward, masked losses, ``mtlkit.backward`` with its
cross-rank reductions, Adam step) on MMoE (8 experts of 64 units, towers 32), global batch 1024,
input 128. The single-process baseline trains on the whole global batch in the same script run;
the N processes each train on 1024 / N rows and reduce the losses and the per-task gradients
(gradient-level methods) or the final gradients (DDP, loss-level methods). Reported: ms per step
(median over rounds, the slowest rank's), and the speed-up of N processes over one.

    python benchmarks/bench_distributed.py --world 2 --tasks 2 8
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))

METHODS = [("equal", "equal", None), ("uncertainty", "uncertainty", None), ("pcgrad", "equal", "pcgrad"),
           ("mgda", "equal", "mgda"), ("nash_mtl", "equal", "nash_mtl")]  # fmt: skip


def _setup(tasks: int, method: tuple[str, str, str | None], rows: int, wrap: bool, seed: int = 0) -> object:
    import mtlkit
    from mtlkit.data import Batch
    from mtlkit.registries import AGGREGATORS, MODELS, WEIGHTINGS

    task_list = [mtlkit.Task(name=f"t{k}", kind="binary") for k in range(tasks)]
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, 128, generator=g)
    targets = {t.name: (torch.rand(rows, generator=g) < 0.3).float() for t in task_list}
    torch.manual_seed(0)
    model = MODELS.build("mmoe", input_dim=128, tasks=task_list, num_experts=8, expert_dims=[64], tower_dims=[32])
    net = torch.nn.parallel.DistributedDataParallel(model) if wrap else model
    _, weighting, aggregator = method
    trainer = mtlkit.Trainer(
        net,
        task_list,
        weighting=WEIGHTINGS.build(weighting, tasks=task_list),
        aggregator=AGGREGATORS.build(aggregator, tasks=task_list) if aggregator else None,
        progress=False,
        device="cpu",
    )
    batch = Batch(x, targets, None)
    return lambda: trainer.train_step(batch)


def _time(fns: dict[str, object], steps: int, repeats: int, warmup: int, barrier: bool) -> dict[str, list[float]]:
    for fn in fns.values():
        for _ in range(warmup):
            fn()  # type: ignore[operator]
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if barrier:
                dist.barrier()
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()  # type: ignore[operator]
            out[name].append((time.perf_counter() - t0) / steps)
    return out


def _worker(rank: int, world: int, port: int, args: argparse.Namespace, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        fns = {
            f"{tasks}/{m[0]}": _setup(tasks, m, args.batch // world, wrap=True, seed=rank)
            for tasks in args.tasks
            for m in METHODS
        }
        samples = _time(fns, args.steps, args.repeats, args.warmup, barrier=True)
        torch.save(samples, Path(out) / f"r{rank}.pt")
    finally:
        dist.destroy_process_group()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--tasks", type=int, nargs="+", default=[2, 8])
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    single = {
        f"{tasks}/{m[0]}": _setup(tasks, m, args.batch, wrap=False) for tasks in args.tasks for m in METHODS
    }
    base = {k: statistics.median(v) for k, v in _time(single, args.steps, args.repeats, args.warmup, False).items()}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(args.world, port, args, tmp), nprocs=args.world, join=True)
        ranks = [torch.load(Path(tmp) / f"r{r}.pt") for r in range(args.world)]
    print(
        f"# torch {torch.__version__}, {args.world} gloo processes x 1 thread vs 1 process x 1 thread, "
        f"global batch {args.batch}, MMoE 8x64 experts, towers 32, input 128; {args.repeats} rounds of {args.steps}"
    )
    print("| tasks | method | 1 process ms/step | N processes ms/step (slowest rank) | speed-up |")
    print("|---:|---|---:|---:|---:|")
    for key, single_s in base.items():
        slowest = [max(r[key][i] for r in ranks) for i in range(args.repeats)]
        multi = statistics.median(slowest)
        tasks, method = key.split("/")
        print(f"| {tasks} | {method} | {single_s * 1e3:.2f} | {multi * 1e3:.2f} | {single_s / multi:.2f}x |")


if __name__ == "__main__":
    main()
