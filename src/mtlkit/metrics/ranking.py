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
  "GAUC" as in CTR papers).

Both return NaN when no group qualifies.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from torch import Tensor

__all__ = ["group_auc", "group_ndcg"]

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
) -> float:
    """Mean per-group ROC AUC (see the module doc)."""
    if weighting not in ("uniform", "size"):
        raise ValueError(f"group_auc: weighting must be 'uniform' or 'size'; got {weighting!r}.")
    s, y, grp = _arrays(scores, labels, groups)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("group_auc: labels must be 0 or 1.")
    if s.size == 0:
        return math.nan
    codes, n_groups = _group_codes(grp)
    # mid-ranks (1-based, ascending score) within each group: ties share their mean rank
    order = np.lexsort((s, codes))
    gs, ss = codes[order], s[order]
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    new_run = new_group | np.r_[True, ss[1:] != ss[:-1]]
    run_id = np.cumsum(new_run) - 1
    run_start = np.flatnonzero(new_run)
    run_len = np.diff(np.r_[run_start, s.shape[0]])
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(s.shape[0]), 0))
    mid = (run_start[run_id] - group_start) + (run_len[run_id] + 1) / 2.0
    pos = y[order]
    n_pos = np.bincount(gs, weights=pos, minlength=n_groups)
    n_all = np.bincount(gs, minlength=n_groups).astype(np.float64)
    n_neg = n_all - n_pos
    rank_sum = np.bincount(gs, weights=mid * pos, minlength=n_groups)
    ok = (n_pos > 0) & (n_neg > 0)
    if not ok.any():
        return math.nan
    auc = (rank_sum[ok] - n_pos[ok] * (n_pos[ok] + 1) / 2.0) / (n_pos[ok] * n_neg[ok])
    w = np.ones_like(auc) if weighting == "uniform" else n_all[ok]
    return float(np.sum(auc * w) / np.sum(w))
