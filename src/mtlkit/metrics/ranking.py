"""Ranking metrics over groups (queries, users, slates): NDCG@k and per-group AUC.

Both take flat arrays, one entry per item, and a group id per item; items of a group need not be
contiguous. Computation is vectorised (one sort, no loop over groups).

* :func:`group_ndcg`: per group ``DCG@k / IDCG@k`` with ``DCG@k = sum_{i<k} g_i / log2(i + 2)``
  over the items sorted by score (descending; ties keep the input order) and ``IDCG@k`` the same
  over the items sorted by gain; ``g = gain`` (``gain="linear"``) or ``2 ** gain - 1``
  (``"exponential"``). Groups whose IDCG is 0 (no positive gain) are skipped. Returns the mean
  over groups.
* :func:`group_auc`: per group the ROC AUC of the scores against binary labels (the
  Mann-Whitney statistic; tied scores count one half); groups with only one class are skipped.
  Returns the mean over groups, uniform or weighted by group size (``weighting="size"``,
  "GAUC" as in CTR papers). With sample ``weights`` each item counts ``w`` times: a group's AUC
  is the weighted share of its correctly ordered (positive, negative) pairs (pair weight
  ``w_pos · w_neg``), its size is its weight sum, and a group whose positives or negatives all
  weigh 0 counts as single-class. :func:`group_auc_stats` also returns how many groups were used
  and skipped.

Both return NaN when no group qualifies.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from torch import Tensor

__all__ = ["group_auc", "group_auc_stats", "group_ndcg"]

ArrayLike = Tensor | np.ndarray


def _arrays(*xs: ArrayLike | object) -> list[np.ndarray]:
    out = []
    for x in xs:
        a = x.detach().cpu().double().numpy() if isinstance(x, Tensor) else np.asarray(x, dtype=np.float64)
        out.append(a.reshape(-1))
    n = out[0].shape[0]
    if any(a.shape[0] != n for a in out):
        raise ValueError(
            f"ranking metrics: the arrays must have one entry per item; got lengths {[a.shape[0] for a in out]}."
        )
    if any(not np.all(np.isfinite(a)) for a in out):
        raise ValueError("ranking metrics: scores, gains/labels and groups must be finite numbers (no NaN).")
    return out


def _group_codes(groups: np.ndarray) -> tuple[np.ndarray, int]:
    _, codes = np.unique(groups, return_inverse=True)
    return codes.reshape(-1), int(codes.max()) + 1 if codes.size else 0


def _rank_in_group(codes: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, rank)``: items sorted by group then descending ``key`` (stable), and each sorted
    item's 0-based position within its group."""
    order = np.lexsort((np.arange(key.shape[0]), -key, codes))
    g = codes[order]
    starts = np.r_[0, np.flatnonzero(g[1:] != g[:-1]) + 1]
    first = np.repeat(starts, np.diff(np.r_[starts, g.shape[0]]))
    return order, np.arange(g.shape[0]) - first


def group_ndcg(
    scores: ArrayLike,
    gains: ArrayLike,
    groups: ArrayLike,
    *,
    k: int | None = 10,
    gain: Literal["linear", "exponential"] = "linear",
) -> float:
    """Mean NDCG@k over groups (see the module doc); ``k=None``: the whole group."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"group_ndcg: k must be an int >= 1 or None; got {k!r}.")
    if gain not in ("linear", "exponential"):
        raise ValueError(f"group_ndcg: gain must be 'linear' or 'exponential'; got {gain!r}.")
    s, y, grp = _arrays(scores, gains, groups)
    if np.any(y < 0):
        raise ValueError("group_ndcg: gains must be >= 0.")
    if s.size == 0:
        return math.nan
    g = y if gain == "linear" else np.exp2(y) - 1.0
    codes, n_groups = _group_codes(grp)
    cutoff = np.inf if k is None else k

    def dcg(key: np.ndarray) -> np.ndarray:
        order, rank = _rank_in_group(codes, key)
        w = np.where(rank < cutoff, 1.0 / np.log2(rank + 2.0), 0.0)
        return np.bincount(codes[order], weights=g[order] * w, minlength=n_groups)

    actual, ideal = dcg(s), dcg(g)
    ok = ideal > 0
    return float(np.mean(actual[ok] / ideal[ok])) if ok.any() else math.nan


def group_auc(
    scores: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    *,
    weighting: Literal["uniform", "size"] = "uniform",
    weights: ArrayLike | None = None,
) -> float:
    """Mean per-group ROC AUC (see the module doc)."""
    return group_auc_stats(scores, labels, groups, weighting=weighting, weights=weights)[0]


def group_auc_stats(
    scores: ArrayLike,
    labels: ArrayLike,
    groups: ArrayLike,
    *,
    weighting: Literal["uniform", "size"] = "uniform",
    weights: ArrayLike | None = None,
) -> tuple[float, int, int]:
    """``(mean per-group AUC, groups used, single-class groups skipped)`` (see the module doc).

    ``groups`` may hold any numbers, int64 ids included (compared exactly, never as floats)."""
    if weighting not in ("uniform", "size"):
        raise ValueError(f"group_auc: weighting must be 'uniform' or 'size'; got {weighting!r}.")
    grp = groups.detach().cpu().numpy() if isinstance(groups, Tensor) else np.asarray(groups)
    grp = grp.reshape(-1)
    zero = np.zeros(grp.shape[0])
    s, y, w = _arrays(scores, labels, zero if weights is None else weights)
    if grp.shape[0] != s.shape[0]:
        raise ValueError(
            f"ranking metrics: the arrays must have one entry per item; got lengths {[s.shape[0], grp.shape[0]]}."
        )
    if weights is None:
        w = np.ones_like(s)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("group_auc: labels must be 0 or 1.")
    if np.any(w < 0):
        raise ValueError("group_auc: weights must be >= 0.")
    if s.size == 0:
        return math.nan, 0, 0
    codes, n_groups = _group_codes(grp)
    # sorted by group, then ascending score; a run is a group's items of one score (a tie)
    order = np.lexsort((s, codes))
    gs, ss, ys, ws = codes[order], s[order], y[order], w[order]
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    new_run = new_group | np.r_[True, ss[1:] != ss[:-1]]
    run_id = np.cumsum(new_run) - 1
    wneg = ws * (1.0 - ys)
    wpos = ws * ys
    neg_run = np.bincount(run_id, weights=wneg)  # negative weight of each run
    # negative weight of the group's runs strictly below each run: a cumulative sum restarted per group
    cum = np.cumsum(neg_run) - neg_run
    run_group = gs[new_run]
    first_run = np.flatnonzero(np.r_[True, run_group[1:] != run_group[:-1]])
    group_base = np.repeat(cum[first_run], np.diff(np.r_[first_run, run_group.shape[0]]))
    below = cum - group_base
    # each positive wins against the negatives below it and ties half of those in its run
    wins = np.bincount(gs, weights=wpos * (below[run_id] + 0.5 * neg_run[run_id]), minlength=n_groups)
    p = np.bincount(gs, weights=wpos, minlength=n_groups)
    n = np.bincount(gs, weights=wneg, minlength=n_groups)
    size = np.bincount(gs, weights=ws, minlength=n_groups)
    ok = (p > 0) & (n > 0)
    used = int(ok.sum())
    if not used:
        return math.nan, 0, n_groups
    auc = wins[ok] / (p[ok] * n[ok])
    gw = np.ones_like(auc) if weighting == "uniform" else size[ok]
    return float(np.sum(auc * gw) / np.sum(gw)), used, n_groups - used
