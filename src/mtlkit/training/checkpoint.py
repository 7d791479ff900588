"""Training checkpoints: the format, atomic and durable writes, the run-directory lock, resume.

Writing (:func:`save_checkpoint`): the payload goes to a temporary file in the same directory,
which is flushed and ``fsync``-ed, then renamed over the target with :func:`os.replace` (atomic
on POSIX and Windows), and the directory is ``fsync``-ed so that the rename itself survives a
power loss. A process killed at any point leaves either the previous checkpoint or the new one,
never a partial or zero-length file. Temporary files are named
``.checkpoint.pt.<pid>.<random>.tmp``; they are never read, and a successful write removes only
the temporary files of its own process and of processes that no longer run (left by a killed
writer), never those of a live process. A write that fails (full disk, read-only folder) raises
:class:`~mtlkit.errors.RunDirectoryError` naming the file and the fix; the previous checkpoint
stays intact.

Reading (:func:`load_checkpoint`) uses ``torch.load(weights_only=True)``: tensors and plain
containers only, no arbitrary code. Every failure is a :class:`~mtlkit.errors.CheckpointError`
that names the file and what is wrong (empty, truncated or corrupt, code or foreign objects,
not an mtlkit checkpoint, newer format). :func:`state_mismatch` and :func:`component_mismatch`
describe a checkpoint that does not fit the model or trainer it is loaded into;
:func:`model_weights` is the one rule for which weights a finished run is used with.
What a trainer's checkpoint holds is :mod:`mtlkit.training.trainer_state`'s job.

:class:`Checkpointer` ties these together for one run: it writes and reads its checkpoint file,
locks the run directory against a second writer (:class:`~mtlkit.training.run_lock.RunLock`)
and refuses to resume when the data fingerprint stored in the checkpoint
(:func:`~mtlkit.data.fingerprint.data_fingerprint`) differs from the data at hand.
"""

from __future__ import annotations

import os
import pickletools
import re
import secrets
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from torch import Tensor

from mtlkit.data.fingerprint import fingerprint_changes
from mtlkit.errors import CheckpointError, RunDirectoryError
from mtlkit.training.run_lock import RunLock, os_error_message

__all__ = [
    "FORMAT",
    "Checkpointer",
    "as_checkpointer",
    "atomic_write_bytes",
    "component_mismatch",
    "load_checkpoint",
    "model_weights",
    "save_checkpoint",
    "state_mismatch",
]

FORMAT = "mtlkit-checkpoint"
VERSION = 2  # 2: may hold a mid-epoch position (checkpoints between epochs are still written as 1)


def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX; directories cannot be opened on Windows)."""
    if os.name != "posix":  # pragma: no cover - platform dependent
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


def _alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (``False`` for numbers that are no pid)."""
    if pid <= 0 or pid > 1 << 22:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by another user
        return True
    except (OverflowError, ValueError, OSError):
        return False
    return True


def _remove_stale_temps(path: Path, keep: str) -> None:
    """Delete this process's other temporary files of ``path`` and those of writers that no longer
    run (killed mid-write); the temporary file of a live writer is never touched."""
    prefix = _temp_prefix(path)
    for p in path.parent.glob(f"{prefix}*.tmp"):
        if p.name == keep:
            continue
        parts = p.name[len(prefix) :].split(".")  # <pid>.<random>.tmp (older: <random>.tmp)
        pid = int(parts[0]) if len(parts) == 3 and parts[0].isdigit() else None
        if pid is None or pid == os.getpid() or not _alive(pid):
            p.unlink(missing_ok=True)


