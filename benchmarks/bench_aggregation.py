"""Time of one aggregation step ``[T, P]`` Jacobian -> ``[P]`` for every registered aggregator.

Only the combination is timed (the Jacobian is given): the part an aggregator adds on top of
the ``T`` backward passes. Methods that solve a ``T x T`` problem pay one device-to-host copy
of the Gramian; the others stay on the device.

    python benchmarks/bench_aggregation.py [--device cuda] [--tasks 4] [--params 1000000]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from _timing import sample_interleaved
from mtlkit import Task
from mtlkit.aggregation import AGGREGATORS
from mtlkit.state import TrainState


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--clock", choices=["wall", "cpu"], default="wall", help="wall time or process CPU time (busy machines)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    tasks = [Task(name=f"t{i}", kind="regression") for i in range(args.tasks)]
    gen = torch.Generator().manual_seed(0)
    J = torch.randn(args.tasks, args.params, generator=gen, dtype=dtype).to(args.device)
    J[1] = -0.5 * J[0] + J[1]  # some conflict, so the projection methods have work to do
    state = TrainState(generator=torch.Generator().manual_seed(0))
    aggs = {name: AGGREGATORS.build(name, tasks=tasks).to(args.device) for name in AGGREGATORS.names()}
    fns = {name: (lambda a=a: a.aggregate(J, state=state)) for name, a in aggs.items()}
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    samples = sample_interleaved(
        fns, steps=args.steps, repeats=args.repeats, warmup=2, device=args.device, clock=clock
    )
    times = {k: statistics.median(v) for k, v in samples.items()}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(
        f"T={args.tasks} P={args.params:,} {args.dtype} on {args.device} ({where}), {torch.get_num_threads()} threads, "
        f"{args.clock} clock"
    )
    base = times["mean"]
    print(f"{'aggregator':<12} {'ms/step':>9} {'x mean':>8}")
    for name, t in sorted(times.items(), key=lambda kv: kv[1]):
        print(f"{name:<12} {t * 1e3:9.3f} {t / base:8.1f}")


if __name__ == "__main__":
    main()
