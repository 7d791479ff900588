"""NDCG@k and per-group AUC against direct per-group implementations (a loop over groups)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mtlkit.metrics import group_auc, group_ndcg


def _direct_ndcg(
    scores: np.ndarray, gains: np.ndarray, groups: np.ndarray, k: int | None, exp: bool
) -> float:
    values = []
    for gid in dict.fromkeys(groups.tolist()):
        idx = [i for i in range(len(groups)) if groups[i] == gid]
        g = [(2.0 ** gains[i] - 1.0) if exp else gains[i] for i in idx]
        by_score = sorted(range(len(idx)), key=lambda j: -scores[idx[j]])  # sorted() is stable
        ideal = sorted(g, reverse=True)
        top = len(idx) if k is None else k
        dcg = sum(g[j] / math.log2(r + 2) for r, j in enumerate(by_score[:top]))
        idcg = sum(v / math.log2(r + 2) for r, v in enumerate(ideal[:top]))
        if idcg > 0:
            values.append(dcg / idcg)
    return sum(values) / len(values) if values else math.nan


def _direct_auc(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray, by_size: bool) -> float:
    total = weight = 0.0
    for gid in dict.fromkeys(groups.tolist()):
        idx = [i for i in range(len(groups)) if groups[i] == gid]
        pos = [scores[i] for i in idx if labels[i] == 1]
        neg = [scores[i] for i in idx if labels[i] == 0]
        if not pos or not neg:
            continue
        wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg)
        w = len(idx) if by_size else 1.0
        total += w * wins / (len(pos) * len(neg))
        weight += w
    return total / weight if weight else math.nan


def _data(seed: int, n: int = 300, ties: bool = False) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 25, n)  # shuffled, unequal group sizes (some groups one class only)
    scores = rng.normal(size=n)
    if ties:
        scores = np.round(scores, 0)
    gains = rng.integers(0, 4, n).astype(float) * (rng.random(n) < 0.6)
    labels = (rng.random(n) < 0.3).astype(float)
    return scores, gains, labels, groups.astype(float)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("k", [1, 3, 10, None])
@pytest.mark.parametrize("exp", [False, True])
def test_group_ndcg_matches_a_direct_per_group_loop(seed: int, k: int | None, exp: bool) -> None:
    scores, gains, _, groups = _data(seed)
    got = group_ndcg(scores, gains, groups, k=k, gain="exponential" if exp else "linear")
    want = _direct_ndcg(scores, gains, groups, k, exp)
    assert abs(got - want) <= 1e-12 * max(1.0, abs(want))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("by_size", [False, True])
def test_group_auc_matches_a_direct_per_group_loop(seed: int, ties: bool, by_size: bool) -> None:
    scores, _, labels, groups = _data(seed, ties=ties)
    got = group_auc(scores, labels, groups, weighting="size" if by_size else "uniform")
    want = _direct_auc(scores, labels, groups, by_size)
    assert abs(got - want) <= 1e-12


def test_ranking_metrics_known_values_and_edge_cases() -> None:
    # one group, perfect and reversed order
    gains = torch.tensor([3.0, 2.0, 0.0])
    assert group_ndcg(torch.tensor([0.9, 0.5, 0.1]), gains, torch.zeros(3)) == pytest.approx(1.0)
    reversed_ = (0 / 1 + 2 / math.log2(3) + 3 / math.log2(4)) / (3 + 2 / math.log2(3))
    assert group_ndcg(torch.tensor([0.1, 0.5, 0.9]), gains, torch.zeros(3)) == pytest.approx(reversed_)
    assert group_auc([0.9, 0.1, 0.5], [1, 0, 0], [0, 0, 0]) == 1.0
    assert math.isnan(group_auc([0.9, 0.1], [1, 1], [0, 0]))  # one class only: no group qualifies
    assert math.isnan(group_ndcg([0.9, 0.1], [0, 0], [0, 0]))  # no positive gain
    with pytest.raises(ValueError, match="one entry per item"):
        group_ndcg([1.0, 2.0], [1.0], [0, 0])
    with pytest.raises(ValueError, match="finite"):
        group_auc([float("nan"), 1.0], [1, 0], [0, 0])
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        group_auc([0.2, 1.0], [2, 0], [0, 0])
