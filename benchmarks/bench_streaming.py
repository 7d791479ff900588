"""Streaming against in-memory tabular data (issue 13 §6): memory, rows/s, data wait, census AUCs, CLI.

The data: the synthetic impression log (``mtlkit generate impressions``, seed 0, 1M-row shards,
250k for the 1M log) with 1M, 5M and 20M rows, found under ``--data-dir`` as ``log1m``,
``log5m``, ``log20m`` (generated there when absent). The model: ESMM over MMoE (4 experts of
[64], towers [32], embedding backbone of width 8) on ``user_id``, ``item_id``, ``device``
(categorical) and ``price``, ``user_activity``, ``position`` (numeric), Adam lr 1e-3, batch 2048,
one torch thread in the main process.

ESMM's tasks over the log: ``ctr`` (the ``click`` column, logits, trained), ``ctcvr``
(click-and-convert over all impressions, a probability, trained) and ``cvr`` (the ``conversion``
column, labelled on clicks only, a probability, evaluation only). ``tabular`` / ``tabular_stream``
declare a task per label column, always with logits, and the log has no click-and-convert
column, so the script declares two columns (``ctr`` = click, ``cvr`` = conversion), builds
ESMM's three tasks itself and derives the ``ctcvr`` target per batch
(``ctr * conversion``, 0 where not clicked) in a thin wrapper around the training source (the
same wrapper for both paths). ``watch_time`` does not compose with ESMM (its tasks are
ctr/cvr/ctcvr only); the CLI runs train MMoE on click, conversion and watch_time instead.

Every measurement runs in its own process; the parent samples the resident memory of that
process and all its descendants (DataLoader workers, torchrun ranks) every 0.1 s from /proc
(sum of RSS, and sum of PSS, which counts shared pages once) and reports the peak.

    python benchmarks/bench_streaming.py [--data-dir DIR] [--parts memory,throughput,census,cli,resume]
        [--steps-20m N] [--memory-runs log1m,log20m-fit1m,...] [--rounds 3] [--census-seeds 3]
        [--census-epochs 2] [--cli-log log20m] [--json OUT]

Parts: ``memory`` (peak memory, streaming at 1M/5M/20M rows and with ``fit_rows`` at 20M,
in-memory at 1M/5M), ``throughput`` (1M rows, in-memory vs streaming with 0 and 1 workers,
interleaved rounds), ``census`` (census-income as Parquet, test AUCs of both paths over seeds;
skipped when the data is absent), ``cli`` (``mtlkit run`` and ``torchrun --nproc_per_node=2``
on ``--cli-log``, one epoch), ``resume`` (kill -9 of a streamed CLI run, ``--resume``, the
parameters against the uninterrupted run's). Results in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
CATEGORICAL = ["user_id", "item_id", "device"]
NUMERIC = ["price", "user_activity", "position"]
LOG_TASKS = {"ctr": {"column": "click", "kind": "binary"}, "cvr": {"column": "conversion", "kind": "binary"}}
MODEL = {"name": "esmm", "base": {"name": "mmoe", "num_experts": 4, "expert_dims": [64], "tower_dims": [32]}}
BACKBONE = {"name": "embedding", "embedding_dim": 8}
SIZES = {"log1m": (1_000_000, 250_000), "log5m": (5_000_000, 1_000_000), "log20m": (20_000_000, 1_000_000)}
PAGE = os.sysconf("SC_PAGE_SIZE")


# ============================================================================ memory of a process tree
def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += _children(p)
    return pids


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (OSError, IndexError, ValueError):
        return 0


def _pss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class TreeMemory:
    """Peak RSS (sum over the tree) and peak PSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid, self.interval = pid, interval
        self.peak_rss = self.peak_pss = 0
        self.peak_procs = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = tree(self.pid)
            self.peak_rss = max(self.peak_rss, sum(_rss(p) for p in pids))
            self.peak_pss = max(self.peak_pss, sum(_pss(p) for p in pids))
            self.peak_procs = max(self.peak_procs, len(pids))
            self._stop.wait(self.interval)

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        return {"peak_rss_mb": self.peak_rss / 2**20, "peak_pss_mb": self.peak_pss / 2**20, "procs": self.peak_procs}


