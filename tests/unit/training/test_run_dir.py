"""Run directories: the lock (one writer), temporary files of live writers left alone, the data
fingerprint, refusing checkpoints that carry code, and write errors that name the path and fix."""

from __future__ import annotations

import errno
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from mtlkit.data import MultiTaskDataset, synthetic_correlation
from mtlkit.data.fingerprint import data_fingerprint, fingerprint_changes
from mtlkit.errors import CheckpointError, RunDirectoryError
from mtlkit.training import checkpoint as ckpt_module
from mtlkit.training.checkpoint import Checkpointer, load_checkpoint, save_checkpoint
from mtlkit.training.run_lock import LOCK_FILE, RunLock

needs_flock = pytest.mark.skipif(os.name != "posix", reason="run-directory locks use fcntl.flock (POSIX)")

# the lock protocol without importing mtlkit (a process that starts in milliseconds): flock on
# <run dir>/.mtlkit.lock, holding "<pid> <host>"
HOLDER = textwrap.dedent(
    """
    import fcntl, os, socket, sys, time
    os.makedirs(sys.argv[1], exist_ok=True)
    fd = os.open(os.path.join(sys.argv[1], {lock!r}), os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    os.write(fd, f"{{os.getpid()}} {{socket.gethostname()}}\\n".encode())
    print("locked", flush=True)
    time.sleep(120)
    """
)


@pytest.fixture
def holder(tmp_path: Path):
    """A second process that holds the lock of ``tmp_path / 'run'`` until killed."""
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(lock=LOCK_FILE))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path / "run")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        proc.kill()
        proc.wait()


# ---------------------------------------------------------------------------------------------- the lock
@needs_flock
def test_a_second_process_gets_a_clear_error_naming_the_holder(tmp_path: Path, holder) -> None:
    run = tmp_path / "run"
    with pytest.raises(RunDirectoryError, match=rf"is in use by pid {holder.pid}\b.*mtlkit run --resume"):
        RunLock(run).acquire()
    with pytest.raises(RunDirectoryError, match=f"in use by pid {holder.pid}"):
        Checkpointer(run / "checkpoint.pt").save({"tag": 1})
    assert not (run / "checkpoint.pt").exists()
    os.kill(holder.pid, signal.SIGKILL)  # a killed holder leaves its lock file, but not its lock
    holder.wait()
    assert (run / LOCK_FILE).exists()
    with RunLock(run) as lock:
        assert lock.held and (run / LOCK_FILE).read_text().split()[0] == str(os.getpid())
    assert not (run / LOCK_FILE).exists()  # a clean release removes the file


@needs_flock
def test_the_lock_is_reentrant_within_a_process(tmp_path: Path) -> None:
    with RunLock(tmp_path) as outer:
        with RunLock(tmp_path) as inner:  # e.g. the experiment's lock and a checkpoint write
            assert inner.held
        assert (tmp_path / LOCK_FILE).exists()  # the inner release keeps the outer lock
        with Checkpointer(tmp_path / "checkpoint.pt") as ck:
            ck.save({"tag": 3})
        assert outer.held and (tmp_path / LOCK_FILE).exists()
    assert not (tmp_path / LOCK_FILE).exists()
    assert load_checkpoint(tmp_path)["tag"] == 3


@needs_flock
def test_a_write_removes_only_its_own_and_dead_writers_temporary_files(tmp_path: Path, holder) -> None:
    path = tmp_path / "ck.pt"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live_tmp = tmp_path / f".ck.pt.{holder.pid}.abcdef012345.tmp"  # another process writing now
    dead_tmp = tmp_path / f".ck.pt.{dead.pid}.abcdef012345.tmp"  # a writer killed mid-write
    own_tmp = tmp_path / f".ck.pt.{os.getpid()}.abcdef012345.tmp"
    old_tmp = tmp_path / ".ck.pt.abcdef012345.tmp"  # the name older versions used
    for p in (live_tmp, dead_tmp, own_tmp, old_tmp):
        p.write_bytes(b"partial")
    save_checkpoint({"tag": 1}, path)
    assert live_tmp.exists()
    assert not dead_tmp.exists() and not own_tmp.exists() and not old_tmp.exists()
    assert load_checkpoint(path)["tag"] == 1


