"""Windows read and encoded (in DataLoader workers or in-process), re-batched in the main process.

:class:`WindowSource` is a ``torch.utils.data.IterableDataset`` whose worker ``w`` of ``W`` reads,
encodes and (for training) permutes windows ``w, w + W, ...`` of one rank's epoch
(:class:`~mtlkit.data.stream_plan.EpochLayout`) and yields each as a dict of tensors; the
DataLoader's round robin over workers returns them in window order (a small reorder buffer
makes that certain). :class:`StreamLoader` cuts the windows into batches at the layout's batch
boundaries, so the batches are identical for any number of workers. Everything a worker needs
is plain data (file paths, arrays, the preprocessor's JSON state), so it pickles under ``spawn``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.data.batch import Batch
from mtlkit.data.schema import CATEGORICAL
from mtlkit.data.stream_encode import StreamEncoder
from mtlkit.data.stream_plan import EpochLayout, window_permutation
from mtlkit.data.stream_read import FragmentReader, Fragments
from mtlkit.distributed import mix_seed
from mtlkit.errors import DataError
from mtlkit.tasks import Task

if TYPE_CHECKING:
    from mtlkit.data.streaming import TabularStream

__all__ = ["StreamLoader", "WindowSource", "default_workers"]

_DROPOUT = 0xD409  # the seed stream of UnknownCategoryDropout in a window


def default_workers() -> int:
    """``min(4, cores - 1)``, at least 0."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


class WindowSource(torch.utils.data.IterableDataset):
    """The encoded windows ``first, first + 1, ...`` of one rank's epoch, split over DataLoader workers."""

    def __init__(
        self,
        fragments: Fragments,
        encoder: StreamEncoder,
        layout: EpochLayout,
        *,
        first: int,
        delimiter: str,
        shuffle: bool,
        seed: int,
        epoch: int,
        rank: int,
        unknown_fraction: float,
    ) -> None:
        self.fragments, self.encoder, self.layout = fragments, encoder, layout
        self.first, self.delimiter, self.shuffle = first, delimiter, shuffle
        self.seed, self.epoch, self.rank = seed, epoch, rank
        self.unknown_fraction = unknown_fraction

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, count = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = FragmentReader(
            self.fragments,
            [*self.encoder.feature_columns, *self.encoder.label_columns],
            delimiter=self.delimiter,
        )
        try:
            for j in range(self.first + wid, self.layout.num_windows, count):
                try:
                    window = self.window(j, reader)
                except DataError as exc:
                    if info is None:
                        raise
                    # handed to the main process as a value: it re-raises the DataError itself (the
                    # DataLoader would wrap it in a worker traceback)
                    yield {"window": j, "error": exc}
                    return
                yield window
        finally:
            reader.close()

    def window(self, j: int, reader: FragmentReader) -> dict[str, Any]:
        """Window ``j``: its rows encoded (and permuted and augmented when training), as tensors."""
        parts = []
        for p in self.layout.pieces(j):
            origin, table = reader.read(p.fragment, p.lo, p.hi)
            parts.append(self.encoder.encode(table, origin))
        arrays = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
        if self.shuffle:
            n = len(next(iter(arrays.values())))
            perm = window_permutation(n, seed=self.seed, epoch=self.epoch, rank=self.rank, window=j)
            arrays = {k: v[perm] for k, v in arrays.items()}
        out: dict[str, Any] = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
        if self.shuffle and self.unknown_fraction > 0 and CATEGORICAL in out:
            g = torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, j, _DROPOUT))
            drop = torch.rand(out[CATEGORICAL].shape, generator=g) < self.unknown_fraction
            out[CATEGORICAL] = out[CATEGORICAL].masked_fill(drop, 0)
        out["window"] = j
        return out


