"""Training-step time of every balancing method, as ratios measured in one run.

For each model (MMoE, shared-bottom) and task count T (2, 8), with batch 1024 and input 128:

- *equal*: the loss-level baseline (one forward, one backward of the summed loss, Adam step);
- *floor*: the least any per-task-gradient method can cost, hand-written here: one forward plus
  T retained backward passes (``loss_k.backward(retain_graph=True)``) and the Adam step (also
  timed through the per-task ``decode(encode(x))`` forward, for reference);
- every registered loss weighting (ratio to *equal*) and every registered aggregator, with the
  gradient taken w.r.t. the shared parameters (ratio to the *floor*) and w.r.t. the shared
  representation (ratio to *equal*).

Targets (issue 3): loss-level methods <= 1.1x equal; Jacobian methods <= 1.15x floor;
representation-level <= 1.6x equal at T = 8.

Timing: every round runs each variant ``--steps`` steps in a random order; a ratio is the
median over rounds of (variant / baseline) within the same round, shown with its 25th-75th
percentile range, so load changes on a shared machine cancel out. On a CPU shared with other
work, use one thread and the CPU clock (``--threads 1 --clock cpu``): with two threads on two
busy cores every parallel operation waits for its descheduled thread, which measures the
scheduler, not the code (benchmarks/RESULTS.md).

    python benchmarks/bench_balancing.py [--device cuda] [--threads 2] [--steps 10] [--repeats 15]
    python benchmarks/bench_balancing.py --threads 1 --clock cpu --steps 5 --repeats 31   # the recorded table
    python benchmarks/bench_balancing.py --quick --models mmoe --tasks 2 --methods 'mgda,pcgrad'
"""

from __future__ import annotations

import argparse
import fnmatch
import platform
import statistics
import time
from collections.abc import Callable

import torch

import mtlkit
from _timing import paired_ratios, sample_interleaved
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


def floor_step(model, tasks, x, targets, *, decode: bool = False) -> Callable[[], None]:
    """The floor, hand-written: one forward (``model(x)``, or with ``decode`` the representation
    path the Trainer's gradient path uses), ``T`` retained backward
    passes accumulating into ``.grad``, the Adam step."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True)  # as the Trainer's default

    def step() -> None:
        out = model.forward_parts(x, representation=decode).outputs
        tl = mtlkit.task_losses(tasks, out, targets)
        opt.zero_grad(set_to_none=True)
        for loss in tl.items:  # each task's own scalar loss
            loss.backward(retain_graph=True)
        opt.step()

    return step


def targets_for(rep: bool, grad_based: bool, num_tasks: int) -> tuple[str, str, float]:
    """``(gradient w.r.t., target text, ratio limit)``; the limit applies to the baseline named in the text."""
    if rep:
        return "representation", ("<= 1.6x equal" if num_tasks == 8 else ""), 1.6
    if grad_based:
        return "parameters", "<= 1.15x floor", 1.15
    return "losses", "<= 1.1x equal", 1.1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10, help="training steps per timed sample")
    ap.add_argument("--repeats", type=int, default=15, help="rounds (one sample of every variant per round)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="3 steps x 5 rounds: a smoke run, not a measurement")
    ap.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="wall time, or the process's CPU time (ignores waiting for a core on a busy machine; use with "
        "--threads 1)",
    )
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--input", type=int, default=128)
    ap.add_argument("--models", default="mmoe,shared_bottom")
    ap.add_argument("--tasks", default="2,8")
    ap.add_argument("--methods", default="*", help="comma-separated name patterns (fnmatch), e.g. 'mgda,pcgrad'")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.repeats, args.warmup = 3, 5, 2
    torch.set_num_threads(args.threads)
    dev = args.device
    patterns = args.methods.split(",")

    def wanted(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) for p in patterns)

    print(
        f"# torch {torch.__version__}, {platform.machine()}, device={dev}, threads={torch.get_num_threads()}, "
        f"batch={args.batch}, input={args.input}, {args.steps} steps x {args.repeats} rounds, {args.clock} clock"
    )
    print(
        "# ratios: median over rounds of (method time / baseline time in the same round), "
        "[25th-75th percentile]"
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
            # reference only: the same floor through the per-task decode path (cheaper for MMoE, whose
            # batched forward makes every task's backward pass differentiate all T gates)
            fns["floor_decode"] = floor_step(build(kind, tasks, args.input, dev), tasks, x, targets, decode=True)
            for name in [*WEIGHTINGS.names(), *VARIANTS]:
                if name == "equal" or not wanted(name):
                    continue
                w = make_weighting(name, tasks)
                fns[f"w:{name}"] = trainer_step(build(kind, tasks, args.input, dev), tasks, x, targets, weighting=w)
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
                if not wanted(name):
                    continue
                for target in ("parameters", "representation"):
                    a = AGGREGATORS.build(name, tasks=tasks)
                    key = f"a:{name}" + ("@rep" if target == "representation" else "")
                    fns[key] = trainer_step(
                        build(kind, tasks, args.input, dev), tasks, x, targets, aggregator=a, target=target
                    )
            samples = sample_interleaved(
                fns,
                steps=args.steps,
                repeats=args.repeats,
                warmup=args.warmup,
                device=dev,
                clock=time.process_time if args.clock == "cpu" else time.perf_counter,
            )
            by_equal, by_floor = paired_ratios(samples, "equal"), paired_ratios(samples, "floor")
            eq, fl = statistics.median(samples["equal"]), statistics.median(samples["floor"])
            m, lo, hi = by_equal["floor"]
            md, lod, hid = by_floor["floor_decode"]
            print(
                f"\n### {kind}, T = {T}: equal {1e3 * eq:.2f} ms/step, floor {1e3 * fl:.2f} ms/step "
                f"(floor / equal = {m:.2f}x [{lo:.2f}-{hi:.2f}]; the floor through decode(encode(x)): "
                f"{md:.2f}x [{lod:.2f}-{hid:.2f}] of the floor)\n"
            )
            by_floor_dec = paired_ratios(samples, "floor_decode")
            print("| method | gradient w.r.t. | ms/step | / equal | / floor | / floor (decode) | target | met |")
            print("|---|---|---:|---:|---:|---:|---|:-:|")
            for key, values in samples.items():
                if key in ("equal", "floor", "floor_decode"):
                    continue
                kind_, name = key.split(":")
                rep = name.endswith("@rep")
                name = name.removesuffix("@rep")
                grad_based = kind_ == "a" or make_weighting(name, tasks).requires_gradients
                wrt, goal, limit = targets_for(rep, grad_based, T)
                ratio = by_floor[key][0] if goal.endswith("floor") else by_equal[key][0]
                met = "" if not goal else ("yes" if ratio <= limit else "**no**")
                re, rf, rd = by_equal[key], by_floor[key], by_floor_dec[key]
                print(
                    f"| {name} | {wrt} | {1e3 * statistics.median(values):.2f} | "
                    f"{re[0]:.2f}x [{re[1]:.2f}-{re[2]:.2f}] | {rf[0]:.2f}x [{rf[1]:.2f}-{rf[2]:.2f}] | "
                    f"{rd[0]:.2f}x | {goal} | {met} |"
                )


if __name__ == "__main__":
    main()
