"""Checkpoints: atomic and durable writes, clear errors for damaged or mismatched files, NaN/inf
detection at the step where it happens with the last good checkpoint kept."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import mtlkit
from mtlkit import Task
from mtlkit.data import Batch, MultiTaskDataset, synthetic_correlation
from mtlkit.errors import CheckpointError
from mtlkit.registries import MODELS
from mtlkit.training import Trainer, TrainingDivergedError, load_checkpoint, save_checkpoint
from mtlkit.training import checkpoint as ckpt_module
from mtlkit.training.checkpoint import state_mismatch
from mtlkit.training.divergence import DivergenceGuard

SRC = Path(mtlkit.__file__).resolve().parents[1]


def payload(tag: int, n: int = 10) -> dict[str, object]:
    return {"tag": tag, "values": torch.full((n,), float(tag))}


def temps(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.tmp"))


# ---------------------------------------------------------------------------------------------- atomic writes
def test_a_writer_failing_mid_write_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(payload(1), path)
    before = path.read_bytes()

    def broken_save(obj: object, fh) -> None:  # writes part of the bytes, then the process "dies"
        fh.write(before[: len(before) // 2])
        raise OSError("disk full")

    monkeypatch.setattr(ckpt_module.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(payload(2), path)
    assert path.read_bytes() == before
    assert load_checkpoint(path)["tag"] == 1
    assert temps(tmp_path) == []  # the half-written temp file was removed


KILLED_WRITER = textwrap.dedent(
    """
    import sys, torch
    sys.path.insert(0, {src!r})
    from mtlkit.training import save_checkpoint
    path = sys.argv[1]
    save_checkpoint({{"tag": 0, "values": torch.zeros(10)}}, path)
    print("ready", flush=True)
    tag = 0
    while True:  # large payloads, until killed
        tag += 1
        save_checkpoint({{"tag": tag, "values": torch.full((4_000_000,), float(tag))}}, path)
    """
)


def test_kill_9_during_a_write_leaves_a_complete_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    script = tmp_path / "writer.py"
    script.write_text(KILLED_WRITER.format(src=str(SRC)))
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        # kill while a temp file is being filled: the new checkpoint is half written
        while not any(p.stat().st_size > 0 for p in temps(tmp_path) if p.exists()):
            assert time.monotonic() < deadline, "the writer never started a temp file"
            time.sleep(0.001)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert temps(tmp_path), "the kill did not land during a write"
    data = load_checkpoint(path)  # the previous complete checkpoint, whichever it was
    assert torch.equal(data["values"], torch.full_like(data["values"], float(data["tag"])))
    # the leftover is ignored by readers and removed by the next successful write
    save_checkpoint(payload(99), path)
    assert temps(tmp_path) == []
    assert load_checkpoint(path)["tag"] == 99


def test_writes_are_fsynced_before_the_rename_and_the_folder_after(tmp_path: Path, monkeypatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        events.append("fsync-dir" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync-file")
        real_fsync(fd)

    def replace(a, b) -> None:
        events.append("replace")
        real_replace(a, b)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_checkpoint(payload(1), tmp_path / "ck.pt")
    if os.name == "posix" and os.path.isdir("/proc/self/fd"):
        assert events == ["fsync-file", "replace", "fsync-dir"]
    else:  # pragma: no cover
        assert events[:2] == ["fsync-file", "replace"]


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    path = save_checkpoint(payload(1), tmp_path / "ck.pt")
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


# ---------------------------------------------------------------------------------------------- read errors
def test_damaged_files_give_errors_that_name_the_file(tmp_path: Path) -> None:
    good = save_checkpoint(payload(1, 1000), tmp_path / "good.pt")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(256))
    foreign = tmp_path / "foreign.pt"
    torch.save({"format": "mtlkit-checkpoint", "when": __import__("datetime").date(2020, 1, 1)}, foreign)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    newer = tmp_path / "newer.pt"
    torch.save({"format": "mtlkit-checkpoint", "version": 99}, newer)

    cases = {
        empty: r"empty\.pt' is empty \(0 bytes\): it was not written completely",
        truncated: r"truncated\.pt' could not be read .*corrupt, truncated or not an mtlkit checkpoint",
        garbage: r"garbage\.pt' could not be read .*corrupt, truncated or not an mtlkit checkpoint",
        foreign: r"foreign\.pt' holds a Python object of type datetime\.date.*weights_only=True",
        other: r"other\.pt' is not an mtlkit checkpoint \(no 'mtlkit-checkpoint' marker\)",
        newer: r"newer\.pt' has format version 99, newer than this mtlkit understands \(2\)",
        tmp_path / "absent.pt": r"absent\.pt' does not exist",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(path)
    save_checkpoint(payload(5), tmp_path / "checkpoint.pt")
    assert load_checkpoint(tmp_path)["tag"] == 5  # a run directory holding checkpoint.pt


def test_state_mismatch_lists_shapes_missing_and_unexpected_entries() -> None:
    expected = {"a.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4), "b.weight": torch.zeros(2)}
    saved = {"a.weight": torch.zeros(8, 3), "a.bias": torch.zeros(4), "c.weight": torch.zeros(1)}
    assert state_mismatch(saved, expected) == (
        "'a.weight' has shape (8, 3) in the checkpoint but (4, 3) in the model; "
        "missing from the checkpoint: 'b.weight'; not in the model: 'c.weight'"
    )
    assert state_mismatch(expected, expected) is None
    many = {f"p{i}": torch.zeros(1) for i in range(5)}
    assert state_mismatch({}, many) == "missing from the checkpoint: 'p0', 'p1', 'p2' (and 2 more)"


# ---------------------------------------------------------------------------------------------- mismatches
@pytest.fixture
def data() -> MultiTaskDataset:
    return synthetic_correlation(256, 0.5, dim=10, seed=0)


def trainer(data: MultiTaskDataset, model: str = "mmoe", tasks=None, **kwargs) -> Trainer:
    tasks = tasks or data.tasks
    torch.manual_seed(0)
    params = {"num_experts": kwargs.pop("num_experts", 2)} if model == "mmoe" else {}
    net = MODELS.build(model, input_dim=10, tasks=tasks, **params)
    return Trainer(net, tasks, progress=False, device="cpu", **kwargs)


def test_mismatched_checkpoints_name_the_file_and_the_mismatch(data, tmp_path: Path) -> None:
    path = tmp_path / "run" / "checkpoint.pt"
    trainer(data).fit(data, epochs=1, batch_size=128, checkpoint=path)
    where = r"checkpoint '.*run/checkpoint\.pt'"
    renamed = tuple(Task(name=n, kind="regression") for n in ("a", "b"))
    with pytest.raises(
        CheckpointError,
        match=rf"{where} was written for tasks \['y1', 'y2'\], but this trainer has \['a', 'b'\]",
    ):
        trainer(data, tasks=renamed).load_checkpoint(path)
    with pytest.raises(
        CheckpointError,
        match=rf"{where} does not fit this model \(MMoE\): 'experts\..*' has shape \(2, .*\) in the checkpoint but \(3, .*\) in the model",
    ):
        trainer(data, num_experts=3).load_checkpoint(path)
    with pytest.raises(
        CheckpointError,
        match=rf"{where} does not fit this model: it holds the weights of a MMoE, and this model is a SharedBottom",
    ):
        trainer(data, model="shared_bottom").load_checkpoint(path)
    with pytest.raises(
        CheckpointError,
        match=rf"{where} was written by a different setup: optimizer 'Adam' in the checkpoint but 'SGD' here",
    ):
        trainer(data, optimizer=lambda p: torch.optim.SGD(p, lr=0.1)).load_checkpoint(path)
    with pytest.raises(
        CheckpointError,
        match=r"weighting 'EqualWeighting' in the checkpoint but 'UncertaintyWeighting' here.*Use the same model, optimizer",
    ):
        trainer(data, weighting=mtlkit.weighting.UncertaintyWeighting(data.tasks)).load_checkpoint(path)
    trainer(data).load_checkpoint(path)  # the matching setup loads
    # a checkpoint with an aggregator and a scheduler loads where they are not built (evaluation)
    pcgrad = mtlkit.aggregation.AGGREGATORS.build("pcgrad", tasks=data.tasks)
    step_lr = lambda opt: torch.optim.lr_scheduler.StepLR(opt, 1)  # noqa: E731
    trainer(data, aggregator=pcgrad, scheduler=step_lr).save_checkpoint(tmp_path / "agg.pt")
    trainer(data).load_checkpoint(tmp_path / "agg.pt")
    mgda = trainer(data, aggregator=mtlkit.aggregation.AGGREGATORS.build("mgda", tasks=data.tasks))
    with pytest.raises(CheckpointError, match="aggregator 'PCGrad' in the checkpoint but 'MGDA' here"):
        mgda.load_checkpoint(tmp_path / "agg.pt")


# ---------------------------------------------------------------------------------------------- NaN / inf
def test_divergence_guard_reports_the_first_bad_step_and_its_tasks() -> None:
    guard = DivergenceGuard(("a", "b", "c"), "cpu")
    guard.update(torch.tensor([1.0, 2.0, 3.0]), 10)
    guard.check(epoch=0, epoch_start=0)  # all finite: nothing raised
    guard.update(torch.tensor([1.0, float("inf"), float("nan")]), 11)
    guard.update(torch.tensor([float("nan"), float("nan"), 1.0]), 12)  # later: not the first
    with pytest.raises(
        TrainingDivergedError,
        match=r"task 'b' became inf in epoch 3 at step 12 \(batch 2 of the epoch\)\. Task 'c' became nan at the same step\.",
    ):
        guard.check(epoch=2, epoch_start=10)


def inf_when_large(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error, infinite for labels above 1e3 (a loss that overflows on one sample)."""
    return torch.where(target > 1e3, torch.full_like(pred, float("inf")), (pred - target) ** 2)