def _open_temp(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path`` named after this process, created with the usual
    permissions (0o666 minus umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f"{_temp_prefix(path)}{os.getpid()}.{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _atomic_write(path: Path, write: Any) -> Path:
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _open_temp(path)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, RunDirectoryError):
            err = RunDirectoryError(os_error_message(exc, path))
            err.errno, err.filename = exc.errno, str(path)
            raise err from None
        raise
    _fsync_dir(path.parent)
    _remove_stale_temps(path, keep=Path(tmp).name)
    return path


def atomic_write_bytes(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` to ``path`` atomically and durably (temp file, fsync, rename, fsync of the folder)."""
    return _atomic_write(Path(path), lambda fh: fh.write(data))


def save_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` atomically and durably; a crash never leaves half a checkpoint.

    Args:
        payload: tensors and plain containers (dicts, lists, numbers, strings), so that
            :func:`load_checkpoint` can read it with ``weights_only=True``.
        path: the checkpoint file; its directory is created if needed.

    Returns:
        ``path``.

    Raises:
        RunDirectoryError: the file cannot be written (full disk, read-only folder...); a
            previous checkpoint at ``path`` is left intact.
    """
    # a checkpoint written inside an epoch is version 2: an mtlkit that cannot continue it refuses it
    version = VERSION if payload.get("position") else 1
    data = {"format": FORMAT, "version": version, **payload}
    return _atomic_write(Path(path), lambda fh: torch.save(data, fh))


_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain containers only).

    Args:
        path: a checkpoint file, or a run directory holding ``checkpoint.pt``.

    Raises:
        CheckpointError: the file is missing, empty, truncated or corrupt, holds Python objects
            that ``weights_only=True`` refuses, is not an mtlkit checkpoint, or has a newer
            format version. The message names the file.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "checkpoint.pt"
    name = repr(str(path))
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {name} does not exist. Pass a run directory or a .pt file.")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"Checkpoint {name} is empty (0 bytes): it was not written completely. "
            "Delete it and resume from an earlier copy, or train again."
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated file, wrong format, pickle error
        text = str(exc)
        found = _GLOBAL.search(text)
        names = [found.group(1)] if found else _foreign_globals(path)
        if names:
            raise CheckpointError(
                f"Checkpoint {name} holds a Python object of type {names[0]}: code or objects, not plain "
                "tensors and containers. Loading it could run that code, so mtlkit refuses it (checkpoints "
                "are read with torch.load(weights_only=True)). Use a checkpoint written by mtlkit, or train again."
            ) from None
        first = text.strip().splitlines()[0][:200] if text.strip() else "no details"
        if "weights_only" in text:  # torch's advice (load with weights_only=False) would run code: not shown
            first = "not a file torch reads as plain tensors"
        raise CheckpointError(
            f"Checkpoint {name} could not be read ({type(exc).__name__}: {first}). "
            "The file is corrupt, truncated or not an mtlkit checkpoint; re-create it by training again."
        ) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(
            f"{name} is not an mtlkit checkpoint (no {FORMAT!r} marker). "
            "Load it with torch.load, or pass a checkpoint written by mtlkit."
        )
    if data.get("version", 0) > VERSION:
        raise CheckpointError(
            f"Checkpoint {name} has format version {data.get('version')}, newer than this mtlkit "
            f"understands ({VERSION}); upgrade mtlkit."
        )
    return data


_PLAIN = ("collections.OrderedDict", "_codecs.encode")  # besides torch.*: what torch.save itself writes


def _foreign_globals(path: Path, *, limit: int = 64 << 20) -> list[str]:
    """The classes and functions a pickle (plain, or the ``data.pkl`` of a torch zip file) would
    import, other than torch's own; read with :mod:`pickletools`, which runs nothing. Empty when
    the file cannot be parsed as a pickle (corrupt or random bytes)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if member is None:
                    return []
                raw = zf.read(member)
        else:
            with open(path, "rb") as fh:
                raw = fh.read(limit)
        names: list[str] = []
        strings: list[str] = []
        for op, arg, _ in pickletools.genops(raw):
            if isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
            elif op.name in ("GLOBAL", "INST") and isinstance(arg, str):
                names.append(arg.replace(" ", "."))
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                names.append(f"{strings[-2]}.{strings[-1]}")
    except Exception:  # not a pickle: corrupt, truncated or random bytes
        return []
    return [n for n in names if n.split(".")[0] != "torch" and n not in _PLAIN]


def model_weights(state: Mapping[str, Any], *, source: str = "checkpoint") -> Mapping[str, Any]:
    """The weights a trained run is used with: the best epoch's when the run kept them (early
    stopping with ``restore_best``; with per-task early stopping, each task's network at its own
    best epoch), else the last epoch's.

    Raises:
        CheckpointError: the checkpoint holds no model weights.
    """
    best = state.get("best") or {}
    weights = best.get("state") if best.get("state") is not None else state.get("model")
    per_task = best.get("per_task")  # independent task networks: each task's keys at its own best epoch
    if isinstance(per_task, Mapping) and isinstance(state.get("model"), Mapping):
        parts = [(b or {}).get("state") for b in per_task.values()]
        if parts and all(isinstance(p, Mapping) for p in parts):
            weights = dict(state["model"])
            for part in parts:
                weights.update(part)
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"The {source} holds no model weights; it was not written by mtlkit run.")
    return weights


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, Tensor) else type(t).__name__


def state_mismatch(saved: Mapping[str, Any], expected: Mapping[str, Any], *, limit: int = 3) -> str | None:
    """How a saved ``state_dict`` differs from the one a module expects; ``None`` if it fits.

    Lists up to ``limit`` entries of each kind: tensors whose shapes differ, entries missing from
    the checkpoint, entries the module does not have.
    """
    problems: list[str] = []
    shapes = [
        f"{k!r} has shape {_shape(v)} in the checkpoint but {_shape(expected[k])} in the model"
        for k, v in saved.items()
        if k in expected
        and isinstance(v, Tensor)
        and isinstance(expected[k], Tensor)
        and v.shape != expected[k].shape
    ]
    missing = [k for k in expected if k not in saved]
    unexpected = [k for k in saved if k not in expected]

    def some(items: list[str]) -> str:
        more = f" (and {len(items) - limit} more)" if len(items) > limit else ""
        return ", ".join(items[:limit]) + more

    if shapes:
        problems.append(some(shapes))
    if missing:
        problems.append(f"missing from the checkpoint: {some([repr(k) for k in missing])}")
    if unexpected:
        problems.append(f"not in the model: {some([repr(k) for k in unexpected])}")
    return "; ".join(problems) if problems else None