def run_measured(cmd: Sequence[str], *, env: dict[str, str] | None = None, timeout: float | None = None,
                 kill_after: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Run ``cmd``, sample its tree's memory; the last ``RESULT {json}`` line of its stdout is parsed."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    mem = TreeMemory(proc.pid)
    killed = False
    try:
        if kill_after is not None:
            try:
                proc.wait(timeout=kill_after)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                killed = True
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise RuntimeError(f"timed out: {' '.join(cmd)}\n{err[-3000:]}") from None
    finally:
        memory = mem.stop()
    result: dict[str, Any] = {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "killed": killed, **memory}
    if proc.returncode != 0 and not killed:
        raise RuntimeError(f"failed ({proc.returncode}): {' '.join(cmd)}\n{err[-4000:]}")
    for line in out.splitlines():
        if line.startswith("RESULT "):
            result.update(json.loads(line[7:]))
    result["stdout_tail"] = out[-600:]
    result["resume_lines"] = [x for x in (out + err).splitlines() if "resum" in x.lower()][:5]
    return result


def child(job: dict[str, Any], **kw: Any) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return run_measured([sys.executable, str(HERE), "--child", json.dumps(job)], env=env, **kw)


# ============================================================================ ESMM over the log's columns
def esmm_tasks() -> tuple[Any, ...]:
    from mtlkit.tasks import Task

    return (
        Task(name="ctr", kind="binary"),
        Task(name="ctcvr", kind="binary", logits=False),
        Task(name="cvr", kind="binary", logits=False, train=False),
    )


class Funnel:
    """Training batches of ``inner`` with the ``ctcvr`` target added (``ctr * cvr``, 0 off clicks),
    at most ``steps`` of them per epoch; times how long each ``next()`` on the data blocks."""

    def __init__(self, inner: Any, steps: int | None) -> None:
        self.inner, self.steps = inner, steps
        self.wait = 0.0
        self.rows = 0
        self.batches = 0
        self.first = self.last = None
        self.cpu_first = self.cpu_last = 0.0

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.inner, "set_epoch"):
            self.inner.set_epoch(epoch)

    def set_start(self, k: int) -> None:
        self.inner.set_start(k)

    def __len__(self) -> int:
        n = len(self.inner)
        return n if self.steps is None else min(n, self.steps)

    def __iter__(self) -> Iterator[Any]:
        import torch

        it = iter(self.inner)
        t = time.perf_counter()
        if self.first is None:
            self.first, self.cpu_first = t, time.process_time()
        for _ in range(len(self)):
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                break
            self.wait += time.perf_counter() - t0
            ctr, cvr = batch.targets["ctr"], batch.targets["cvr"]
            batch.targets["ctcvr"] = torch.where(ctr > 0.5, torch.nan_to_num(cvr, nan=0.0), torch.zeros_like(ctr))
            self.rows += int(ctr.shape[0])
            self.batches += 1
            yield batch
        self.last, self.cpu_last = time.perf_counter(), time.process_time()
        close = getattr(it, "close", None)
        if close is not None:
            close()


def _source(train: Any, data_tasks: Sequence[Any], steps: int | None) -> Any:
    from mtlkit.training.source import TrainSource, as_source

    inner = as_source(train)

    class FunnelSource(TrainSource):
        funnel: Funnel | None = None

        def loader(self, tasks: Any, batch_size: int, *, seed: int, num_replicas: int = 1, rank: int = 0) -> Any:
            loader = inner.loader(data_tasks, batch_size, seed=seed, num_replicas=num_replicas, rank=rank)
            self.funnel = Funnel(loader, steps)
            return self.funnel

        def task_datasets(self, tasks: Any, *, schedule: str) -> Any:
            raise NotImplementedError

    return FunnelSource()


