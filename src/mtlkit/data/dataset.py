"""A tensor-backed multi-task dataset and a vectorised batch loader."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.data.batch import Batch, Inputs, _moved, check_weights
from mtlkit.distributed import mix_seed, shard
from mtlkit.errors import DataError
from mtlkit.tasks import Task

__all__ = ["BatchAugment", "MultiTaskDataset", "TensorBatchLoader"]

BatchAugment = Callable[[Inputs, torch.Generator], Inputs]
"""A random batch transform ``augment(inputs, generator) -> inputs`` (training-time augmentation)."""


class MultiTaskDataset(torch.utils.data.Dataset):
    """Features plus per-task targets (and optional label masks), held as tensors.

    Args:
        inputs: ``(N, ...)`` feature tensor, or a dict of named tensors with ``N`` rows each
            (numpy arrays are accepted and converted).
        targets: ``{task: tensor}`` with ``N`` rows each; NaN (or -1 for class indices) marks a
            missing label.
        masks: optional ``{task: bool tensor}`` (``(N,)`` or the target's shape); False = missing.
        weights: optional per-row sample weights: one ``(N,)`` tensor for every task, or
            ``{task: (N,) tensor}`` (tasks without an entry weigh every row 1). Finite and >= 0.
        tasks: optional task definitions that describe the targets (used by the CLI and
            :meth:`validate`).
        columns: optional extra per-row columns for metrics (not model inputs), ``{name: (N,)
            tensor}``, e.g. the int64 group ids a :class:`~mtlkit.metrics.GroupAUC` reads;
            carried in every batch's ``columns``.
        info: free-form facts about the data (e.g. the label correlation of synthetic data).
        augment: optional random batch transform ``augment(inputs, generator) -> inputs`` (e.g.
            :class:`~mtlkit.data.images.RandomFlipCrop`), applied by :class:`TensorBatchLoader` to
            training batches only; indexing the dataset returns the stored inputs unchanged.
        dtype: the floating dtype of the model that reads the data. Floating inputs and targets
            of another dtype (float64 numpy arrays, for example) are converted to it, so they
            reach ``nn.Linear`` in its dtype; integer tensors (category indices, class labels)
            keep theirs. Default: ``torch.get_default_dtype()`` (float32 unless changed); pass
            ``torch.float64`` for a model in float64.

    Indexing with a tensor of indices gathers a whole :class:`Batch` at once; use
    :class:`TensorBatchLoader`, or torch's ``DataLoader`` with ``collate_fn=mtlkit.data.collate``.
    """

    def __init__(
        self,
        inputs: Inputs,
        targets: Mapping[str, Tensor],
        masks: Mapping[str, Tensor] | None = None,
        *,
        tasks: Sequence[Task] | None = None,
        info: Mapping[str, Any] | None = None,
        augment: BatchAugment | None = None,
        dtype: torch.dtype | None = None,
        weights: Tensor | np.ndarray | Mapping[str, Tensor] | None = None,
        columns: Mapping[str, Tensor | np.ndarray] | None = None,
    ) -> None:
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise DataError(f"MultiTaskDataset dtype must be a floating torch dtype; got {dtype!r}.")
        if augment is not None and not callable(augment):
            raise TypeError(
                f"augment must be callable(inputs, generator) -> inputs; got {type(augment).__name__}."
            )
        if isinstance(inputs, (Tensor, np.ndarray)):
            inputs = _as_tensor(inputs, "inputs", dtype)
            n = _rows(inputs, "inputs")
        elif isinstance(inputs, Mapping) and inputs:
            inputs = {k: _as_tensor(v, f"inputs[{k!r}]", dtype) for k, v in inputs.items()}
            sizes = {k: _rows(v, f"inputs[{k!r}]") for k, v in inputs.items()}
            if len(set(sizes.values())) != 1:
                raise DataError(f"All input tensors must have the same number of rows; got {sizes}.")
            n = next(iter(sizes.values()))
            inputs = dict(inputs)
        else:
            raise DataError(
                f"inputs must be a tensor or a non-empty dict of tensors; got {type(inputs).__name__}."
            )
        if not isinstance(targets, Mapping) or not targets:
            raise DataError("targets must be a non-empty dict {task name: tensor}.")
        targets = {k: _as_tensor(v, f"targets[{k!r}]", dtype) for k, v in targets.items()}
        if masks:
            masks = {k: _as_tensor(v, f"masks[{k!r}]", None) for k, v in masks.items()}
        for name, t in {**targets, **(masks or {})}.items():
            if _rows(t, f"targets[{name!r}]") != n:
                raise DataError(
                    f"targets/masks for {name!r} have {t.shape[0]} rows but inputs have {n}; "
                    "every tensor needs one row per sample."
                )
        if masks:
            unknown = set(masks) - set(targets)
            if unknown:
                raise DataError(f"masks name tasks without targets: {sorted(unknown)}.")
        self.inputs: Inputs = inputs
        self.targets: dict[str, Tensor] = dict(targets)
        self.masks: dict[str, Tensor] | None = {k: v.bool() for k, v in masks.items()} if masks else None
        self.weights: dict[str, Tensor] | None = _weights(weights, targets, dtype, n)
        self.columns: dict[str, Tensor] | None = _columns(columns, n)
        self.tasks: tuple[Task, ...] | None = tuple(tasks) if tasks is not None else None
        self.info: dict[str, Any] = dict(info or {})
        self.augment: BatchAugment | None = augment
        self.dtype: torch.dtype = dtype
        self._n = n
        if self.tasks is not None:
            self.validate(self.tasks)

    def __len__(self) -> int:
        return self._n

    @property
    def task_names(self) -> tuple[str, ...]:
        """Target keys present in the dataset."""
        return tuple(self.targets)

    @property
    def feature_shape(self) -> tuple[int, ...] | dict[str, tuple[int, ...]]:
        """Per-sample shape of the inputs (a dict for named inputs)."""
        if isinstance(self.inputs, Tensor):
            return tuple(self.inputs.shape[1:])
        return {k: tuple(v.shape[1:]) for k, v in self.inputs.items()}

    def take(self, index: Tensor) -> Batch:
        """Gather the rows ``index`` (a 1-D long tensor) into a :class:`Batch`, vectorised."""
        inputs = (
            self.inputs[index]
            if isinstance(self.inputs, Tensor)
            else {k: v[index] for k, v in self.inputs.items()}
        )
        masks = None if self.masks is None else {k: v[index] for k, v in self.masks.items()}
        weights = None if self.weights is None else _moved(self.weights, lambda v: v[index])
        columns = None if self.columns is None else {k: v[index] for k, v in self.columns.items()}
        return Batch(inputs, {k: v[index] for k, v in self.targets.items()}, masks, weights, columns)

    def __getitem__(self, index: int | Tensor) -> Batch:
        if isinstance(index, int):
            if not -self._n <= index < self._n:
                raise IndexError(f"index {index} out of range for a dataset of {self._n} samples")
            b = self.take(torch.tensor([index]))
            sq = lambda t: t[0]  # noqa: E731
            inputs = sq(b.inputs) if isinstance(b.inputs, Tensor) else {k: sq(v) for k, v in b.inputs.items()}
            masks = None if b.masks is None else {k: sq(v) for k, v in b.masks.items()}
            weights = None if b.weights is None else {k: sq(v) for k, v in b.weights.items()}
            columns = None if b.columns is None else {k: sq(v) for k, v in b.columns.items()}
            return Batch(inputs, {k: sq(v) for k, v in b.targets.items()}, masks, weights, columns)
        return self.take(torch.as_tensor(index, dtype=torch.long))

    def __getitems__(self, indices: Sequence[int]) -> Batch:  # torch DataLoader batched fetch
        return self.take(torch.as_tensor(indices, dtype=torch.long))

    def subset(self, index: Tensor | Sequence[int]) -> MultiTaskDataset:
        """A new dataset holding the rows ``index``."""
        b = self.take(torch.as_tensor(index, dtype=torch.long))
        return MultiTaskDataset(
            b.inputs,
            b.targets,
            b.masks,
            tasks=self.tasks,
            info=self.info,
            augment=self.augment,
            dtype=self.dtype,
            weights=b.weights,
            columns=b.columns,
        )

    def split(self, sizes: Sequence[int], *, seed: int | None = None) -> tuple[MultiTaskDataset, ...]:
        """Split into consecutive parts of the given sizes (shuffled first if ``seed`` is given)."""
        if sum(sizes) != self._n or any(s < 0 for s in sizes):
            raise ValueError(f"split sizes must be >= 0 and sum to {self._n}; got {list(sizes)}.")
        order = torch.arange(self._n)
        if seed is not None:
            order = torch.randperm(self._n, generator=torch.Generator().manual_seed(seed))
        parts, start = [], 0
        for s in sizes:
            parts.append(self.subset(order[start : start + s]))
            start += s
        return tuple(parts)

    def to(self, device: torch.device | str) -> MultiTaskDataset:
        """A copy with every tensor on ``device`` (keep data on the GPU to avoid host transfers)."""
        b = Batch(self.inputs, self.targets, self.masks, self.weights, self.columns).to(device)
        out = MultiTaskDataset.__new__(MultiTaskDataset)
        out.inputs, out.targets, out.masks, out.weights = b.inputs, b.targets, b.masks, b.weights
        out.columns = b.columns
        out.tasks, out.info, out._n = self.tasks, dict(self.info), self._n
        out.augment, out.dtype = self.augment, self.dtype
        return out

    def validate(self, tasks: Sequence[Task]) -> None:
        """Check that every task has well-formed targets here; raises :class:`DataError`."""
        for task in tasks:
            if task.target_key not in self.targets:
                raise DataError(
                    f"Task {task.name!r} has no targets in this dataset (target key {task.target_key!r}; "
                    f"available: {', '.join(map(repr, self.targets))}). Check Task(target=...)."
                )
            mask = self.masks.get(task.name) if self.masks else None
            task.check_targets(self.targets[task.target_key], mask, where="the dataset")

    def __repr__(self) -> str:
        return f"MultiTaskDataset(n={self._n}, features={self.feature_shape}, tasks={list(self.targets)})"


def _columns(columns: Mapping[str, Tensor | np.ndarray] | None, n: int) -> dict[str, Tensor] | None:
    """``{name: (N,) tensor}`` of the extra metric columns, one value per row (checked)."""
    if not columns:
        return None
    out = {}
    for k, v in columns.items():
        t = torch.as_tensor(v)
        if t.ndim != 1 or t.shape[0] != n:
            raise DataError(
                f"columns[{k!r}] has shape {tuple(t.shape)}; an extra metric column holds one value per row, "
                f"shape ({n},)."
            )
        out[k] = t
    return out


def _weights(
    weights: Tensor | np.ndarray | Mapping[str, Tensor] | None,
    targets: Mapping[str, Tensor],
    dtype: torch.dtype,
    n: int,
) -> dict[str, Tensor] | None:
    """``{task: (N,) weights}`` (one shared tensor for a single column), checked."""
    if weights is None:
        return None
    if isinstance(weights, Mapping):
        out = _moved(weights, lambda v: _as_tensor(v, "weights", dtype))  # a shared column stays shared
        unknown = sorted(set(out) - set(targets))
        if unknown:
            raise DataError(f"weights name tasks without targets: {unknown}; key them by task name.")
    else:
        w = _as_tensor(weights, "weights", dtype)
        out = dict.fromkeys(targets, w)
    check_weights(out, n, where="the dataset")
    return _moved(out, lambda v: v.reshape(-1)) if out else None


def _as_tensor(x: Any, what: str, dtype: torch.dtype | None) -> Any:
    """A numpy array as a tensor; a floating tensor in ``dtype`` (None: unchanged); others as given."""
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biuf":
            raise DataError(
                f"{what} must hold numbers; got a numpy array of dtype {x.dtype} (encode strings first, e.g. "
                "with TabularPreprocessor)."
            )
        x = torch.from_numpy(np.ascontiguousarray(x))
    if isinstance(x, Tensor) and dtype is not None and x.is_floating_point() and x.dtype != dtype:
        x = x.to(dtype)
    return x


def _rows(t: Any, what: str) -> int:
    if not isinstance(t, Tensor):
        raise DataError(f"{what} must be a torch.Tensor; got {type(t).__name__}.")
    if t.ndim == 0:
        raise DataError(f"{what} must have a leading sample dimension; got a scalar.")
    return int(t.shape[0])


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for (``seed``, ``epoch``): shuffles depend only on both, so runs resume exactly.

    ``stream`` > 0 gives independent seeds for other per-epoch randomness (1: augmentation).
    """
    return mix_seed(seed, epoch) if stream == 0 else mix_seed(seed, epoch, stream)


class TensorBatchLoader:
    """Batches of a :class:`MultiTaskDataset` gathered with one index operation each.

    The shuffle order of epoch ``e`` depends only on ``(seed, e)``; call :meth:`set_epoch`
    (the trainer does) so that resuming a run reproduces the same batches. For
    DistributedDataParallel pass ``num_replicas``/``rank``: each rank reads an equal-length
    shard (padded by wrapping, as torch's DistributedSampler does; ``pad=False``, as for
    evaluation, leaves the shards unpadded so that no sample counts twice). Rank ``r``'s
    ``i``-th batch holds positions ``r, r + N, r + 2N, ...`` of the single-process loader's
    ``i``-th batch of ``N x batch_size`` samples, so ``N`` ranks together see exactly its batches.

    A dataset with an ``augment`` transform has it applied to every batch when ``augment`` is
    True (default: when shuffling, i.e. for the trainer's training loader and never for
    evaluation), with a generator seeded from ``(seed, epoch)``, so augmented epochs are
    reproducible too.
    """

    def __init__(
        self,
        dataset: MultiTaskDataset,
        batch_size: int,
        *,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
        augment: bool | None = None,
        pad: bool = True,
    ) -> None:
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}); got {rank!r}.")
        if len(dataset) == 0:
            raise DataError("Cannot load batches from an empty dataset.")
        self.dataset = dataset
        self.batch_size = batch_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.num_replicas, self.rank, self.pad = num_replicas, rank, pad
        self.apply_augment = shuffle if augment is None else augment
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start(self, batch_index: int) -> None:
        """Begin the next iteration at batch ``batch_index`` of the epoch (exact mid-epoch resume):
        the earlier batches are not gathered (with an ``augment`` transform they are, so that its
        generator advances as in the full epoch). Applies to the next ``__iter__`` only."""
        if not isinstance(batch_index, int) or batch_index < 0:
            raise ValueError(f"set_start takes a batch index >= 0; got {batch_index!r}.")
        self.start = batch_index

    def _indices(self) -> Tensor:
        n = len(self.dataset)
        if self.shuffle:
            g = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
            order = torch.randperm(n, generator=g)
        else:
            order = torch.arange(n)
        return shard(order, self.num_replicas, self.rank, pad=self.pad)

    def __iter__(self) -> Iterator[Batch]:
        start, self.start = self.start, 0  # taken now: set_start applies to this iteration only
        return self._batches(start)

    def _batches(self, start: int) -> Iterator[Batch]:
        order = self._indices()
        transform = getattr(self.dataset, "augment", None) if self.apply_augment else None
        generator = None
        if transform is not None:
            generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch, stream=1))
        for i, chunk in enumerate(order.split(self.batch_size)):
            if self.drop_last and chunk.numel() < self.batch_size:
                break
            if i < start and transform is None:
                continue
            batch = self.dataset.take(chunk)
            if transform is not None:
                batch = dataclasses.replace(batch, inputs=transform(batch.inputs, generator))
            if i >= start:
                yield batch

    def __len__(self) -> int:
        n = len(self.dataset)
        if self.num_replicas > 1:
            n = -(-n // self.num_replicas) if self.pad else len(range(self.rank, n, self.num_replicas))
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)