def component_mismatch(saved: Mapping[str, Any], current: Mapping[str, str | None]) -> str | None:
    """Which component types (optimizer, loss weighting, aggregator...) differ; ``None`` if all match.

    ``saved`` is the ``"components"`` entry of a checkpoint (absent in older checkpoints: then
    nothing is compared), ``current`` the same for the object it is loaded into. A component
    missing on either side (``None``: no scheduler, no aggregator) is not a mismatch: its state
    is then not loaded (e.g. evaluating a checkpoint without building its aggregator).
    """
    diffs = [
        f"{what} {saved[what]!r} in the checkpoint but {now!r} here"
        for what, now in current.items()
        if saved.get(what) is not None and now is not None and saved[what] != now
    ]
    return "; ".join(diffs) if diffs else None


class Checkpointer:
    """The checkpoint of one run: format, atomic writes, the run-directory lock and resume.

    Args:
        path: the checkpoint file (a folder: ``<folder>/checkpoint.pt``).
        fingerprint: the :func:`~mtlkit.data.fingerprint.data_fingerprint` of the data this run
            trains on: stored in every checkpoint written, and compared with the stored one when
            a checkpoint is loaded.
        allow_data_change: load a checkpoint whose data fingerprint differs (the changes are kept
            in :attr:`data_changes`) instead of raising.
        lock: lock the checkpoint's folder while writing (see :class:`RunLock`); :meth:`hold`
            (or ``with checkpointer:``) keeps it locked for a whole run, otherwise each
            :meth:`save` locks it for the write.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        fingerprint: Mapping[str, Any] | None = None,
        allow_data_change: bool = False,
        lock: bool = True,
    ) -> None:
        path = Path(path)
        self.path = path / "checkpoint.pt" if path.is_dir() else path
        self.fingerprint = dict(fingerprint) if fingerprint is not None else None
        self.allow_data_change = allow_data_change
        self.lock = lock
        self.data_changes: list[str] = []
        self._held: RunLock | None = None

    def __repr__(self) -> str:
        return f"Checkpointer({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    # ---------------------------------------------------------------- lock
    def hold(self) -> Checkpointer:
        """Lock the run directory until :meth:`release` (a second process gets a clear error)."""
        if self.lock and self._held is None:
            self._held = RunLock(self.path.parent).acquire()
        return self

    def release(self) -> None:
        if self._held is not None:
            self._held.release()
            self._held = None

    def __enter__(self) -> Checkpointer:
        return self.hold()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()

    # ---------------------------------------------------------------- read / write
    def exists(self) -> bool:
        return self.path.is_file()

    def save(self, payload: Mapping[str, Any]) -> Path:
        """Write ``payload`` (plus the data fingerprint) atomically, under the run-directory lock."""
        data = dict(payload)
        if self.fingerprint is not None:
            data["data_fingerprint"] = self.fingerprint
        if not self.lock:
            return save_checkpoint(data, self.path)
        with RunLock(self.path.parent):  # re-entrant: shares a lock this process already holds
            return save_checkpoint(data, self.path)

    def load(self) -> dict[str, Any]:
        """Read the checkpoint; refuse it when it was written for other data (see ``allow_data_change``)."""
        data = load_checkpoint(self.path)
        self.check_data(data.get("data_fingerprint"), what=f"checkpoint {str(self.path)!r} was written")
        return data

    def resume(self) -> dict[str, Any] | None:
        """The checkpoint to continue from, or ``None`` when none was written yet."""
        return self.load() if self.exists() else None

    def check_data(self, saved: Mapping[str, Any] | None, *, what: str) -> list[str]:
        """Compare a stored data fingerprint with this run's; raise unless ``allow_data_change``.

        ``what`` completes "The training data changed since ...". Nothing is compared when either
        fingerprint is missing (older checkpoints, data given as an iterable of batches).
        """
        if saved is None or self.fingerprint is None:
            return []
        changes = fingerprint_changes(saved, self.fingerprint)
        if changes and not self.allow_data_change:
            raise CheckpointError(
                f"The data changed since {what}: {'; '.join(changes)}. Resuming would continue training "
                "on different data. Restore the original data, or start a new run; to continue on the "
                "new data anyway, resume with --allow-data-change (Python: allow_data_change=True)."
            )
        self.data_changes = changes
        return changes


def as_checkpointer(target: str | os.PathLike[str] | Checkpointer) -> Checkpointer:
    """``target`` if it is a :class:`Checkpointer`, else one for the file ``target``."""
    return target if isinstance(target, Checkpointer) else Checkpointer(target)
