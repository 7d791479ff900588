"""Loading a CSV through the ``tabular`` dataset against ``pyarrow.csv.read_csv`` of the same file
(issue 13 §1: target at most 1.5x).

The file: 270,000 rows x 7 columns of the synthetic impression log (``mtlkit.data.impression_log``,
seed 0): ``user_id``, ``item_id``, ``device`` (categorical), ``position``, ``price`` (numeric),
``click`` and ``conversion`` (binary tasks; conversion blank unless clicked), written once as CSV.
``tabular`` does everything a run needs before training: read, check, encode labels, fit and
apply the preprocessor, build the tensors. ``pyarrow.csv.read_csv`` only reads (types inferred).
Both run with the same pyarrow thread pool; timed interleaved, median of the repeats.

    python benchmarks/bench_loading.py [--rows 270000] [--csv PATH] [--repeats 7] [--threads 2]

``--csv PATH`` reuses a file (written by an earlier run with ``--keep PATH``), so another checkout
of mtlkit (e.g. the code before a change) can be timed on the same bytes.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import torch

from mtlkit.data.tabular import tabular

COLUMNS = ["user_id", "item_id", "device", "position", "price", "click", "conversion"]
TASKS = {
    "click": {"column": "click", "kind": "binary"},
    "conversion": {"column": "conversion", "kind": "binary"},
}


def write_csv(path: Path, rows: int) -> None:
    from mtlkit.data.impressions import impression_log

    with tempfile.TemporaryDirectory() as tmp:
        log = impression_log(Path(tmp) / "log", rows, shard_rows=rows, seed=0)
        table = pa.concat_tables([pq.read_table(f, columns=COLUMNS) for f in log.files])
    pacsv.write_csv(table, path)


def main() -> None:

    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=270_000)
    ap.add_argument("--csv", help="time this CSV (written by --keep) instead of generating one")
    ap.add_argument("--keep", help="write the generated CSV here and keep it")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2, help="pyarrow CPU threads and torch threads")
    args = ap.parse_args()
    pa.set_cpu_count(args.threads)
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    if args.csv:
        path = Path(args.csv)
    else:
        path = Path(args.keep) if args.keep else Path(tmp.name) / "impressions.csv"
        write_csv(path, args.rows)
    size = path.stat().st_size

    def read() -> None:
        pacsv.read_csv(path)

    def run_tabular() -> None:
        tabular(train=str(path), tasks=TASKS, categorical=COLUMNS[:3], numeric=COLUMNS[3:5])

    fns = {"pyarrow.csv.read_csv": read, "tabular": run_tabular}
    for fn in fns.values():  # warm-up: file cache, imports
        fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(args.repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in samples.items()}
    ratios = [t / r for t, r in zip(samples["tabular"], samples["pyarrow.csv.read_csv"])]
    splits = tabular(train=str(path), tasks=TASKS, categorical=COLUMNS[:3], numeric=COLUMNS[3:5])
    print(f"file: {path} ({size / 1e6:.1f} MB, {len(splits.train):,} rows x {len(COLUMNS)} columns)")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, threads {args.threads}, "
          f"pyarrow {pa.__version__}")  # fmt: skip
    print("| step | median s | ratio to read_csv |")
    print("|---|---:|---:|")
    for name, t in med.items():
        print(f"| {name} | {t:.3f} | {t / med['pyarrow.csv.read_csv']:.2f}x |")
    print(f"per-round ratio tabular / read_csv: median {statistics.median(ratios):.2f}x, "
          f"range {min(ratios):.2f}x-{max(ratios):.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