# ---------------------------------------------------------------------------------------------- write errors
def test_a_full_disk_names_the_file_and_keeps_the_last_checkpoint(tmp_path: Path, monkeypatch) -> None:
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"tag": 1}, path)

    def full(obj: object, fh) -> None:
        fh.write(b"x" * 100)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ckpt_module.torch, "save", full)
    with pytest.raises(
        RunDirectoryError, match=r"checkpoint\.pt': the disk is full .*free some space"
    ) as info:
        save_checkpoint({"tag": 2}, path)
    assert info.value.errno == errno.ENOSPC and "Errno" not in str(info.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["tag"] == 1
    assert sorted(tmp_path.glob(".*.tmp")) == []


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_real_enospc_from_the_kernel_is_reported_the_same_way(tmp_path: Path, monkeypatch) -> None:
    """The temporary file is /dev/full, whose writes fail with ENOSPC: torch.save's own error path."""
    path = tmp_path / "checkpoint.pt"
    save_checkpoint({"tag": 1}, path)
    real_open = os.open

    def dev_full(target, flags, *args):  # the temporary file is created, then /dev/full written instead
        if flags & os.O_EXCL and str(target).endswith(".tmp"):
            os.close(real_open(target, flags, *args))
            return real_open("/dev/full", os.O_WRONLY)
        return real_open(target, flags, *args)

    monkeypatch.setattr(os, "open", dev_full)
    with pytest.raises(RunDirectoryError, match=r"checkpoint\.pt': the disk is full \(No space left on device\)"):
        save_checkpoint({"tag": 2, "values": torch.zeros(100_000)}, path)
    assert load_checkpoint(path)["tag"] == 1 and sorted(tmp_path.glob(".*.tmp")) == []


def test_a_read_only_folder_names_the_folder_and_the_fix(tmp_path: Path, monkeypatch) -> None:
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(RunDirectoryError, match=r"ck\.pt': it is not writable \(Read-only file system\)"):
        save_checkpoint({"tag": 1}, tmp_path / "ck.pt")
    with pytest.raises(RunDirectoryError, match="run directory .*it is not writable.*copy it to a writable place and resume the copy"):
        RunLock(tmp_path / "run").acquire()


# ---------------------------------------------------------------------------------------------- code in checkpoints
class Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("kind", ["torch.save", "pickle", "custom class"])
def test_a_checkpoint_carrying_code_is_refused_without_suggesting_to_disable_the_check(
    tmp_path: Path, kind: str
) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    if kind == "torch.save":
        torch.save({"format": "mtlkit-checkpoint", "model": Exploit(marker)}, path)
        culprit = "posix.system" if os.name == "posix" else "nt.system"
    elif kind == "pickle":  # a plain pickle, not torch's zip format
        path.write_bytes(pickle.dumps({"model": Exploit(marker)}, protocol=4))
        culprit = "posix.system" if os.name == "posix" else "nt.system"
    else:
        torch.save({"format": "mtlkit-checkpoint", "x": Checkpointer(path)}, path)
        culprit = "mtlkit.training.checkpoint.Checkpointer"
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert f"evil.pt' holds a Python object of type {culprit}" in message
    assert "code or objects, not plain tensors" in message and "refuses it" in message
    assert "weights_only=False" not in message and "weights_only` set to `False" not in message
    assert "trust" not in message  # no invitation to load it anyway
    assert not marker.exists()  # nothing ran


# ---------------------------------------------------------------------------------------------- fingerprint
def test_the_fingerprint_sees_row_value_and_shape_changes_and_nothing_else() -> None:
    data = synthetic_correlation(200, 0.5, dim=6, seed=0)
    same = synthetic_correlation(200, 0.5, dim=6, seed=0)
    fp = data_fingerprint(data)
    assert fp == data_fingerprint(same)
    assert fingerprint_changes(fp, data_fingerprint(same)) == []

    fewer = synthetic_correlation(199, 0.5, dim=6, seed=0)
    assert fingerprint_changes(fp, data_fingerprint(fewer)) == [
        "the training split had 200 rows then, 199 now"
    ]
    edited = MultiTaskDataset(data.inputs.clone(), dict(data.targets))
    edited.inputs[123, 4] += 1e-6  # one value, slightly
    assert fingerprint_changes(fp, data_fingerprint(edited)) == [
        "the training split: inputs holds different values"
    ]
    wider = MultiTaskDataset(torch.cat([data.inputs, data.inputs[:, :1]], 1), dict(data.targets))
    assert fingerprint_changes(fp, data_fingerprint(wider)) == [
        "the training split: inputs was float32 (200, 6), is float32 (200, 7) now"
    ]
    relabelled = MultiTaskDataset(data.inputs, {**data.targets, "y2": data.targets["y2"].flip(0)})
    assert fingerprint_changes(fp, data_fingerprint(relabelled)) == [
        "the training split: targets['y2'] holds different values"
    ]


def test_a_large_tensor_is_fingerprinted_by_blocks_that_include_its_ends() -> None:
    n = 9_000_000  # 36 MB of float32: above the 32 MiB hashed whole
    x = torch.zeros(n, 1)
    y = {"y": torch.zeros(n)}
    fp = data_fingerprint(MultiTaskDataset(x, y))
    for row in (0, n - 1):  # the first and the last block are always read
        x2 = x.clone()
        x2[row, 0] = 1.0
        assert fingerprint_changes(fp, data_fingerprint(MultiTaskDataset(x2, y))) == [
            "the training split: inputs holds different values"
        ]


def test_checkpointer_refuses_a_resume_on_changed_data_unless_allowed(tmp_path: Path) -> None:
    old = data_fingerprint(synthetic_correlation(100, 0.5, dim=4, seed=0))
    new = data_fingerprint(synthetic_correlation(100, 0.5, dim=4, seed=1))
    Checkpointer(tmp_path, fingerprint=old).save({"tag": 1})
    assert load_checkpoint(tmp_path)["data_fingerprint"] == old
    assert Checkpointer(tmp_path, fingerprint=old).resume()["tag"] == 1
    with pytest.raises(
        CheckpointError,
        match=r"The data changed since checkpoint '.*checkpoint\.pt' was written: the training split: inputs "
        r"holds different values.*Resuming would continue training on different data.*--allow-data-change",
    ):
        Checkpointer(tmp_path, fingerprint=new).resume()
    allowed = Checkpointer(tmp_path, fingerprint=new, allow_data_change=True)
    assert allowed.resume()["tag"] == 1
    assert allowed.data_changes and "inputs holds different values" in allowed.data_changes[0]
    assert Checkpointer(tmp_path / "none").resume() is None
    assert Checkpointer(tmp_path).resume()["tag"] == 1  # no fingerprint to compare: loads
