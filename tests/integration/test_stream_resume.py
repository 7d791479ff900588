"""``kill -9`` in the middle of a streamed epoch, then resume: the parameters and history of the
uninterrupted run, with the resumed epoch starting at its batch (``set_start``), not replaying reads.

Three Parquet files of uneven sizes and uneven row groups, a shuffle buffer smaller than any file;
the kill comes at a step whose shuffle window lies inside the second file of the epoch's fragment
order, with 0 and 2 DataLoader workers.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import torch

from mtlkit.data.stream_loader import StreamLoader
from mtlkit.training.checkpoint import load_checkpoint

REPO = Path(__file__).resolve().parents[2]
BATCH, BUFFER, EVERY, EPOCHS = 40, 80, 2, 2
# rows per file and its Parquet row-group size: 260 = 150 + 110, 410 = 3 x 130 + 20, 180 = 100 + 80
FILES = [(260, 150), (410, 130), (180, 100)]

SCRIPT = """
import os, signal, sys
from pathlib import Path
import torch
import mtlkit
from mtlkit.data.streaming import tabular_stream
from mtlkit.models import EmbeddingFrontEnd, mmoe

TASKS = {
    "ctr": {"column": "click", "kind": "binary"},
    "cvr": {"column": "conversion", "kind": "binary"},
    "device": {"column": "device", "kind": "multiclass"},
}

def splits(data, workers):
    return tabular_stream(train=data, tasks=TASKS, categorical=["user_id", "item_id", "position"],
                          numeric=["price", "user_activity"], shuffle_buffer=80, num_workers=workers)

class Kill:
    def __init__(self, step): self.step = step
    def watch(self, data): pass
    def log_step(self, step, result):
        if step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)
    def log_epoch(self, record, model): pass
    def flush(self): pass

def trainer(s, logger=None):
    torch.manual_seed(0)
    model = mmoe(None, s.tasks, num_experts=2, expert_dims=(8,), tower_dims=(4,), dropout=0.1,
                 input_layer=lambda: EmbeddingFrontEnd(s.input_spec, 3))
    return mtlkit.Trainer(model, s.tasks, weighting=mtlkit.weighting.UncertaintyWeighting(s.tasks),
                          optimizer=lambda p: torch.optim.Adam(p, lr=3e-3), progress=False, device="cpu",
                          seed=4, logger=logger)

if __name__ == "__main__":
    data, ck, workers, kill, every = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    torch.set_num_threads(1)
    s = splits(data, workers)
    trainer(s, Kill(kill)).fit(s.train, epochs=2, batch_size=40, checkpoint=ck, checkpoint_every=every)
"""


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from mtlkit.data.impressions import impression_log

    root = tmp_path_factory.mktemp("resume")
    impression_log(root / "src", sum(n for n, _ in FILES), shard_rows=10_000, seed=5)
    table = pq.read_table(next((root / "src").glob("*.parquet")))
    out, lo = root / "data", 0
    out.mkdir()
    for i, (rows, group) in enumerate(FILES):
        pq.write_table(table.slice(lo, rows), out / f"part-{i}.parquet", row_group_size=group)
        lo += rows
    return out


def _kill_batch(loader: StreamLoader, epoch: int) -> int:
    """A batch ``k`` of ``epoch`` whose shuffle window(s) lie inside the second file of the epoch's
    fragment order, such that ``k`` steps into the epoch (plus the epochs before) is a checkpoint step."""
    layout = loader.layout(epoch)
    frags = loader.stream.fragments
    files: list[int] = []
    for f in layout.order.tolist():
        if int(frags.file[f]) not in files:
            files.append(int(frags.file[f]))
    second = files[1]

    def inside(k: int) -> bool:
        lo, hi = layout.batch_bounds(k)
        w0, w1 = lo // layout.window_rows, (hi - 1) // layout.window_rows
        pieces = [p for w in range(w0, w1 + 1) for p in layout.pieces(w)]
        return all(int(frags.file[p.fragment]) == second for p in pieces)

    for k in range(2, layout.steps - 1):
        if inside(k) and (epoch * layout.steps + k) % EVERY == 0:
            return k
    raise AssertionError("no batch inside the second file: change FILES")


def _expected_reads(loader: StreamLoader, epoch: int, k: int) -> int:
    """Row groups a 0-worker reader decodes for the epoch from batch ``k`` on (one per change of fragment)."""
    layout = loader.layout(epoch)
    first = layout.window_of_batch(k)[0]
    frags = [p.fragment for w in range(first, layout.num_windows) for p in layout.pieces(w)]
    return sum(1 for i, f in enumerate(frags) if i == 0 or f != frags[i - 1])


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_kill_9_inside_the_second_file_then_resume_gives_the_uninterrupted_run(
    shards: Path, tmp_path: Path, workers: int, monkeypatch: pytest.MonkeyPatch, one_thread
) -> None:
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(SCRIPT))
    made: dict[str, Any] = runpy.run_path(str(script), run_name="stream_resume")
    splits = made["splits"](shards, workers)
    assert len(splits.train.fragments.sizes) == 8 and splits.train.num_rows == 850
    probe = splits.train.loader(splits.tasks, BATCH, seed=4)
    steps = len(probe)
    k = _kill_batch(probe, 1)
    kill = steps + k + 1  # the step that trains batch k of epoch 1; the checkpoint before it has k steps

    ck = tmp_path / "ck.pt"
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    args = [sys.executable, str(script), str(shards), str(ck), str(workers), str(kill), str(EVERY)]
    killed = subprocess.run(args, env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    saved = load_checkpoint(ck)
    assert saved["step"] == kill - 1
    assert (saved["position"]["epoch"], saved["position"]["steps"]) == (1, k)

    full = made["trainer"](splits)
    full.fit(splits.train, epochs=EPOCHS, batch_size=BATCH)

    starts: list[int] = []
    set_start = StreamLoader.set_start
    monkeypatch.setattr(StreamLoader, "set_start", lambda self, i: starts.append(i) or set_start(self, i))
    reads: list[int] = []
    read_group = pq.ParquetFile.read_row_group
    monkeypatch.setattr(
        pq.ParquetFile,
        "read_row_group",
        lambda self, i, *a, **kw: reads.append(i) or read_group(self, i, *a, **kw),
    )
    resumed = made["trainer"](splits)
    resumed.fit(splits.train, epochs=EPOCHS, batch_size=BATCH, resume=ck)
    assert starts == [k]  # the resumed epoch started at batch k through set_start
    if workers == 0:  # (with workers the reads happen in the worker processes)
        assert len(reads) == _expected_reads(probe, 1, k) < _expected_reads(probe, 1, 0)

    assert resumed.step == full.step == EPOCHS * steps
    for (name, x), y in zip(full.model.named_parameters(), resumed.model.parameters()):
        scale = x.abs().max().clamp_min(1e-12)
        assert ((x - y).abs().max() / scale).item() <= 1e-6, name
    for x, y in zip(full.weighting.parameters(), resumed.weighting.parameters()):
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-7)
    assert len(resumed.history) == len(full.history) == EPOCHS
    for mine, want in zip(resumed.history, full.history):
        for part in ("train", "weights"):
            for task, v in want[part].items():
                assert mine[part][task] == pytest.approx(v, rel=1e-6), (part, task)
