"""Training-step time of mtlkit's batched MMoE vs a loop-over-experts MMoE, and shared-bottom.

The loop reference is the usual way MMoE is written (an ``nn.ModuleList`` of expert MLPs and one
``nn.Linear`` gate per task, evaluated in Python loops); it computes the same function as
mtlkit's MMoE. Every variant runs the same full training step (forward, masked task losses,
``mtlkit.backward``, Adam step) on the same batch, interleaved, in one process.

    python benchmarks/bench_mmoe.py [--device cuda] [--threads 2]
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
from mtlkit.registries import MODELS


class LoopMMoE(nn.Module):
    """MMoE written with Python loops over experts and gates (the reference)."""

    def __init__(
        self,
        d: int,
        tasks: list[Task],
        num_experts: int,
        expert_dims: tuple[int, ...],
        tower_dims: tuple[int, ...],
    ):
        super().__init__()

        def mlp(dims: list[int], out: int | None) -> nn.Sequential:
            layers: list[nn.Module] = []
            for a, b in itertools.pairwise(dims):
                layers += [nn.Linear(a, b), nn.ReLU()]
            if out is not None:
                layers.append(nn.Linear(dims[-1], out))
            return nn.Sequential(*layers)

        self.names = [t.name for t in tasks]
        self.experts = nn.ModuleList(mlp([d, *expert_dims], None) for _ in range(num_experts))
        self.gates = nn.ModuleList(nn.Linear(d, num_experts) for _ in tasks)
        self.towers = nn.ModuleList(mlp([expert_dims[-1], *tower_dims], t.output_dim) for t in tasks)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        experts = torch.stack([e(x) for e in self.experts], dim=1)  # (N, E, D)
        out = {}
        for name, gate, tower in zip(self.names, self.gates, self.towers):
            g = torch.softmax(gate(x), dim=-1).unsqueeze(-1)
            out[name] = tower((g * experts).sum(dim=1))
        return out


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
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    tasks = [Task(name="ctr", kind="binary"), Task(name="cvr", kind="binary")]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, args.input, generator=g).to(dev)
    targets = {t.name: (torch.rand(args.batch, generator=g) > 0.5).float().to(dev) for t in tasks}
    print(
        f"# torch {torch.__version__}, {platform.processor() or platform.machine()}, device={dev}, "
        f"threads={torch.get_num_threads()}, batch={args.batch}, input={args.input}, experts={args.experts}"
    )
    print(
        "| expert MLP | tower | batched MMoE ms/step | loop MMoE ms/step | shared-bottom ms/step "
        "| loop / batched | batched / shared-bottom |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for expert_dims, tower_dims in [((16,), (8,)), ((64,), (32,)), ((256, 128), (64,))]:
        torch.manual_seed(0)
        batched = MODELS.build(
            "mmoe",
            input_dim=args.input,
            tasks=tasks,
            num_experts=args.experts,
            expert_dims=expert_dims,
            tower_dims=tower_dims,
        ).to(dev)
        loop = LoopMMoE(args.input, tasks, args.experts, expert_dims, tower_dims).to(dev)
        # shared-bottom whose bottom is one expert: the cost MMoE adds is the other experts + gates
        sb = MODELS.build(
            "shared_bottom", input_dim=args.input, tasks=tasks, bottom_dims=expert_dims, tower_dims=tower_dims
        ).to(dev)
        times = time_interleaved(
            {
                "batched": step_fn(batched, tasks, x, targets),
                "loop": step_fn(loop, tasks, x, targets),
                "shared_bottom": step_fn(sb, tasks, x, targets),
            },
            steps=10,
            repeats=args.repeats,
            warmup=5,
            device=dev,
        )
        print(
            f"| {list(expert_dims)} | {list(tower_dims)} | {1e3 * times['batched']:.2f} | {1e3 * times['loop']:.2f} | "
            f"{1e3 * times['shared_bottom']:.2f} | {times['loop'] / times['batched']:.2f}x "
            f"| {times['batched'] / times['shared_bottom']:.2f}x |"
        )


if __name__ == "__main__":
    main()
