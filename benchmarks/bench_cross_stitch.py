"""Training-step time of the batched cross-stitch columns vs per-task module columns.

Both variants are :class:`mtlkit.models.CrossStitch` computing the same function: the builder's
columns (one :class:`ExpertMLPs` bank, each layer of every column one batched product) and the
same weights as ``{task: [nn.Sequential(Linear, ReLU), ...]}`` module columns (one call per
column and layer, the usual way cross-stitch is written). A shared-bottom model with one column's
width is timed alongside. Every variant runs the same full step (forward, masked task losses,
``mtlkit.backward``, Adam step) on the same batch, interleaved, in one process.

    python benchmarks/bench_cross_stitch.py [--device cuda] [--threads 2] [--tasks 3]
"""

from __future__ import annotations

import argparse
import copy
import platform

import torch
from torch import nn

import mtlkit
from _timing import time_interleaved
from mtlkit import Task
from mtlkit.models import CrossStitch, CrossStitchUnit
from mtlkit.registries import MODELS


def module_columns_copy(model: CrossStitch) -> CrossStitch:
    """The same network with per-task ``nn.Sequential(Linear, ReLU)`` columns (loop evaluation)."""
    names = model.task_names
    columns: dict[str, list[nn.Module]] = {}
    for k, t in enumerate(names):
        layers = []
        for w, b in model.columns.expert_layers(k):
            lin = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(w.T)
                lin.bias.copy_(b)
            layers.append(nn.Sequential(lin, nn.ReLU()))
        columns[t] = layers
    stitches = [CrossStitchUnit(names) for _ in model.stitches]
    for new, old in zip(stitches, model.stitches):
        new.load_state_dict(old.state_dict())
    heads = {t: copy.deepcopy(model.heads[t]) for t in names}
    return CrossStitch(columns, heads, stitches=stitches)


def step_fn(model: nn.Module, tasks, x, targets):
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        tl = mtlkit.task_losses(tasks, model(x), targets)
        opt.zero_grad(set_to_none=True)
        mtlkit.backward(tl)
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=10)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tasks = [Task(name=f"t{i}", kind="binary") for i in range(args.tasks)]
    x = torch.randn(args.batch, args.input, device=args.device)
    targets = {t.name: (torch.rand(args.batch, device=args.device) > 0.5).float() for t in tasks}
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    print(
        "| columns | tasks | batched ms/step | module columns ms/step | shared-bottom ms/step | module / batched |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for dims in ((64, 32), (256, 128)):
        batched = MODELS.build("cross_stitch", input_dim=args.input, tasks=tasks, hidden_dims=dims)
        loop = module_columns_copy(batched)
        with torch.no_grad():  # same function
            torch.testing.assert_close(batched(x[:8])["t0"], loop(x[:8])["t0"])
        bottom = MODELS.build(
            "shared_bottom", input_dim=args.input, tasks=tasks, bottom_dims=dims, tower_dims=()
        )
        fns = {
            name: step_fn(m.to(args.device), tasks, x, targets)
            for name, m in {"batched": batched, "loop": loop, "bottom": bottom}.items()
        }
        t = time_interleaved(fns, steps=args.steps, repeats=args.repeats, warmup=3, device=args.device)
        print(
            f"| {list(dims)} | {args.tasks} | {t['batched'] * 1e3:.2f} | {t['loop'] * 1e3:.2f} | "
            f"{t['bottom'] * 1e3:.2f} | {t['loop'] / t['batched']:.2f}x |"
        )


if __name__ == "__main__":
    main()
