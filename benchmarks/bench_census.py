"""census-income: load time (vectorised parser, cache) and MMoE training throughput with the share
of step time spent gathering batches.

Load: the plain path (``read_csv`` with the csv module, then ``TabularPreprocessor`` on the
strings, i.e. what a loader built on the existing helpers does) against mtlkit's census loader
without cache (vectorised parsing, coded preprocessing) and with a warm cache, in one run.

Training: the census-mmoe preset's MMoE (8 experts of 16 units, 8-unit towers, embeddings of
width 4) with Adam, batch 1024, on all 199,523 training rows. Timed interleaved: gathering one
batch from the shuffled whole-dataset tensors (``TensorBatchLoader``), one training step
(forward, losses, backward, optimizer: ``Trainer.train_step``) on a batch, and the two together
as the training loop runs them; plus one full epoch through ``Trainer.fit``.

    MTLKIT_DATA=/path/to/data python benchmarks/bench_census.py [--threads 2] [--skip-baseline]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import torch

from _timing import time_interleaved
from mtlkit.config.build import build_model
from mtlkit.data import Batch, TabularPreprocessor, TensorBatchLoader
from mtlkit.data.census import COLUMNS, NUMERIC_COLUMNS, census_income
from mtlkit.data.sources import read_csv
from mtlkit.training.trainer import Trainer


def plain_path(root: str) -> float:
    """Seconds to read both files with the csv module and preprocess the strings (group 1)."""
    started = time.perf_counter()
    folder = Path(root, "census-income")
    train = read_csv(folder / "census-income.data.bz2", header=False, names=COLUMNS, skipinitialspace=True)
    test = read_csv(folder / "census-income.test.gz", header=False, names=COLUMNS, skipinitialspace=True)
    categorical = [
        c for c in COLUMNS if c not in (*NUMERIC_COLUMNS, "instance_weight", "income_50k", "marital_stat")
    ]
    pre = TabularPreprocessor(categorical=categorical, numeric=NUMERIC_COLUMNS).fit(train)
    pre.transform(train)
    pre.transform(test)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--skip-baseline", action="store_true", help="do not time the plain csv path")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = os.environ.get("MTLKIT_DATA")
    if not root:
        raise SystemExit("set MTLKIT_DATA to the folder holding census-income/")
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {args.threads} threads")
    print(f"load average at start: {os.getloadavg()[0]:.1f}")

    # ------------------------------------------------------------------ load time
    cache_dir = tempfile.TemporaryDirectory(prefix="mtlkit-bench-cache-")  # removed at exit
    os.environ["MTLKIT_CACHE"] = cache_dir.name
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    census_income(path=root, cache=False)
    cold = time.perf_counter() - t
    rss_fast = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    census_income(path=root)  # fills the cache
    t = time.perf_counter()
    splits = census_income(path=root)
    warm = time.perf_counter() - t
    print(f"load, parse without cache: {cold:.2f} s (peak RSS +{(rss_fast - rss0) / 1024:.0f} MB)")
    print(f"load, warm cache:          {warm:.2f} s ({splits.info['load_seconds']:.2f} s reading, "
          f"{splits.info['preprocess_seconds']:.2f} s labels + preprocessing)")  # fmt: skip
    if not args.skip_baseline:
        plain = plain_path(root)
        rss_plain = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"load, plain csv + TabularPreprocessor: {plain:.2f} s (peak RSS {rss_plain / 1024:.0f} MB)")
        print(f"  speed-up: {plain / cold:.1f}x without cache, {plain / warm:.1f}x with a warm cache")

    # ------------------------------------------------------------------ training throughput
    torch.manual_seed(0)
    model = build_model(
        {"name": "mmoe", "num_experts": 8, "expert_dims": [16], "tower_dims": [8]},
        splits,
        {"name": "embedding", "embedding_dim": 4},
    )
    trainer = Trainer(model, splits.tasks, progress=False, device="cpu")
    loader = TensorBatchLoader(splits.train, args.batch, shuffle=True, seed=0)

    def stream() -> Iterator[Batch]:  # shuffled batches, epoch after epoch, as the trainer reads them
        epoch = 0
        while True:
            loader.set_epoch(epoch)
            yield from loader
            epoch += 1

    it = stream()
    fixed = next(it)

    def gather() -> None:
        next(it)

    def step() -> None:
        trainer.train_step(fixed)

    def both() -> None:
        trainer.train_step(next(it))

    times = time_interleaved(
        {"gather": gather, "step": step, "gather+step": both},
        steps=args.steps,
        repeats=args.repeats,
        warmup=3,
    )
    share = times["gather"] / times["gather+step"]
    print(f"batch {args.batch}: gather {times['gather'] * 1e3:.2f} ms, train step {times['step'] * 1e3:.2f} ms, "
          f"loop {times['gather+step'] * 1e3:.2f} ms per batch")  # fmt: skip
    print(f"data loading share of the training loop's time per batch (gather / loop): {share:.1%}")
    print(f"training throughput: {args.batch / times['gather+step']:,.0f} samples/s")
    t = time.perf_counter()
    trainer.fit(splits.train, epochs=trainer.epoch + 1, batch_size=args.batch)
    epoch_s = time.perf_counter() - t
    print(f"one epoch through Trainer.fit: {epoch_s:.1f} s = {len(splits.train) / epoch_s:,.0f} samples/s")
    print(f"load average at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
