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
