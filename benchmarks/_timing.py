"""Timing helpers shared by the benchmarks: interleaved repeats, median of per-step times."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], None]], *, steps: int, repeats: int, warmup: int, device: str = "cpu"
) -> dict[str, float]:
    """Median seconds per call of each function. Variants run round-robin so that machine drift
    (other load, frequency scaling) hits them alike."""
    samples = time_interleaved_samples(fns, steps=steps, repeats=repeats, warmup=warmup, device=device)
    return {k: statistics.median(v) for k, v in samples.items()}


def time_interleaved_samples(
    fns: dict[str, Callable[[], None]], *, steps: int, repeats: int, warmup: int, device: str = "cpu"
) -> dict[str, list[float]]:
    """Seconds per call of each function in every round (``repeats`` values each), the variants
    run round-robin; sample ``i`` of every variant comes from the same round, so per-round ratios
    between variants cancel most of the machine's drift."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync(device)
            samples[name].append((time.perf_counter() - t0) / steps)
    return samples


def sample_interleaved(
    fns: dict[str, Callable[[], None]],
    *,
    steps: int,
    repeats: int,
    warmup: int,
    device: str = "cpu",
    seed: int = 0,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds per call of each function, one sample per round (``repeats`` rounds).

    Every round runs each function ``steps`` times, in a fresh random order (seeded), so that
    neither drift nor a fixed neighbour (caches, allocator state) favours one variant. Compare
    variants by the per-round ratios (:func:`paired_ratios`): both samples of a pair come from
    the same round, so slow phases of a shared machine cancel out. ``clock`` is wall time by
    default; ``time.process_time`` (CPU time of the process) ignores the time the process waits
    for a core on a machine busy with other work (use it with one thread).
    """
    import random

    rng = random.Random(seed)
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    names = list(fns)
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        rng.shuffle(names)
        for name in names:
            fn = fns[name]
            sync(device)
            t0 = clock()
            for _ in range(steps):
                fn()
            sync(device)
            samples[name].append((clock() - t0) / steps)
    return samples


def paired_ratios(samples: dict[str, list[float]], base: str) -> dict[str, tuple[float, float, float]]:
    """``(median, 25th, 75th percentile)`` of each variant's per-round time over ``base``'s."""
    out = {}
    for name, values in samples.items():
        ratios = sorted(v / b for v, b in zip(values, samples[base]))
        if len(ratios) >= 2:
            q1, _, q3 = statistics.quantiles(ratios, n=4, method="inclusive")
        else:
            q1 = q3 = ratios[0]
        out[name] = (statistics.median(ratios), q1, q3)
    return out
