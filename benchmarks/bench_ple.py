"""Training-step time of mtlkit's PLE (grouped experts) vs PLE evaluated bank by bank and vs a loop over experts.

Three ways to compute the same two-level PLE (three tasks, task and shared experts, a shared gate
between the levels), each running the same full training step (forward, masked task losses,
``mtlkit.backward``, Adam step) on the same batch, interleaved, in one process:

* *grouped* (mtlkit's default): all task-specific and shared experts of a level in one batched
  call (their weights concatenated, one matrix product per layer, even where the banks read
  different inputs);
* *per bank*: the same model with every bank evaluated on its own (a loop over the task banks,
  each bank batched), i.e. what ExtractionNetwork does for custom expert modules;
* *loop*: the usual way PLE is written (an ``nn.ModuleList`` of expert MLPs per task and for the
  shared experts, ``nn.Linear`` gates, Python loops over experts).

    python benchmarks/bench_ple.py [--device cuda] [--threads 2]
"""

from __future__ import annotations

import argparse
import itertools
import platform

import torch
from torch import nn

import mtlkit
from _timing import time_interleaved
from mtlkit import Task
from mtlkit.models import PLE, ExtractionNetwork
from mtlkit.registries import MODELS


def mlp(dims: list[int], out: int | None) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(dims):
        layers += [nn.Linear(a, b), nn.ReLU()]
    if out is not None:
        layers.append(nn.Linear(dims[-1], out))
    return nn.Sequential(*layers)


class LoopPLE(nn.Module):
    """PLE written with Python loops over experts (the reference)."""

    def __init__(self, d: int, tasks: list[Task], levels: int, m_t: int, m_s: int, expert_dims, tower_dims):
        super().__init__()
        self.names = [t.name for t in tasks]
        T, D = len(tasks), expert_dims[-1]
        self.task_experts = nn.ModuleList()
        self.shared_experts = nn.ModuleList()
        self.task_gates = nn.ModuleList()
        self.shared_gates = nn.ModuleList()
        for j in range(levels):
            width = d if j == 0 else D
            self.task_experts.append(
                nn.ModuleList(
                    nn.ModuleList(mlp([width, *expert_dims], None) for _ in range(m_t)) for _ in tasks
                )
            )
            self.shared_experts.append(nn.ModuleList(mlp([width, *expert_dims], None) for _ in range(m_s)))
            self.task_gates.append(nn.ModuleList(nn.Linear(width, m_t + m_s) for _ in tasks))
            if j < levels - 1:
                self.shared_gates.append(nn.Linear(width, T * m_t + m_s))
        self.towers = nn.ModuleList(mlp([D, *tower_dims], t.output_dim) for t in tasks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        task_in = [x] * len(self.names)
        shared_in = x
        for j in range(len(self.task_experts)):
            own = [[e(task_in[k]) for e in self.task_experts[j][k]] for k in range(len(self.names))]
            shared = [e(shared_in) for e in self.shared_experts[j]]
            new = []
            for k, gate in enumerate(self.task_gates[j]):
                g = torch.softmax(gate(task_in[k]), dim=-1)
                ex = torch.stack(own[k] + shared, dim=1)
                new.append((g.unsqueeze(-1) * ex).sum(1))
            if j < len(self.shared_gates):
                g = torch.softmax(self.shared_gates[j](shared_in), dim=-1)
                ex = torch.stack([e for o in own for e in o] + shared, dim=1)
                shared_in = (g.unsqueeze(-1) * ex).sum(1)
            task_in = new
        return {n: tower(h) for n, tower, h in zip(self.names, self.towers, task_in)}


def per_bank(model: PLE) -> PLE:
    """The same PLE (same modules) with every expert bank evaluated on its own."""
    levels = [
        ExtractionNetwork(
            {t: nn.Sequential(b) for t, b in lv.task_experts.items()},
            nn.Sequential(lv.shared_experts) if lv.shared_experts is not None else None,
            dict(lv.task_gates.items()),
            lv.shared_gate,
        )
        for lv in model.levels
    ]
    return PLE(levels, dict(model.towers.items()), input_layer=model.input_layer)


def step_fn(model: nn.Module, tasks, x, targets):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
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
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--levels", type=int, default=2)
    ap.add_argument("--task-experts", type=int, default=2)
    ap.add_argument("--shared-experts", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    tasks = [Task(name=f"t{i}", kind="binary") for i in range(3)]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.input, generator=g).to(dev)
    targets = {t.name: (torch.rand(args.batch, generator=g) > 0.5).float().to(dev) for t in tasks}
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, device={dev}, "
        f"threads={torch.get_num_threads()}, batch={args.batch}, input={args.input}, levels={args.levels}, "
        f"task experts={args.task_experts}, shared experts={args.shared_experts}, tasks=3"
    )
    print(
        "| expert MLP | tower | grouped ms/step | per bank ms/step | loop ms/step | per bank / grouped | loop / grouped |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for expert_dims, tower_dims in [((16,), (8,)), ((64,), (32,)), ((256, 128), (64,))]:
        torch.manual_seed(0)
        grouped = MODELS.build(
            "ple",
            input_dim=args.input,
            tasks=tasks,
            num_levels=args.levels,
            num_task_experts=args.task_experts,
            num_shared_experts=args.shared_experts,
            expert_dims=expert_dims,
            tower_dims=tower_dims,
        ).to(dev)
        banks = per_bank(
            MODELS.build(
                "ple",
                input_dim=args.input,
                tasks=tasks,
                num_levels=args.levels,
                num_task_experts=args.task_experts,
                num_shared_experts=args.shared_experts,
                expert_dims=expert_dims,
                tower_dims=tower_dims,
            )
        ).to(dev)
        with torch.no_grad():  # the per-bank variant is the same function as the grouped one
            same = per_bank(grouped)(x)
            for t, o in grouped(x).items():
                torch.testing.assert_close(same[t], o)
        loop = LoopPLE(
            args.input, tasks, args.levels, args.task_experts, args.shared_experts, expert_dims, tower_dims
        ).to(dev)
        times = time_interleaved(
            {
                "grouped": step_fn(grouped, tasks, x, targets),
                "per_bank": step_fn(banks, tasks, x, targets),
                "loop": step_fn(loop, tasks, x, targets),
            },
            steps=10,
            repeats=args.repeats,
            warmup=5,
            device=dev,
        )
        print(
            f"| {list(expert_dims)} | {list(tower_dims)} | {1e3 * times['grouped']:.2f} | "
            f"{1e3 * times['per_bank']:.2f} | {1e3 * times['loop']:.2f} | "
            f"{times['per_bank'] / times['grouped']:.2f}x | {times['loop'] / times['grouped']:.2f}x |"
        )


if __name__ == "__main__":
    main()
