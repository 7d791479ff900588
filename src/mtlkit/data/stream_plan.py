"""The epoch layout of a stream: pure, deterministic arithmetic on row counts (no reading).

A split's files are cut into *fragments* (a Parquet row group; a whole CSV file), each with its
row count. One epoch of training:

1. the fragments are permuted by ``(seed, epoch)``; their rows, in that order, form the epoch's
   row stream of ``N`` rows;
2. the stream is split into ``R`` contiguous per-rank ranges (rank ``r`` holds ``N // R`` rows, one
   more when ``r < N % R``) and every rank takes the same number of steps ``S``
   (:func:`steps_per_rank`), so no rank waits on a collective another rank never joins;
3. a rank's range is cut into windows of ``shuffle_buffer`` rows; each window's rows are permuted
   by ``(seed, epoch, rank, window)``;
4. the permuted windows, concatenated, are cut into batches: batch ``k`` starts at row ``k * b``
   of the rank's range and the last batch ends at the range's end.

Evaluation uses the fragments in file order, no permutation, and plain contiguous shares (ranks
may differ in batch counts; nothing is padded).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtlkit.distributed import mix_seed
from mtlkit.errors import DataError

__all__ = ["EpochLayout", "Piece", "fragment_order", "rank_range", "steps_per_rank", "window_permutation"]

_FRAGMENTS, _ROWS = 0x5EED_F7A6, 0x5EED_0123  # separate the seed streams of the two permutations


def steps_per_rank(n: int, num_replicas: int, batch_size: int) -> int:
    """Steps every rank takes in a training epoch of ``n`` rows.

    ``S = ceil(n / (R * b))``; when ``S > 1`` and the last global step would hold fewer than ``R``
    rows (some rank would have none), ``S - 1`` steps, the ranks' last batches then holding up to
    ``b + 1`` rows. Every row is used exactly once.

    Raises:
        DataError: fewer rows than ranks.
    """
    if n < num_replicas:
        raise DataError(
            f"The training data has {n} row(s) but {num_replicas} processes train on it; every process needs at "
            "least one row. Use more data or fewer processes."
        )
    s = -(-n // (num_replicas * batch_size))
    if s > 1 and n - (s - 1) * num_replicas * batch_size < num_replicas:
        s -= 1
    return s


def rank_range(n: int, num_replicas: int, rank: int) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous share of ``n`` rows (the first ``n % R``
    ranks hold one row more)."""
    q, r = divmod(n, num_replicas)
    start = rank * q + min(rank, r)
    return start, start + q + (1 if rank < r else 0)


def fragment_order(num_fragments: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The fragments' order in an epoch: a permutation from ``(seed, epoch)``, or file order."""
    if not shuffle:
        return np.arange(num_fragments)
    return np.random.default_rng(mix_seed(seed, epoch, _FRAGMENTS)).permutation(num_fragments)


def window_permutation(size: int, *, seed: int, epoch: int, rank: int, window: int) -> np.ndarray:
    """The row permutation of one shuffle window, from ``(seed, epoch, rank, window)``."""
    return np.random.default_rng(mix_seed(seed, epoch, rank, window, _ROWS)).permutation(size)


@dataclass(frozen=True, slots=True)
class Piece:
    """Rows ``lo:hi`` of fragment ``fragment`` (its index in the stream's fragment table)."""

    fragment: int
    lo: int
    hi: int


@dataclass(frozen=True)
class EpochLayout:
    """One rank's epoch: its row range in the epoch's stream, windows and batch boundaries.

    Attributes:
        sizes: rows per fragment (the stream's fragment table, file order).
        order: the fragments' order in this epoch.
        start, stop: this rank's range of the epoch's row stream.
        window_rows: rows per window (``shuffle_buffer``).
        batch_size: rows per batch.
        steps: batches of this rank in the epoch.
    """

    sizes: np.ndarray
    order: np.ndarray
    start: int
    stop: int
    window_rows: int
    batch_size: int
    steps: int

    @classmethod
    def training(
        cls,
        sizes: np.ndarray,
        *,
        seed: int,
        epoch: int,
        batch_size: int,
        window_rows: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> EpochLayout:
        sizes = np.asarray(sizes, dtype=np.int64)
        n = int(sizes.sum())
        steps = steps_per_rank(n, num_replicas, batch_size)
        start, stop = rank_range(n, num_replicas, rank)
        order = fragment_order(len(sizes), seed=seed, epoch=epoch, shuffle=True)
        return cls(sizes, order, start, stop, window_rows, batch_size, steps)

    @classmethod
    def evaluation(
        cls, sizes: np.ndarray, *, batch_size: int, window_rows: int, num_replicas: int = 1, rank: int = 0
    ) -> EpochLayout:
        sizes = np.asarray(sizes, dtype=np.int64)
        start, stop = rank_range(int(sizes.sum()), num_replicas, rank)
        steps = -(-(stop - start) // batch_size)
        return cls(sizes, np.arange(len(sizes)), start, stop, window_rows, batch_size, steps)

    @property
    def rows(self) -> int:
        """Rows of this rank in the epoch."""
        return self.stop - self.start

    @property
    def num_windows(self) -> int:
        return -(-self.rows // self.window_rows)

    def window_bounds(self, window: int) -> tuple[int, int]:
        """Rank-local ``(lo, hi)`` rows of window ``window``."""
        lo = window * self.window_rows
        return lo, min(lo + self.window_rows, self.rows)

    def batch_bounds(self, k: int) -> tuple[int, int]:
        """Rank-local ``(lo, hi)`` rows of batch ``k`` (the last batch ends at the range's end)."""
        lo = k * self.batch_size
        return lo, (self.rows if k == self.steps - 1 else lo + self.batch_size)

    def window_of_batch(self, k: int) -> tuple[int, int]:
        """``(window, offset)``: the window holding batch ``k``'s first row, and that row's place in it."""
        return divmod(k * self.batch_size, self.window_rows)

    def pieces(self, window: int) -> list[Piece]:
        """The fragment slices that make up window ``window``, in stream order."""
        lo, hi = self.window_bounds(window)
        return self.slices(self.start + lo, self.start + hi)

    def slices(self, g0: int, g1: int) -> list[Piece]:
        """The fragment slices of rows ``g0:g1`` of the epoch's stream."""
        ordered = self.sizes[self.order]
        ends = np.cumsum(ordered)
        starts = ends - ordered
        out = []
        i = int(np.searchsorted(ends, g0, side="right"))
        while i < len(ordered) and starts[i] < g1:
            lo, hi = max(g0, int(starts[i])) - int(starts[i]), min(g1, int(ends[i])) - int(starts[i])
            if hi > lo:
                out.append(Piece(int(self.order[i]), lo, hi))
            i += 1
        return out
