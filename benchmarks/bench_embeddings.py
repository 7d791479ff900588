"""Step time of an MMoE whose embedding front end holds a 1M-row hashed table vs a 10k-row one,
with dense Adam and with sparse-gradient tables (``sparse_embeddings: true``: SparseAdam for the
tables, Adam for the rest). Issue 14 §7: target 1M-row step <= 1.5x the 10k-row step.

    python benchmarks/bench_embeddings.py [--device cuda] [--repeats 15] [--clock cpu --threads 1]

Every variant is the same model except the table rows and the optimizer; the step is forward,
masked task losses, ``mtlkit.backward``, optimizer step. Ratios are per round over the 10k-row
dense step (interleaved in a random order each round, so the load of a shared machine cancels).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

import mtlkit
from _timing import paired_ratios, sample_interleaved
from mtlkit import Task
from mtlkit.data.schema import CATEGORICAL, NUMERIC, FeatureSchema
from mtlkit.models.backbones import embedding
from mtlkit.registries import MODELS
from mtlkit.training.sparse_optim import split_optimizer


def build(rows: int, sparse: bool, tasks: list[Task], dim: int) -> torch.nn.Module:
    # one big hashed id table (dim 16) plus three small columns (dim 8) and 4 numeric columns
    schema = FeatureSchema(
        ("user_id", "device", "site", "hour"),
        (rows + 1, 5, 40, 25),
        ("a", "b", "c", "d"),
        dims=(dim, 8, 8, 8),
    )
    torch.manual_seed(0)
    return MODELS.build(
        "mmoe",
        input_dim=None,
        tasks=tasks,
        num_experts=4,
        expert_dims=(64,),
        tower_dims=(32,),
        input_layer=lambda: embedding(schema, sparse_embeddings=sparse),
    )


def step_fn(model: torch.nn.Module, tasks: list[Task], x: dict, targets: dict):
    opt = split_optimizer(lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), model)
    weighting = mtlkit.weighting.EqualWeighting(tasks)

    def step() -> None:
        tl = mtlkit.task_losses(tasks, model(x), targets)
        opt.zero_grad(set_to_none=True)
        mtlkit.backward(tl.losses, weighting=weighting)
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--big", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=11)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    tasks = [Task(name="ctr", kind="binary"), Task(name="cvr", kind="binary")]
    g = torch.Generator().manual_seed(0)
    n = args.batch
    ids = torch.randint(1, args.small + 1, (n,), generator=g)  # ids valid in both tables
    cats = torch.stack(
        [
            ids,
            torch.randint(0, 5, (n,), generator=g),
            torch.randint(0, 40, (n,), generator=g),
            torch.randint(0, 25, (n,), generator=g),
        ],
        1,
    )
    x = {CATEGORICAL: cats.to(dev), NUMERIC: torch.randn(n, 4, generator=g).to(dev)}
    targets = {t.name: (torch.rand(n, generator=g) > 0.5).float().to(dev) for t in tasks}
    variants = {}
    params = {}
    for label, rows, sparse in (
        ("10k dense Adam", args.small, False),
        ("1M dense Adam", args.big, False),
        ("10k sparse", args.small, True),
        ("1M sparse", args.big, True),
    ):
        model = build(rows, sparse, tasks, args.dim).to(dev)
        params[label] = sum(p.numel() for p in model.parameters())
        variants[label] = step_fn(model, tasks, x, targets)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    samples = sample_interleaved(
        variants, steps=args.steps, repeats=args.repeats, warmup=3, device=dev, clock=clock
    )
    ratios = paired_ratios(samples, "10k dense Adam")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, device={dev}, "
        f"threads={torch.get_num_threads()}, batch={n}, dim={args.dim}, clock={args.clock}, "
        f"repeats={args.repeats}x{args.steps}, load average {load:.1f}"
    )
    print("| variant | parameters | median ms/step | step / 10k dense step (median, IQR) |")
    print("|---|---:|---:|---:|")
    for label, s in samples.items():
        med = sorted(s)[len(s) // 2]
        r, q1, q3 = ratios[label]
        print(f"| {label} | {params[label]:,} | {1e3 * med:.2f} | {r:.2f}x ({q1:.2f}-{q3:.2f}) |")
    r_sparse = paired_ratios(samples, "10k sparse")["1M sparse"][0]
    print(
        f"\n1M sparse / 10k sparse: {r_sparse:.2f}x; 1M sparse / 10k dense: {ratios['1M sparse'][0]:.2f}x "
        f"(target <= 1.5x); 1M dense / 10k dense: {ratios['1M dense Adam'][0]:.2f}x"
    )


if __name__ == "__main__":
    main()
