"""Training data for the schedules: per-task datasets, labelled-row streams and mixed datasets.

Per-task data is a ``dict`` mapping each task name to a :class:`MultiTaskDataset` that holds
that task's targets (seed 004: every task has its own dataset, of any size). A jointly labelled
dataset is turned into per-task *views* (the rows labelled for each task) without copying.
Batches drawn for a task carry only that task's targets, so a step trains that task only and the
metrics of a task come from its own data only. Rows without a label for a task never enter its
batches (they would contribute nothing but take batch slots).

Shuffles depend only on ``(seed, task, pass)`` and shards on ``(num_replicas, rank)``, never on
global random state, so runs reproduce, resume exactly and agree across DDP ranks.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.data.batch import Batch
from mtlkit.data.dataset import MultiTaskDataset, TensorBatchLoader
from mtlkit.distributed import mix_seed, shard
from mtlkit.errors import DataError, did_you_mean
from mtlkit.tasks import Task, TaskKind

__all__ = [
    "LoaderTaskStream",
    "PerTaskData",
    "PerTaskLoader",
    "TaskStream",
    "batch_loader",
    "is_per_task",
    "labelled_rows",
    "mixed_dataset",
    "per_task_sources",
    "restrict",
]

PerTaskData = Mapping[str, MultiTaskDataset]
"""``{task name: dataset holding that task's targets}``."""


def is_per_task(data: Any) -> bool:
    """True for a ``{task name: MultiTaskDataset}`` dict."""
    return (
        isinstance(data, Mapping)
        and not isinstance(data, MultiTaskDataset)
        and bool(data)
        and all(isinstance(v, MultiTaskDataset) for v in data.values())
    )


def labelled_rows(dataset: MultiTaskDataset, task: Task) -> Tensor:
    """Indices (long, ascending) of the rows of ``dataset`` with at least one label for ``task``."""
    target = dataset.targets[task.target_key]
    mask = dataset.masks.get(task.name) if dataset.masks else None
    valid = task.valid_mask(target, mask)
    return valid.reshape(valid.shape[0], -1).any(dim=1).nonzero().flatten()


def restrict(batch: Batch, tasks: Sequence[Task]) -> Batch:
    """The batch with only the targets (and masks) of ``tasks``: other tasks count as unlabelled."""
    keys = {t.target_key for t in tasks}
    names = {t.name for t in tasks}
    masks = None if batch.masks is None else {k: v for k, v in batch.masks.items() if k in names}
    weights = None if batch.weights is None else {k: v for k, v in batch.weights.items() if k in names}
    targets = {k: v for k, v in batch.targets.items() if k in keys}
    return Batch(batch.inputs, targets, masks or None, weights or None, batch.columns)


def _tasks_with_targets(data: MultiTaskDataset, tasks: Sequence[Task]) -> list[Task]:
    present = [t for t in tasks if t.target_key in data.targets]
    if not present:
        raise DataError(
            f"The dataset has targets {list(data.targets)} but the tasks are {[t.name for t in tasks]}; "
            "no task has labels. Check Task(target=...)."
        )
    return present


def batch_loader(
    data: MultiTaskDataset | Iterable[Any],
    tasks: Sequence[Task],
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    num_replicas: int = 1,
    rank: int = 0,
    pad: bool = True,
) -> Iterable[Any]:
    """A loader over one dataset (validated against ``tasks``; this rank's shard under
    torch.distributed, padded to equal lengths when ``pad``), or a user's iterable of batches as it is."""
    if isinstance(data, MultiTaskDataset):
        data.validate(_tasks_with_targets(data, tasks))
        return TensorBatchLoader(
            data, batch_size, shuffle=shuffle, seed=seed, num_replicas=num_replicas, rank=rank, pad=pad
        )
    if isinstance(data, TensorBatchLoader):
        data.dataset.validate(_tasks_with_targets(data.dataset, tasks))
        return data
    if isinstance(data, (Tensor, Mapping)):
        raise TypeError(
            "Pass a MultiTaskDataset, a dict {task name: MultiTaskDataset} of per-task datasets or an "
            "iterable of batches (e.g. a DataLoader); for raw inputs use trainer.predict(inputs)."
        )
    return data


def per_task_sources(
    data: MultiTaskDataset | PerTaskData, tasks: Sequence[Task], *, require_all: bool = True
) -> dict[str, MultiTaskDataset]:
    """``{task name: dataset}`` in task order, validated.

    A single dataset gives every task a view of itself; a per-task dict must name known tasks
    (and every task when ``require_all``), each dataset holding its task's targets.
    """
    by_name = {t.name: t for t in tasks}
    if isinstance(data, MultiTaskDataset):
        present = _tasks_with_targets(data, tasks)
        missing = [t.name for t in tasks if t not in present]
        if missing and require_all:
            raise DataError(
                f"The dataset has no targets for task(s) {missing}, so they could never be trained; "
                f"available targets: {list(data.targets)}. Check Task(target=...)."
            )
        data.validate(present)
        return {t.name: data for t in present}
    if not is_per_task(data):
        raise TypeError(
            "Per-task data must be a dict {task name: MultiTaskDataset}; got "
            f"{type(data).__name__} with values {sorted({type(v).__name__ for v in data.values()})}."
            if isinstance(data, Mapping)
            else f"Per-task data must be a dict {{task name: MultiTaskDataset}}; got {type(data).__name__}."
        )
    for key in data:
        if key not in by_name:
            raise DataError(
                f"The per-task datasets name an unknown task {key!r}.{did_you_mean(str(key), by_name)} "
                f"Tasks: {', '.join(by_name)}."
            )
    missing = [n for n in by_name if n not in data]
    if missing and require_all:
        raise DataError(
            f"Every task needs a dataset, but the per-task datasets have none for {missing}; "
            f"got datasets for {list(data)}."
        )
    out = {}
    for t in tasks:
        if t.name not in data:
            continue
        ds = data[t.name]
        if t.target_key not in ds.targets:
            raise DataError(
                f"The dataset given for task {t.name!r} has no targets for it (target key {t.target_key!r}; "
                f"it has {list(ds.targets)}). Check the dict keys and Task(target=...)."
            )
        ds.validate([t])
        out[t.name] = ds
    return out


class TaskStream:
    """One task's labelled rows of a dataset, in batches; pass ``p`` is a fixed shuffle.

    The order of pass ``p`` depends only on ``(seed, salt, p)`` (``salt``: the task's index),
    so runs resume exactly. With ``num_replicas > 1`` each rank reads an equal-length shard of
    every pass (padded by wrapping, as torch's ``DistributedSampler`` does).

    Args:
        dataset: the data (its other tasks' targets are dropped from the batches).
        task: the task this stream feeds.
        batch_size: rows per batch (the last batch of a pass may be smaller).
        seed, salt: the shuffle seed and a per-task offset.
        shuffle: shuffle each pass (False: ascending row order, for evaluation).
        num_replicas, rank: data-parallel sharding.

    Raises:
        DataError: the task has no labelled row in ``dataset``.
    """

    def __init__(
        self,
        dataset: MultiTaskDataset,
        task: Task,
        *,
        batch_size: int,
        seed: int = 0,
        salt: int = 0,
        shuffle: bool = True,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}); got {rank!r}.")
        self.dataset, self.task = dataset, task
        self.rows = labelled_rows(dataset, task)
        if self.rows.numel() == 0:
            raise DataError(
                f"Task {task.name!r} has no labelled sample in its data ({len(dataset)} rows, all "
                "missing), so it cannot be trained; give it labelled data or remove the task."
            )
        self.batch_size, self.seed, self.salt, self.shuffle = batch_size, int(seed), int(salt), shuffle
        self.num_replicas, self.rank = num_replicas, rank
        self._cache: tuple[int, Tensor] | None = None

    @property
    def num_samples(self) -> int:
        """Labelled rows of the task (over all ranks): its dataset size for the sampling schedules."""
        return int(self.rows.numel())

    def __len__(self) -> int:
        """Batches per pass (on this rank)."""
        n = -(-self.num_samples // self.num_replicas)
        return -(-n // self.batch_size)

    def order(self, p: int) -> Tensor:
        """Dataset row indices of pass ``p`` on this rank, in batch order."""
        if self._cache is not None and self._cache[0] == p:
            return self._cache[1]
        n = self.num_samples
        if self.shuffle:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.salt, p))
            order = self.rows[torch.randperm(n, generator=g)]
        else:
            order = self.rows
        order = shard(order, self.num_replicas, self.rank)
        self._cache = (p, order)
        return order

    def batch(self, p: int, i: int) -> Batch:
        """Batch ``i`` of pass ``p``, restricted to this stream's task.

        A shuffled (training) stream applies the dataset's ``augment`` transform with a generator
        seeded from ``(seed, salt, p, i)``, so augmented batches are reproducible and resume exactly.
        """
        order = self.order(p)
        chunk = order[i * self.batch_size : (i + 1) * self.batch_size]
        batch = self.dataset.take(chunk)
        augment = getattr(self.dataset, "augment", None) if self.shuffle else None
        if augment is not None:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.salt, p, i, 1))
            batch = dataclasses.replace(batch, inputs=augment(batch.inputs, g))
        return restrict(batch, [self.task])

    def batches(self, p: int) -> Iterator[Batch]:
        """Every batch of pass ``p``."""
        for i in range(len(self)):
            yield self.batch(p, i)


