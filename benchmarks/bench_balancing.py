"""Training-step time of every balancing method, as ratios measured in one run.

For each model (MMoE, shared-bottom) and task count T (2, 8), with batch 1024 and input 128:

- *equal*: the loss-level baseline (one forward, one backward of the summed loss, Adam step);
- *floor*: the least any per-task-gradient method can cost, hand-written here: one forward plus
  T retained backward passes (``loss_k.backward(retain_graph=True)``) and the Adam step;
- every registered loss weighting (ratio to *equal*) and every registered aggregator, with the
  gradient taken w.r.t. the shared parameters (ratio to the *floor*) and w.r.t. the shared
  representation (ratio to *equal*).

Targets (issue 3): loss-level methods <= 1.1x equal; Jacobian methods <= 1.15x floor;
representation-level <= 1.6x equal at T = 8.

    python benchmarks/bench_balancing.py [--device cuda] [--threads 2] [--repeats 7]
"""

from __future__ import annotations

import argparse
import platform
from collections.abc import Callable

import torch

import mtlkit
from _timing import time_interleaved
from mtlkit import Task
from mtlkit.registries import AGGREGATORS, MODELS, WEIGHTINGS

EXTRA = {"static": {"weights": {}}}
VARIANTS = {"famo(next_batch)": ("famo", {"update": "next_batch"})}


def make_weighting(name: str, tasks: list[Task]) -> mtlkit.weighting.LossWeighting:
    base, params = VARIANTS.get(name, (name, EXTRA.get(name, {})))
    return WEIGHTINGS.build(base, tasks=tasks, **params)


def build(kind: str, tasks: list[Task], d: int, dev: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "mmoe":
        m = MODELS.build("mmoe", input_dim=d, tasks=tasks, num_experts=8, expert_dims=(64,), tower_dims=(32,))
    else:
        m = MODELS.build("shared_bottom", input_dim=d, tasks=tasks, bottom_dims=(256, 128), tower_dims=(32,))
    return m.to(dev)


def trainer_step(
    model, tasks, x, targets, *, weighting=None, aggregator=None, target="parameters"
) -> Callable[[], None]:
    trainer = mtlkit.Trainer(
        model,
        tasks,
        weighting=weighting,
        aggregator=aggregator,
        gradient_target=target,
        progress=False,
        device=next(model.parameters()).device,
    )
    batch = mtlkit.data.Batch(x, targets)

    def step() -> None:
        trainer.train_step(batch)

    return step


def floor_step(model, tasks, x, targets) -> Callable[[], None]:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        tl = mtlkit.task_losses(tasks, model(x), targets)
        opt.zero_grad(set_to_none=True)
        for loss in tl.items:  # each task's own scalar loss
            loss.backward(retain_graph=True)
        opt.step()

    return step


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--models", default="mmoe,shared_bottom")
    ap.add_argument("--tasks", default="2,8")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = args.device
    print(
        f"# torch {torch.__version__}, {platform.machine()}, device={dev}, threads={torch.get_num_threads()}, "
        f"batch={args.batch}, input={args.input}"
    )
    for kind in args.models.split(","):
        for T in (int(t) for t in args.tasks.split(",")):
            tasks = [Task(name=f"t{i}", kind="binary") for i in range(T)]
            g = torch.Generator().manual_seed(0)
            x = torch.randn(args.batch, args.input, generator=g).to(dev)
            targets = {t.name: (torch.rand(args.batch, generator=g) > 0.5).float().to(dev) for t in tasks}
            fns: dict[str, Callable[[], None]] = {}
            fns["equal"] = trainer_step(build(kind, tasks, args.input, dev), tasks, x, targets)
            fns["floor"] = floor_step(build(kind, tasks, args.input, dev), tasks, x, targets)
            for name in [*WEIGHTINGS.names(), *VARIANTS]:
                if name == "equal":
                    continue
                w = make_weighting(name, tasks)
                target = "parameters"
                fns[f"w:{name}"] = trainer_step(
                    build(kind, tasks, args.input, dev), tasks, x, targets, weighting=w, target=target
                )
                if w.requires_gradients:
                    w2 = make_weighting(name, tasks)
                    fns[f"w:{name}@rep"] = trainer_step(
                        build(kind, tasks, args.input, dev),
                        tasks,
                        x,
                        targets,
                        weighting=w2,
                        target="representation",
                    )
            for name in AGGREGATORS.names():
                for target in ("parameters", "representation"):
                    a = AGGREGATORS.build(name, tasks=tasks)
                    key = f"a:{name}" + ("@rep" if target == "representation" else "")
                    fns[key] = trainer_step(
                        build(kind, tasks, args.input, dev), tasks, x, targets, aggregator=a, target=target
                    )
            times = time_interleaved(fns, steps=3, repeats=args.repeats, warmup=2, device=dev)
            eq, fl = times["equal"], times["floor"]
            print(
                f"\n### {kind}, T = {T}: equal {1e3 * eq:.2f} ms/step, floor {1e3 * fl:.2f} ms/step "
                f"(floor / equal = {fl / eq:.2f}x)\n"
            )
            print("| method | gradient w.r.t. | ms/step | / equal | / floor | target |")
            print("|---|---|---:|---:|---:|---|")
            for key, t in times.items():
                if key in ("equal", "floor"):
                    continue
                kind_, name = key.split(":")
                rep = name.endswith("@rep")
                name = name.removesuffix("@rep")
                grad_based = kind_ == "a" or make_weighting(name, tasks).requires_gradients
                if rep:
                    goal, ok = "<= 1.6x equal" if T == 8 else "", t / eq <= 1.6
                elif grad_based:
                    goal, ok = "<= 1.15x floor", t / fl <= 1.15
                else:
                    goal, ok = "<= 1.1x equal", t / eq <= 1.1
                mark = "" if not goal else (" ✓" if ok else " ✗")
                print(
                    f"| {name} | {'representation' if rep else ('parameters' if grad_based else 'losses')} | "
                    f"{1e3 * t:.2f} | {t / eq:.2f}x | {t / fl:.2f}x | {goal}{mark} |"
                )


if __name__ == "__main__":
    main()