def test_nan_or_inf_loss_stops_training_at_its_step_and_keeps_the_last_good_checkpoint(
    data, tmp_path: Path
) -> None:
    tasks = (Task(name="y1", kind="regression"), Task(name="y2", kind="regression", loss=inf_when_large))
    good = [data.take(torch.arange(i * 32, (i + 1) * 32)) for i in range(6)]
    bad = [Batch(b.inputs, dict(b.targets), b.masks) for b in good]
    y2 = bad[3].targets["y2"].clone()
    y2[5] = 1e4  # the 4th batch of an epoch overflows task y2 only
    bad[3].targets["y2"] = y2
    path = tmp_path / "checkpoint.pt"
    t = trainer(data, tasks=tasks)
    t.fit(good, epochs=1, checkpoint=path)  # epoch 1: 6 good steps, checkpoint written
    saved = path.read_bytes()
    with pytest.raises(
        TrainingDivergedError,
        match=r"^Training diverged: the loss of task 'y2' became inf in epoch 2 at step 10 \(batch 4 of the epoch\)\. "
        r"The last checkpoint written \(if any\) is from before that step\.",
    ) as info:
        t.fit(bad, epochs=3, checkpoint=path)
    assert "'y1'" not in str(info.value)
    assert path.read_bytes() == saved  # the last good checkpoint is kept
    assert load_checkpoint(path)["epoch"] == 1