def job_train(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from mtlkit import Trainer
    from mtlkit.config.build import build_model
    from mtlkit.data.streaming import tabular_stream
    from mtlkit.data.tabular import tabular

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    common = {"tasks": LOG_TASKS, "categorical": CATEGORICAL, "numeric": NUMERIC,
              "max_categories": job.get("max_categories")}  # fmt: skip
    if job["path"] == "stream":
        splits = tabular_stream(train=job["train"], shuffle_buffer=job.get("shuffle_buffer", 65_536),
                                num_workers=job["workers"], fit_rows=job.get("fit_rows"), **common)  # fmt: skip
    else:
        splits = tabular(train=job["train"], **common)
    build_s = time.perf_counter() - t0
    tasks = esmm_tasks()
    torch.manual_seed(0)
    model = build_model(MODEL, replace(splits, tasks=tasks), BACKBONE)
    source = _source(splits.train, splits.tasks, job.get("steps"))
    trainer = Trainer(model, tasks, progress=False, seed=0)
    trainer.fit(source, epochs=1, batch_size=job["batch_size"])
    f = source.funnel
    loop_s = f.last - f.first
    import resource

    workers = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = f.cpu_last - f.cpu_first
    worker_cpu_s = workers.ru_utime + workers.ru_stime  # DataLoader workers (joined when the epoch ends)

    return {
        "rows_in_split": len(splits.train),
        "build_s": build_s,
        "loop_s": loop_s,
        "rows": f.rows,
        "steps": f.batches,
        "rows_per_s": f.rows / loop_s,
        "wait_s": f.wait,
        "wait_share": f.wait / loop_s,
        "cpu_s": cpu_s,
        "worker_cpu_s": worker_cpu_s,
        "rows_per_cpu_s": f.rows / (cpu_s + worker_cpu_s),
        "vocab": {c: len(splits.preprocessor.vocabularies[c]) for c in CATEGORICAL}
        if hasattr(splits.preprocessor, "vocabularies") else None,
        "self_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }  # fmt: skip


# ============================================================================ census-income
def census_parquet(out: Path, shards: int = 4) -> dict[str, Any]:
    """census-income (group 1) as Parquet: train shards, the whole training file, the test file."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtlkit.data import census

    train, test, _ = census.read_census(os.environ.get("MTLKIT_DATA", "/work/shared/data"))
    removed = ("income_50k", "marital_stat")
    categorical = [c for c in census.COLUMNS if c not in census.NUMERIC_COLUMNS + census.DROPPED_COLUMNS + removed]
    numeric = list(census.NUMERIC_COLUMNS)

    def table(cols: dict[str, Any]) -> pa.Table:
        data: dict[str, Any] = {c: cols[c].strings() for c in categorical}
        for c in numeric:
            data[c] = cols[c].value_floats(column=c, source="census")[cols[c].codes]
        labels = census._labels(cols, 1, False)
        for name, y in labels.items():
            data[name] = np.asarray(y, dtype=np.float64)
        return pa.table(data)

    out.mkdir(parents=True, exist_ok=True)
    tr = table(train)
    (out / "train").mkdir(exist_ok=True)
    n = tr.num_rows
    for i in range(shards):
        lo, hi = i * n // shards, (i + 1) * n // shards
        pq.write_table(tr.slice(lo, hi - lo), out / "train" / f"part-{i:05d}.parquet", row_group_size=16_384)
    pq.write_table(tr, out / "train_all.parquet")
    pq.write_table(table(test), out / "test.parquet")
    return {"categorical": categorical, "numeric": numeric, "train_rows": n}


def job_census(job: dict[str, Any]) -> dict[str, Any]:
    import torch

    from mtlkit import Trainer
    from mtlkit.config.build import build_model
    from mtlkit.data.streaming import tabular_stream
    from mtlkit.data.tabular import tabular

    torch.set_num_threads(1)
    d = Path(job["dir"])
    tasks = {"income": {"column": "income", "kind": "binary"},
             "never_married": {"column": "never_married", "kind": "binary"}}  # fmt: skip
    common = {"tasks": tasks, "categorical": job["categorical"], "numeric": job["numeric"],
              "test": str(d / "test.parquet")}  # fmt: skip
    if job["path"] == "stream":
        splits = tabular_stream(train=str(d / "train"), num_workers=job["workers"], **common)
    else:
        splits = tabular(train=str(d / "train_all.parquet"), **common)
    torch.manual_seed(job["seed"])
    model = build_model({"name": "mmoe", "num_experts": 8, "expert_dims": [16], "tower_dims": [8]}, splits,
                        {"name": "embedding", "embedding_dim": 4})  # fmt: skip
    trainer = Trainer(model, splits.tasks, progress=False, seed=job["seed"])
    t0 = time.perf_counter()
    trainer.fit(splits.train, epochs=job["epochs"], batch_size=1024)
    fit_s = time.perf_counter() - t0
    metrics = trainer.evaluate(splits.test)
    return {"auc": {t: metrics[t]["auc"] for t in tasks}, "fit_s": fit_s}


# ============================================================================ the parent
def ensure_logs(data_dir: Path, names: Sequence[str]) -> dict[str, Path]:
    out = {}
    for name in names:
        d = data_dir / name
        if not (d / "_log.json").is_file():
            from mtlkit.data.impressions import impression_log

            rows, shard = SIZES[name]
            print(f"generating {d} ({rows:,} rows)", flush=True)
            impression_log(d, rows, shard_rows=shard, seed=0)
        out[name] = d
    return out


def one_file(log: Path, tmp: Path) -> Path:
    """The log's shards as one Parquet file (for ``tabular``, which reads one file per split)."""
    import pyarrow.parquet as pq

    out = tmp / f"{log.name}.parquet"
    if not out.exists():
        files = sorted(log.glob("*.parquet"))
        schema = pq.read_schema(files[0])
        with pq.ParquetWriter(out, schema) as w:
            for f in files:
                pf = pq.ParquetFile(f)
                for i in range(pf.num_row_groups):
                    w.write_table(pf.read_row_group(i))
    return out


def fmt_mb(x: float) -> str:
    return f"{x:,.0f}"


def part_memory(logs: dict[str, Path], tmp: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    rows = res.setdefault("memory", {})
    runs = [(name, None) for name in ("log1m", "log5m", "log20m")] + [("log20m", 1_000_000)]
    for name, fit_rows in runs:
        if args.memory_runs and name + ("-fit1m" if fit_rows else "") not in args.memory_runs.split(","):
            continue
        steps = args.steps_20m if name == "log20m" else None
        job = {"kind": "train", "path": "stream", "train": str(logs[name]), "workers": 1, "batch_size": 2048,
               "max_categories": args.max_categories, "steps": steps, "fit_rows": fit_rows}  # fmt: skip
        if fit_rows:
            name += "-fit1m"
        rows[f"stream {name}"] = r = child(job)
        print(f"memory stream {name}: {r['peak_rss_mb']:.0f} MB RSS, {r['peak_pss_mb']:.0f} MB PSS, "
              f"{r['steps']} steps, {r['rows_per_s']:.0f} rows/s, build {r['build_s']:.1f}s", flush=True)  # fmt: skip
    for name in ("log1m", "log5m"):
        if args.memory_runs and f"memory-{name}" not in args.memory_runs.split(","):
            continue
        job = {"kind": "train", "path": "memory", "train": str(one_file(logs[name], tmp)), "batch_size": 2048,
               "max_categories": args.max_categories, "steps": None}  # fmt: skip
        rows[f"memory {name}"] = r = child(job)
        print(f"memory in-memory {name}: {r['peak_rss_mb']:.0f} MB RSS, {r['peak_pss_mb']:.0f} MB PSS, "
              f"{r['steps']} steps, {r['rows_per_s']:.0f} rows/s, build {r['build_s']:.1f}s", flush=True)  # fmt: skip


def part_throughput(logs: dict[str, Path], tmp: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    """1M rows, one epoch each, interleaved rounds: in-memory, streaming with 0 and 1 workers."""
    variants = {
        "memory": {"path": "memory", "train": str(one_file(logs["log1m"], tmp))},
        "stream w0": {"path": "stream", "train": str(logs["log1m"]), "workers": 0},
        "stream w1": {"path": "stream", "train": str(logs["log1m"]), "workers": 1},
    }
    samples: dict[str, list[dict[str, Any]]] = {k: [] for k in variants}
    for rnd in range(args.rounds):
        for name, v in variants.items():
            job = {"kind": "train", "batch_size": 2048, "max_categories": args.max_categories, "steps": None, **v}
            r = child(job)
            samples[name].append(r)
            print(f"throughput round {rnd} {name}: {r['rows_per_s']:.0f} rows/s, wait {100 * r['wait_share']:.1f} %, "
                  f"loop {r['loop_s']:.1f}s, build {r['build_s']:.1f}s, load {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    res["throughput"] = samples


def part_census(args: argparse.Namespace, res: dict[str, Any], tmp: Path) -> None:
    root = Path(os.environ.get("MTLKIT_DATA", "/work/shared/data")) / "census-income"
    if not root.is_dir():
        print(f"census: {root} absent, skipped")
        res["census"] = "skipped (no census-income data)"
        return
    d = tmp / "census"
    meta = census_parquet(d)
    out: dict[str, list[dict[str, Any]]] = {"memory": [], "stream": []}
    for seed in range(args.census_seeds):
        for path in ("memory", "stream"):
            job = {"kind": "census", "path": path, "dir": str(d), "seed": seed, "epochs": args.census_epochs,
                   "workers": 1, **meta}  # fmt: skip
            r = child(job)
            out[path].append(r)
            print(f"census seed {seed} {path}: {r['auc']} fit {r['fit_s']:.0f}s", flush=True)
    res["census"] = out


CLI_CONFIG = """\
name: stream-{log}
seed: 0
data:
  name: tabular
  streaming: true
  train: {train}
  test: {test}
  categorical: [user_id, item_id, device]
  numeric: [price, user_activity, position]
  max_categories: {max_categories}
  num_workers: {workers}
  tasks:
    click: {{column: click, kind: binary}}
    conversion: {{column: conversion, kind: binary}}
    watch_time: {{column: watch_time, kind: regression}}
backbone: {{name: embedding, embedding_dim: 8}}
model: {{name: mmoe, num_experts: 4, expert_dims: [64], tower_dims: [32]}}
optimizer: {{name: adam, lr: 0.001}}
trainer:
  epochs: 1
  batch_size: {batch_size}
  device: cpu
{extra}"""


def write_cli_config(path: Path, log: Path, test: Path, *, batch_size: int, workers: int, max_categories: int,
                     extra: str = "") -> Path:  # fmt: skip
    path.write_text(CLI_CONFIG.format(log=log.name, train=log, test=test, batch_size=batch_size, workers=workers,
                                      max_categories=max_categories, extra=extra))  # fmt: skip
    return path


def mtlkit_cmd(*a: str) -> list[str]:
    return [sys.executable, "-m", "mtlkit", *a]


def part_cli(logs: dict[str, Path], tmp: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    log = logs[args.cli_log]
    test = logs["log1m"] / "part-00000.parquet"  # 250k rows, evaluated at the end
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out: dict[str, Any] = {}
    cfg = write_cli_config(tmp / "cli.yaml", log, test, batch_size=2048, workers=1, max_categories=args.max_categories)
    r = run_measured(mtlkit_cmd("run", str(cfg), "--no-progress", "--out", str(tmp / "cli1")), env=env)
    out["mtlkit run"] = r
    print(f"cli mtlkit run {log.name}: rc {r['rc']}, {r['wall_s']:.0f}s, {r['peak_rss_mb']:.0f} MB RSS, "
          f"{r['peak_pss_mb']:.0f} MB PSS", flush=True)  # fmt: skip
    # two ranks: per-rank batch 1024 = the same global batch; one worker each
    cfg2 = write_cli_config(tmp / "cli2.yaml", log, test, batch_size=1024, workers=1, max_categories=args.max_categories)
    r = run_measured([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                      "-m", "mtlkit", "run", str(cfg2), "--no-progress", "--out", str(tmp / "cli2")], env=env)  # fmt: skip
    out["torchrun x2"] = r
    print(f"cli torchrun x2 {log.name}: rc {r['rc']}, {r['wall_s']:.0f}s, {r['peak_rss_mb']:.0f} MB RSS, "
          f"{r['peak_pss_mb']:.0f} MB PSS", flush=True)  # fmt: skip
    for name, d in (("mtlkit run", tmp / "cli1"), ("torchrun x2", tmp / "cli2")):
        runs = [p for p in d.iterdir() if p.is_dir()]
        out[name]["metrics"] = json.loads((runs[0] / "metrics.json").read_text())["metrics"] if runs else None
    res["cli"] = out


def part_resume(logs: dict[str, Path], tmp: Path, args: argparse.Namespace, res: dict[str, Any]) -> None:
    """kill -9 of a streamed CLI run (1M log, checkpoint every 20 steps) at about 45 % of its wall
    time, ``mtlkit run --resume``, then the final parameters against the uninterrupted run's."""
    from mtlkit.training.checkpoint import load_checkpoint

    log = logs["log1m"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cfg = write_cli_config(tmp / "resume.yaml", log, log / "part-00003.parquet", batch_size=2048, workers=1,
                           max_categories=args.max_categories, extra="  checkpoint_every_steps: 20\n")  # fmt: skip
    full = run_measured(mtlkit_cmd("run", str(cfg), "--no-progress", "--out", str(tmp / "full")), env=env)
    cut = run_measured(mtlkit_cmd("run", str(cfg), "--no-progress", "--out", str(tmp / "cut")), env=env,
                       kill_after=full["wall_s"] * 0.45)  # fmt: skip
    (run_dir,) = [p for p in (tmp / "cut").iterdir() if p.is_dir()]
    at_kill = load_checkpoint(run_dir)
    position = {k: v for k, v in at_kill.items() if isinstance(v, (int, float, str))}
    position.update({k: v for k, v in (at_kill.get("position") or {}).items() if isinstance(v, (int, float, str))})
    resumed = run_measured(mtlkit_cmd("run", "--resume", str(run_dir), "--no-progress"), env=env)
    (full_dir,) = [p for p in (tmp / "full").iterdir() if p.is_dir()]
    sa, sb = load_checkpoint(full_dir)["model"], load_checkpoint(run_dir)["model"]
    diff = max(float((sa[k].double() - sb[k].double()).abs().max()) for k in sa)
    scale = max(float(v.double().abs().max()) for v in sa.values())
    res["resume"] = {"full_s": full["wall_s"], "killed_at_s": full["wall_s"] * 0.45, "killed": cut["killed"],
                     "checkpoint_at_kill": position, "resume_s": resumed["wall_s"],
                     "resume_peak_pss_mb": resumed["peak_pss_mb"], "max_abs_param_diff": diff,
                     "max_abs_param": scale, "resume_said": resumed["resume_lines"]}  # fmt: skip
    print(f"resume: killed {cut['killed']} at {position}, max |param diff| {diff:.3g} (max |param| {scale:.3g})",
          flush=True)  # fmt: skip


# ============================================================================ report
def report(res: dict[str, Any]) -> None:
    print("\n## results")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, load {res['load']}")
    mem = res.get("memory")
    if mem:
        base = mem.get("stream log1m", {}).get("peak_pss_mb", float("nan"))
        print("| path | log | steps | rows/s | build s | peak RSS MB (sum over tree) | peak PSS MB | PSS vs stream 1M |")
        print("|---|---|---:|---:|---:|---:|---:|---:|")
        for k, r in mem.items():
            path, log = k.split()
            print(f"| {path} | {log} | {r['steps']} | {r['rows_per_s']:,.0f} | {r['build_s']:.1f} | "
                  f"{fmt_mb(r['peak_rss_mb'])} | {fmt_mb(r['peak_pss_mb'])} | {r['peak_pss_mb'] / base:.2f}x |")  # fmt: skip
    thr = res.get("throughput")
    if thr:
        print("| 1M rows, one epoch | rows/s median (rounds) | vs in-memory (per round) | data wait share | build s "
              "| rows per CPU s (main + workers) |")
        print("|---|---:|---:|---:|---:|---:|")
        for k, rs in thr.items():
            ratios = [r["rows_per_s"] / m["rows_per_s"] for r, m in zip(rs, thr["memory"])]
            print(f"| {k} | {statistics.median(r['rows_per_s'] for r in rs):,.0f} "
                  f"({', '.join(format(r['rows_per_s'], ',.0f') for r in rs)}) | "
                  f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f}) | "
                  f"{100 * statistics.median(r['wait_share'] for r in rs):.1f} % | "
                  f"{statistics.median(r['build_s'] for r in rs):.1f} | "
                  f"{statistics.median(r.get('rows_per_cpu_s', float('nan')) for r in rs):,.0f} |")  # fmt: skip
    cen = res.get("census")
    if isinstance(cen, dict):
        print("| census task | in-memory AUC | streaming AUC | stream - memory (per seed) |")
        print("|---|---:|---:|---:|")
        for t in cen["memory"][0]["auc"]:
            m = [r["auc"][t] for r in cen["memory"]]
            s = [r["auc"][t] for r in cen["stream"]]
            d = [b - a for a, b in zip(m, s)]

            def ms(v: list[float]) -> str:
                return f"{statistics.mean(v):.4f} ± {statistics.stdev(v) if len(v) > 1 else 0:.4f}"

            print(f"| {t} | {ms(m)} | {ms(s)} | {ms(d)} |")
    cli = res.get("cli")
    if cli:
        for k, r in cli.items():
            print(f"cli {k}: rc {r['rc']}, wall {r['wall_s']:.0f}s, peak RSS {r['peak_rss_mb']:.0f} MB, "
                  f"PSS {r['peak_pss_mb']:.0f} MB, procs {r['procs']}, metrics {r.get('metrics')}")  # fmt: skip
    if res.get("resume"):
        print("resume:", {k: v for k, v in res["resume"].items() if k != "stdout"})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data-dir", default="benchdata", help="holds log1m/log5m/log20m (generated when absent)")
    ap.add_argument("--parts", default="memory,throughput,census,cli")
    ap.add_argument("--steps-20m", type=int, default=None, help="steps of the 20M streaming memory run (default: an epoch)")
    ap.add_argument("--memory-runs", help="only these memory runs, e.g. log1m,log20m-fit1m,memory-log5m")
    ap.add_argument("--max-categories", type=int, default=100_000, help="vocabulary cap per categorical column")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the throughput runs")
    ap.add_argument("--census-seeds", type=int, default=3)
    ap.add_argument("--census-epochs", type=int, default=2)
    ap.add_argument("--cli-log", default="log20m")
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()
    if args.child:
        job = json.loads(args.child)
        fn = {"train": job_train, "census": job_census}[job.pop("kind")]
        print("RESULT " + json.dumps(fn(job)), flush=True)
        return
    parts = args.parts.split(",")
    need = ["log1m"] + (["log5m", "log20m"] if "memory" in parts else []) + ([args.cli_log] if "cli" in parts else [])
    logs = ensure_logs(Path(args.data_dir), list(dict.fromkeys(need)))
    res: dict[str, Any] = {"load": [], "parts": parts}
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        for part in parts:
            res["load"].append((part, "start", [round(x, 2) for x in os.getloadavg()]))
            if part == "memory":
                part_memory(logs, tmp, args, res)
            elif part == "throughput":
                part_throughput(logs, tmp, args, res)
            elif part == "census":
                part_census(args, res, tmp)
            elif part == "cli":
                part_cli(logs, tmp, args, res)
            elif part == "resume":
                part_resume(logs, tmp, args, res)
            res["load"].append((part, "end", [round(x, 2) for x in os.getloadavg()]))
            if args.json:
                Path(args.json).write_text(json.dumps(res, indent=1, default=str))
        shutil.rmtree(tmp, ignore_errors=True)
    report(res)


if __name__ == "__main__":
    main()