class LoaderTaskStream:
    """One task's batches from a loader of its own data (e.g. its stream's), with the interface of
    :class:`TaskStream`: pass ``p`` is the loader's epoch ``p``, batch ``i`` its ``i``-th batch.

    Batches are read in order; a jump (the first batch after a resume, or a pass left unfinished)
    restarts the loader at ``(p, i)`` through ``set_epoch`` / ``set_start`` (the loader must have
    both and a length that does not change between passes). Only the task's targets are kept.

    Args:
        loader: the loader (a :class:`~mtlkit.data.stream_loader.StreamLoader`).
        task: the task it feeds.
        num_samples: the task's size for the sampling schedules (its source's rows).
    """

    def __init__(self, loader: Any, task: Task, *, num_samples: int) -> None:
        for need in ("set_epoch", "set_start", "__len__"):
            if not hasattr(loader, need):
                raise TypeError(f"LoaderTaskStream needs a loader with {need}; got {type(loader).__name__}.")
        self.loader, self.task, self._num_samples = loader, task, int(num_samples)
        self._iter: Iterator[Any] | None = None
        self._at: tuple[int, int] | None = None  # (pass, batch) the open iterator yields next

    @property
    def num_samples(self) -> int:
        return self._num_samples

    def __len__(self) -> int:
        return len(self.loader)

    def batch(self, p: int, i: int) -> Batch:
        """Batch ``i`` of pass ``p``, restricted to this stream's task."""
        if self._iter is None or self._at != (p, i):
            self.close()
            self.loader.set_epoch(p)
            self.loader.set_start(i)
            self._iter = iter(self.loader)
        batch = next(self._iter)
        self._at = (p, i + 1)
        return restrict(batch, [self.task])

    def close(self) -> None:
        """Close the open pass (its reader and worker processes)."""
        close = getattr(self._iter, "close", None)
        if close is not None:
            close()
        self._iter = self._at = None


