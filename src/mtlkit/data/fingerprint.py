"""A fingerprint of the data a run trained on, so that a resume can tell when the data changed.

:func:`data_fingerprint` describes each split (``train``, ``val``, ``test``) of
:class:`~mtlkit.data.DataSplits` by its row count and, for every tensor it holds (inputs, targets,
label masks; per-task datasets task by task), the shape, dtype and a BLAKE2b digest of the
tensor's bytes. A tensor of up to 32 MiB is hashed whole; a larger one by 64 blocks of 256 KiB
spread evenly over it, first and last included (about 16 MiB, a few milliseconds), so a change
confined to bytes between those blocks of a very large tensor goes unseen, while any change of
row count, shape or dtype is always seen. The fingerprint is taken of the tensors the model
reads, after preprocessing: it is the same for the same data whatever the file's path or
modification time, and it changes when a data file, the split settings or the preprocessing
change what the model sees.

A streamed split (:class:`~mtlkit.data.streaming.TabularStream`, data larger than memory) is not
read for its fingerprint: it is described by its row count and, per file, the path, the size in
bytes, the modification time (nanoseconds) and, for Parquet, the row count of the file's footer.
Rewriting a file with other values of the same size and time goes unseen; touching a file
without changing it is reported as a change (resume with ``--allow-data-change`` then).

:func:`fingerprint_changes` lists, in words, how two fingerprints differ.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mtlkit.data.dataset import MultiTaskDataset

__all__ = ["data_fingerprint", "fingerprint_changes"]

VERSION = 1
_WHOLE = 32 << 20  # tensors up to this many bytes are hashed whole
_BLOCK = 256 << 10
_BLOCKS = 64


def _digest(t: Tensor) -> str:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    if flat.numel() == 0:
        return hashlib.blake2b(b"", digest_size=16).hexdigest()
    raw = flat.view(torch.uint8).numpy()
    h = hashlib.blake2b(digest_size=16)
    if raw.nbytes <= _WHOLE:
        h.update(memoryview(raw))
    else:
        last = raw.nbytes - _BLOCK
        for i in range(_BLOCKS):
            start = last * i // (_BLOCKS - 1)
            h.update(memoryview(raw[start : start + _BLOCK]))
    return h.hexdigest()


def _tensors(data: Any, prefix: str = "") -> Iterator[tuple[str, Tensor]]:
    if isinstance(data, MultiTaskDataset):
        if isinstance(data.inputs, Tensor):
            yield f"{prefix}inputs", data.inputs
        else:
            for k, v in data.inputs.items():
                yield f"{prefix}inputs[{k!r}]", v
        for k, v in data.targets.items():
            yield f"{prefix}targets[{k!r}]", v
        for k, v in (data.masks or {}).items():
            yield f"{prefix}masks[{k!r}]", v
        for k, v in (getattr(data, "weights", None) or {}).items():
            yield f"{prefix}weights[{k!r}]", v
    elif isinstance(data, Mapping):  # per-task datasets
        for task, ds in data.items():
            yield from _tensors(ds, f"{prefix}{task}: ")


def _is_stream(data: Any) -> bool:
    """A streamed split: it names its files and row count instead of holding tensors."""
    return isinstance(getattr(data, "files", None), (tuple, list)) and isinstance(getattr(data, "num_rows", None), int)


def _file_facts(path: Path) -> dict[str, Any]:
    st = path.stat()
    facts: dict[str, Any] = {"bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    if path.suffix.lower() in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        facts["rows"] = pq.ParquetFile(path).metadata.num_rows  # the footer only
    return facts


def _split(data: Any) -> dict[str, Any] | None:
    if data is None:
        return None
    if _is_stream(data):
        files = {str(Path(f).resolve()): _file_facts(Path(f)) for f in data.files}
        return {"rows": data.num_rows, "tensors": {}, "files": files}
    if isinstance(data, MultiTaskDataset):
        rows: Any = len(data)
    elif isinstance(data, Mapping) and all(isinstance(v, MultiTaskDataset) for v in data.values()):
        rows = {k: len(v) for k, v in data.items()}
    else:  # an iterable of batches: not fingerprinted
        return {"rows": None, "tensors": {}}
    tensors = {
        name: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch."), "digest": _digest(t)}
        for name, t in _tensors(data)
    }
    return {"rows": rows, "tensors": tensors}


def data_fingerprint(splits: Any) -> dict[str, Any]:
    """The fingerprint of a :class:`~mtlkit.data.DataSplits` (or of one dataset, as split ``train``).

    Returns:
        ``{"version": 1, "splits": {split: None | {"rows", "tensors": {name: {"shape", "dtype",
        "digest"}}}}}``: plain containers, stored in checkpoints and ``metrics.json``.
    """
    if isinstance(splits, (MultiTaskDataset, Mapping)):
        parts = {"train": splits}
    else:
        parts = {"train": splits.train, "val": splits.val, "test": splits.test}
    return {"version": VERSION, "splits": {k: _split(v) for k, v in parts.items()}}


_NAMES = {"train": "training", "val": "validation", "test": "test"}


def fingerprint_changes(saved: Mapping[str, Any], now: Mapping[str, Any], *, limit: int = 4) -> list[str]:
    """How the data changed between two fingerprints, one phrase per change (empty: the same data).

    Fingerprints of another version are not compared (an empty list).
    """
    if saved.get("version") != now.get("version"):
        return []
    changes: list[str] = []
    old_splits, new_splits = saved.get("splits") or {}, now.get("splits") or {}
    for split in dict.fromkeys([*old_splits, *new_splits]):
        old, new = old_splits.get(split), new_splits.get(split)
        name = f"the {_NAMES.get(split, split)} split"
        if old is None or new is None:
            if old is not new:
                changes.append(f"{name} {'was absent then' if old is None else 'is absent now'}")
            continue
        if old["rows"] != new["rows"]:
            changes.append(f"{name} had {old['rows']} rows then, {new['rows']} now")
            continue
        old_files, new_files = old.get("files") or {}, new.get("files") or {}
        for path in dict.fromkeys([*old_files, *new_files]):
            a, b = old_files.get(path), new_files.get(path)
            if a != b:
                state = "is new" if a is None else "is gone" if b is None else "changed (size, time or rows)"
                changes.append(f"{name}: file {path} {state}")
        for key in dict.fromkeys([*old["tensors"], *new["tensors"]]):
            a, b = old["tensors"].get(key), new["tensors"].get(key)
            if a == b:
                continue
            if a is None or b is None:
                changes.append(f"{name}: {key} {'is new' if a is None else 'is gone'}")
            elif (a["shape"], a["dtype"]) != (b["shape"], b["dtype"]):
                changes.append(
                    f"{name}: {key} was {a['dtype']} {tuple(a['shape'])}, is {b['dtype']} {tuple(b['shape'])} now"
                )
            else:
                changes.append(f"{name}: {key} holds different values")
    if len(changes) > limit:
        changes = [*changes[:limit], f"{len(changes) - limit} more"]
    return changes