class StreamLoader:
    """Batches of one rank's epoch of a :class:`~mtlkit.data.streaming.TabularStream`.

    Training (``shuffle``): the epoch layout of :mod:`mtlkit.data.stream_plan` from
    ``(seed, epoch)``; every rank has :meth:`__len__` steps. Evaluation: file order, this rank's
    contiguous share, nothing padded. :meth:`set_start` makes the next iteration begin at a batch
    of the epoch without reading the windows before it.

    ``prevalidated``: the batches' targets are valid by construction (the encoder refuses a bad
    label, naming its file and row), so the trainer does not check them batch by batch.
    """

    prevalidated = True

    def __init__(
        self,
        stream: TabularStream,
        tasks: Sequence[Task],
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1; got {batch_size!r}.")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, num_replicas={num_replicas}); got {rank!r}.")
        self.stream, self.tasks, self.batch_size = stream, tuple(tasks), batch_size
        self.shuffle, self.seed = shuffle, seed
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch = 0
        self.start = 0
        self.layout(0)  # refuses fewer rows than ranks now, not at the first epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def set_start(self, batch_index: int) -> None:
        """The next iteration begins at batch ``batch_index`` of the epoch (then back to 0)."""
        if not isinstance(batch_index, int) or batch_index < 0:
            raise ValueError(f"set_start takes a batch index >= 0; got {batch_index!r}.")
        self.start = batch_index

    def layout(self, epoch: int) -> EpochLayout:
        sizes = self.stream.fragments.sizes
        w = self.stream.shuffle_buffer
        if self.shuffle:
            return EpochLayout.training(
                sizes,
                seed=self.seed,
                epoch=epoch,
                batch_size=self.batch_size,
                window_rows=w,
                num_replicas=self.num_replicas,
                rank=self.rank,
            )
        return EpochLayout.evaluation(
            sizes, batch_size=self.batch_size, window_rows=w, num_replicas=self.num_replicas, rank=self.rank
        )

    def __len__(self) -> int:
        return self.layout(self.epoch).steps

    def _windows(self, layout: EpochLayout, first: int) -> Iterator[dict[str, Any]]:
        source = WindowSource(
            self.stream.fragments,
            self.stream.encoder,
            layout,
            first=first,
            delimiter=self.stream.delimiter,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            rank=self.rank,
            unknown_fraction=self.stream.unknown_fraction if self.shuffle else 0.0,
        )
        workers = min(self.stream.num_workers, layout.num_windows - first)
        if workers <= 0:
            yield from source
            return
        # its own generator: the DataLoader draws the workers' base seed from it, not from torch's
        # global generator, which dropout uses (a resumed epoch would otherwise draw other masks)
        loader = torch.utils.data.DataLoader(
            source,
            batch_size=None,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            generator=torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, self.rank, first)),
        )
        held: dict[int, dict[str, Any]] = {}
        expect = first
        for window in loader:
            held[int(window["window"])] = window
            while expect in held:
                window = held.pop(expect)
                if "error" in window:
                    raise window["error"]
                yield window
                expect += 1

    def __iter__(self) -> Iterator[Batch]:
        layout = self.layout(self.epoch)
        k0, self.start = self.start, 0
        if k0 >= layout.steps:
            return
        first, skip = layout.window_of_batch(k0)
        windows = self._windows(layout, first)
        pending: list[dict[str, Tensor]] = []
        held = 0
        for k in range(k0, layout.steps):
            lo, hi = layout.batch_bounds(k)
            need = hi - lo
            while held < need + skip:
                w = next(windows)
                w.pop("window")
                pending.append(w)
                held += len(next(iter(w.values())))
            if skip:  # the rows of the first window before batch k0
                pending[0] = {key: v[skip:] for key, v in pending[0].items()}
                held -= skip
                skip = 0
            rows, taken = [], 0
            while taken < need:
                first_part = pending[0]
                n = len(next(iter(first_part.values())))
                m = min(n, need - taken)
                rows.append({key: v[:m] for key, v in first_part.items()})
                if m == n:
                    pending.pop(0)
                else:
                    pending[0] = {key: v[m:] for key, v in first_part.items()}
                taken += m
            held -= need
            yield self._batch(rows)
        windows.close()

    def _batch(self, rows: list[dict[str, Tensor]]) -> Batch:
        data = rows[0] if len(rows) == 1 else {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
        inputs = {k: v for k, v in data.items() if not k.startswith(("y:", "w:", "g:"))}
        targets = {k[2:]: v for k, v in data.items() if k.startswith("y:")}
        weights = {k[2:]: v for k, v in data.items() if k.startswith("w:")}
        columns = {k[2:]: v for k, v in data.items() if k.startswith("g:")}
        return Batch(inputs, targets, weights=weights or None, columns=columns or None)

    def __repr__(self) -> str:
        return (
            f"StreamLoader(rows={self.stream.num_rows}, batch_size={self.batch_size}, shuffle={self.shuffle}, "
            f"rank={self.rank}/{self.num_replicas}, workers={self.stream.num_workers})"
        )
