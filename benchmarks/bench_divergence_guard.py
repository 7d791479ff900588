"""Cost of the per-step NaN/inf check (``DivergenceGuard.update``) relative to a training step.

Each variant runs ``Trainer.train_step`` on the same batch of a small MMoE (forward, masked task
losses, ``mtlkit.backward``, Adam step); the guarded variant adds the ``DivergenceGuard.update``
the trainer's epoch loop calls after every step (a few element-wise operations on the ``[T]``
loss vector, no host synchronisation). Interleaved, median of repeats.

    python benchmarks/bench_divergence_guard.py [--device cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import torch

import mtlkit
from _timing import time_interleaved
from mtlkit import Task
from mtlkit.data import Batch
from mtlkit.registries import MODELS
from mtlkit.training.divergence import DivergenceGuard


def variants(trainer: mtlkit.Trainer, data: Batch) -> dict[str, Callable[[], None]]:
    guard = DivergenceGuard(trainer.task_names, trainer.device)
    losses = trainer.train_step(data).losses.losses

    def plain() -> None:
        trainer.train_step(data)

    def guarded() -> None:
        out = trainer.train_step(data)
        guard.update(out.losses.losses, trainer.step - 1)

    def update_only() -> None:
        guard.update(losses, 7)

    return {"plain": plain, "guarded": guarded, "update only": update_only}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    tasks = [Task(name="ctr", kind="binary"), Task(name="cvr", kind="binary")]
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, device={dev}, "
        f"threads={torch.get_num_threads()}"
    )
    print(
        "| batch | input | experts | step ms | step + update ms | difference | update alone µs "
        "| update / step |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for batch, width, experts in [(256, 32, 4), (1024, 128, 8)]:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, width, generator=g)
        y = {t.name: (torch.rand(batch, generator=g) > 0.5).float() for t in tasks}
        data = Batch(x, y).to(dev)
        torch.manual_seed(0)
        model = MODELS.build(
            "mmoe", input_dim=width, tasks=tasks, num_experts=experts, expert_dims=(16,), tower_dims=(8,)
        )
        trainer = mtlkit.Trainer(model, tasks, progress=False, device=dev)
        times = time_interleaved(
            variants(trainer, data), steps=20, repeats=args.repeats, warmup=10, device=dev
        )
        p, q, u = times["plain"], times["guarded"], times["update only"]
        print(
            f"| {batch} | {width} | {experts} | {1e3 * p:.3f} | {1e3 * q:.3f} | {100 * (q / p - 1):+.1f}% "
            f"| {1e6 * u:.1f} | {100 * u / p:.2f}% |"
        )


if __name__ == "__main__":
    main()
