"""The epoch layout of streams: every row once, equal steps on every rank, windows and batch boundaries."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mtlkit.data.stream_plan import EpochLayout, rank_range, steps_per_rank
from mtlkit.errors import DataError


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_every_row_once_with_equal_steps_on_every_rank(ranks: int, batch: int) -> None:
    for n in range(ranks, 60):
        steps = steps_per_rank(n, ranks, batch)
        covered = []
        for r in range(ranks):
            start, stop = rank_range(n, ranks, r)
            layout = EpochLayout(np.array([n]), np.array([0]), start, stop, 5, batch, steps)
            bounds = [layout.batch_bounds(k) for k in range(steps)]
            assert bounds[0][0] == 0 and bounds[-1][1] == stop - start
            for (_, hi), (lo2, _) in itertools.pairwise(bounds):
                assert hi == lo2
            sizes = [hi - lo for lo, hi in bounds]
            assert min(sizes) >= 1 and max(sizes) <= batch + 1, (n, ranks, batch, sizes)
            covered.extend(range(start, stop))
        assert covered == list(range(n))
        full = -(-n // (ranks * batch))
        assert steps == full or (steps == full - 1 and n - steps * ranks * batch < ranks)


def test_fewer_rows_than_ranks_is_refused() -> None:
    with pytest.raises(DataError, match="2 row.*3 processes"):
        steps_per_rank(2, 3, 4)


def test_slices_follow_the_fragment_order() -> None:
    sizes = np.array([4, 0, 3, 5])
    layout = EpochLayout(sizes, np.array([2, 0, 3, 1]), 0, 12, 5, 2, 6)
    rows = []
    for w in range(layout.num_windows):
        for p in layout.pieces(w):
            rows.extend((p.fragment, i) for i in range(p.lo, p.hi))
    expect = [(f, i) for f in (2, 0, 3, 1) for i in range(sizes[f])]
    assert rows == expect


def test_training_layouts_are_permuted_per_epoch_and_reproducible() -> None:
    sizes = np.arange(1, 30)
    a = EpochLayout.training(sizes, seed=1, epoch=0, batch_size=4, window_rows=10)
    b = EpochLayout.training(sizes, seed=1, epoch=0, batch_size=4, window_rows=10)
    c = EpochLayout.training(sizes, seed=1, epoch=1, batch_size=4, window_rows=10)
    assert np.array_equal(a.order, b.order) and not np.array_equal(a.order, c.order)
    assert sorted(a.order.tolist()) == list(range(len(sizes)))
    assert a.window_of_batch(7) == divmod(28, 10)