def test_cli_reports_divergence_without_a_traceback(tmp_path: Path, capsys) -> None:
    from mtlkit.cli.main import main

    code = main(
        [
            "run",
            "--preset",
            "default",
            "--out",
            str(tmp_path),
            "--no-progress",
            "seeds=[0]",
            "compare=null",
            "baseline=null",
            "data.n_train=256",
            "data.n_val=32",
            "data.n_test=32",
            "data.dim=8",
            "model.num_experts=2",
            "trainer.epochs=2",
            "optimizer.name=sgd",
            "optimizer.lr=1e30",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: Training diverged: the loss of task 'y")
    assert "at step" in err and "Traceback" not in err


def test_a_resumed_run_that_early_stopping_ended_trains_no_further(data, tmp_path: Path) -> None:
    train, val = data.split([192, 64])
    es = mtlkit.EarlyStopping(monitor="mean/loss", patience=0, min_delta=1e9)  # stops after epoch 2
    first = trainer(data)
    first.fit(train, val, epochs=10, early_stopping=es, checkpoint=tmp_path / "ck.pt")
    assert len(first.history) == 2
    resumed = trainer(data)
    resumed.fit(train, val, epochs=10, early_stopping=es, resume=tmp_path / "ck.pt")
    assert resumed.epoch == 2 and resumed.history == first.history
    for a, b in zip(resumed.model.parameters(), first.model.parameters()):
        assert torch.equal(a, b)  # the best (epoch 1) weights restored in both