class PerTaskLoader:
    """Evaluation batches of per-task datasets: each task's labelled rows, in order, with only its targets."""

    def __init__(self, data: PerTaskData, tasks: Sequence[Task], batch_size: int) -> None:
        sources = per_task_sources(data, tasks, require_all=False)
        by_name = {t.name: t for t in tasks}
        self.task_names = tuple(sources)
        self.streams = [
            TaskStream(ds, by_name[name], batch_size=batch_size, shuffle=False)
            for name, ds in sources.items()
        ]

    def __iter__(self) -> Iterator[Batch]:
        for stream in self.streams:
            yield from stream.batches(0)

    def __len__(self) -> int:
        return sum(len(s) for s in self.streams)


def _fill(task: Task, like: Tensor, n: int) -> Tensor:
    """``n`` placeholder rows shaped like ``like`` (masked out: the value only has to be valid)."""
    shape = (n, *like.shape[1:])
    if task.kind is TaskKind.MULTICLASS:  # class indices, possibly stored as floats: -1 = missing
        return torch.full(shape, -1, dtype=like.dtype)
    if like.is_floating_point():
        return torch.full(shape, float("nan"), dtype=like.dtype)
    return torch.zeros(shape, dtype=like.dtype)


def mixed_dataset(data: PerTaskData, tasks: Sequence[Task]) -> MultiTaskDataset:
    """One dataset pooling per-task datasets, each sample labelled for its own task only.

    This is the "mixed batches with a per-sample task flag" of seed 000 (MNIST + Fashion-MNIST
    concatenated, a flag routing each sample to its task's loss): the flag is the label mask,
    ``masks[task][i]`` is True exactly for the samples that came from ``task``'s dataset (and
    carry its label). Other tasks' targets of a sample are placeholders, masked out. Rows without
    a label for their task are left out. Every dataset must have the same inputs (one tensor of
    the same per-sample shape and dtype, or dicts with the same keys).

    Args:
        data: ``{task name: dataset}``.
        tasks: the tasks (their order is the order of the pooled rows).

    Returns:
        The pooled dataset, with ``info["mixed_from"] = {task: number of samples}``.
    """
    sources = per_task_sources(data, tasks, require_all=False)
    by_name = {t.name: t for t in tasks}
    parts: list[tuple[Task, Batch]] = []
    for name, ds in sources.items():
        task = by_name[name]
        rows = labelled_rows(ds, task)
        if rows.numel() == 0:
            raise DataError(f"Task {name!r} has no labelled sample in its dataset; it cannot be mixed in.")
        parts.append((task, ds.take(rows)))
    first_task, first = parts[0]
    for task, b in parts[1:]:
        _check_same_inputs(first.inputs, b.inputs, first_task.name, task.name)
    keys = [t.target_key for t, _ in parts]
    if len(set(keys)) != len(keys):
        raise DataError(f"Mixed tasks must read different target keys; got {keys}.")
    sizes = [len(b) for _, b in parts]
    if isinstance(first.inputs, Tensor):
        inputs: Any = torch.cat([b.inputs for _, b in parts])  # type: ignore[misc]
    else:
        inputs = {k: torch.cat([b.inputs[k] for _, b in parts]) for k in first.inputs}  # type: ignore[index]
    targets: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    weights: dict[str, Tensor] = {}
    for task, b in parts:
        own = b.targets[task.target_key]
        own_mask = b.masks.get(task.name) if b.masks else None
        if own_mask is None:
            own_mask = torch.ones(len(b), dtype=torch.bool)
        pieces, flags = [], []
        for (other, _), m in zip(parts, sizes):
            mine = other is task
            pieces.append(own if mine else _fill(task, own, m))
            flags.append(own_mask if mine else torch.zeros((m, *own_mask.shape[1:]), dtype=torch.bool))
        targets[task.target_key] = torch.cat(pieces)
        masks[task.name] = torch.cat(flags)
        own_weight = b.weights.get(task.name) if b.weights else None
        if own_weight is not None:  # other tasks' rows are masked out: their weight is never read
            weights[task.name] = torch.cat(
                [own_weight if other is task else own_weight.new_zeros(m) for (other, _), m in zip(parts, sizes)]
            )
    augments = {id(a): a for a in (getattr(ds, "augment", None) for ds in sources.values())}
    if len(augments) > 1:
        raise DataError(
            "The per-task datasets have different augment transforms, but mixed batches pool them under "
            "one; give them the same transform (or none), or use the 'alternating' or 'sampling' schedule."
        )
    return MultiTaskDataset(
        inputs,
        targets,
        masks,
        tasks=[t for t, _ in parts],
        info={"mixed_from": {t.name: n for (t, _), n in zip(parts, sizes)}},
        augment=next(iter(augments.values())),
        weights=weights or None,
    )


def _check_same_inputs(a: Any, b: Any, ta: str, tb: str) -> None:
    def describe(x: Any) -> Any:
        if isinstance(x, Tensor):
            return (tuple(x.shape[1:]), x.dtype)
        return {k: (tuple(v.shape[1:]), v.dtype) for k, v in x.items()}

    if describe(a) != describe(b):
        raise DataError(
            f"Mixed batches pool every task's samples into one batch, so the datasets need the same inputs; "
            f"task {ta!r} has {describe(a)} but task {tb!r} has {describe(b)}. Use schedule 'alternating' "
            "or 'sampling' (one task's batch per step) for datasets with different inputs."
        )
