"""Reading and writing training checkpoints: atomic, durable writes and clear errors.

Writing (:func:`save_checkpoint`): the payload goes to a temporary file in the same directory,
which is flushed and ``fsync``-ed, then renamed over the target with :func:`os.replace` (atomic
on POSIX and Windows), and the directory is ``fsync``-ed so that the rename itself survives a
power loss. A process killed at any point leaves either the previous checkpoint or the new one,
never a partial or zero-length file. A temporary file left by a killed writer
(``.checkpoint.pt.<random>.tmp``) is never read, and the next successful write of the same
checkpoint removes it.

Reading (:func:`load_checkpoint`) uses ``torch.load(weights_only=True)``: tensors and plain
containers only, no arbitrary code. Every failure is a :class:`~mtlkit.errors.CheckpointError`
that names the file and what is wrong (empty, truncated or corrupt, foreign objects, not an
mtlkit checkpoint, newer format). :func:`state_mismatch` and :func:`component_mismatch` describe
a checkpoint that does not fit the model or trainer it is loaded into.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import CheckpointError

__all__ = [
    "FORMAT",
    "atomic_write_bytes",
    "component_mismatch",
    "load_checkpoint",
    "save_checkpoint",
    "state_mismatch",
]

FORMAT = "mtlkit-checkpoint"
VERSION = 1


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


def _remove_stale_temps(path: Path, keep: str) -> None:
    """Delete temporary files of ``path`` left by writers that were killed mid-write."""
    prefix = _temp_prefix(path)
    for p in path.parent.glob(f"{prefix}*.tmp"):
        if p.name != keep:
            p.unlink(missing_ok=True)


def _open_temp(path: Path) -> tuple[int, str]:
    """A new temporary file next to ``path``, created with the usual permissions (0o666 minus umask)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f"{_temp_prefix(path)}{secrets.token_hex(6)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), str(tmp)
        except FileExistsError:  # pragma: no cover - 48 random bits
            continue


def _atomic_write(path: Path, write: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _open_temp(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())  # the bytes are on disk before the name points at them
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    """
    data = {"format": FORMAT, "version": VERSION, **payload}
    return _atomic_write(Path(path), lambda fh: torch.save(data, fh))


_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


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
        if found:
            raise CheckpointError(
                f"Checkpoint {name} holds a Python object of type {found.group(1)}, which mtlkit does not load: "
                "checkpoints are read with torch.load(weights_only=True) (tensors and plain containers only). "
                "Pass a checkpoint written by mtlkit, or load this file yourself if you trust it."
            ) from None
        first = text.strip().splitlines()[0][:200] if text.strip() else "no details"
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
