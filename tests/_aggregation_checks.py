"""Reusable checks for the gradient aggregators: hostile Jacobians, independent references and
assertions of each method's own guarantees, with tolerances relative to the inputs' scale.

Every tolerance is ``tol * scale`` where ``tol`` is a multiple of the dtype's epsilon (or of its
square root for quantities that come from a Gramian's quadratic form) and ``scale`` the size of
the terms the checked quantity sums (for ``g_i . d`` with ``d = J^T w``: ``||g_i|| sum_k |w_k| ||g_k||``),
so a row 1e12 times shorter than another is checked as strictly as the longest one.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from torch import Tensor

# ------------------------------------------------------------------ hostile Jacobians

CASES = ("scaled", "opposite", "duplicated", "zero_rows", "rank_deficient", "stationary")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def row_scales(k: int, *, spread: float = 12.0, seed: int = 0) -> Tensor:
    """``[k]`` float64 scales ``10^u``, ``u`` uniform in ``[-spread, spread]``, the extremes included."""
    u = (torch.rand(k, generator=_gen(seed), dtype=torch.float64) * 2 - 1) * spread
    if k >= 2:
        u[0], u[-1] = spread, -spread
    return 10.0**u


def hostile(case: str, k: int, p: int, *, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """A ``[k, p]`` Jacobian of one of :data:`CASES` (built in float64, then cast)."""
    g = _gen(seed)
    J = torch.randn(k, p, generator=g, dtype=torch.float64)
    if case == "scaled":  # rows 1e-12 .. 1e12 relative to each other
        J = J * row_scales(k, seed=seed)[:, None]
    elif case == "opposite" and k >= 2:  # two exactly opposite rows
        J[1] = -J[0]
    elif case == "duplicated" and k >= 2:  # repeated rows
        J[k // 2 :] = J[: k - k // 2].clone()
    elif case == "zero_rows":  # one (k <= 2) or two zero rows
        J[k // 2] = 0
        if k > 2:
            J[-1] = 0
    elif case == "rank_deficient":  # rank max(1, k // 3)
        r = max(1, k // 3)
        J = torch.randn(k, r, generator=g, dtype=torch.float64) @ torch.randn(
            r, p, generator=g, dtype=torch.float64
        )
    elif case == "stationary" and k >= 2:  # 0 in the convex hull: a positive combination vanishes
        J[-1] = -(torch.rand(k - 1, generator=g, dtype=torch.float64) + 0.1) @ J[:-1]
    return J.to(dtype)


# ------------------------------------------------------------------ tolerances


def eps(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).eps)


def row_term_scale(J: Tensor, w: Tensor) -> Tensor:  # noqa: N803
    """``[k]``: ``||g_i|| sum_k |w_k| ||g_k||``, the size of the terms of ``g_i . (J^T w)`` (float64)."""
    norms = J.double().norm(dim=1)
    return norms * (w.double().abs() @ norms)


# ------------------------------------------------------------------ assertions


def assert_finite(J: Tensor, vector: Tensor, weights: Tensor | None) -> None:  # noqa: N803
    assert vector.shape == (J.shape[1],) and vector.dtype == J.dtype
    assert torch.isfinite(vector).all(), vector
    if weights is not None:
        assert weights.shape == (J.shape[0],) and weights.dtype == J.dtype
        assert torch.isfinite(weights).all(), weights
        scale = float(weights.double().abs() @ J.double().norm(dim=1))
        err = float((weights.double() @ J.double() - vector.double()).norm())
        assert err <= 1e3 * eps(J.dtype) * max(scale, 1e-300), (err, scale)  # d = J^T w


def assert_non_conflicting(
    J: Tensor, d: Tensor, w: Tensor, *, tol: float, floor: Tensor | None = None  # noqa: N803
) -> None:
    """``g_i . d >= floor_i`` (default 0) up to ``tol`` times the size of its terms, for every row."""
    inner = J.double() @ d.double()
    lower = torch.zeros_like(inner) if floor is None else floor
    slack = inner - lower + tol * row_term_scale(J, w)
    assert (slack >= 0).all(), (inner, lower, slack)


def assert_equal_projections(J: Tensor, d: Tensor, w: Tensor, *, tol: float) -> None:  # noqa: N803
    """IMTL-G: ``u_i . d`` equal for every non-zero row (``u_i = g_i / ||g_i||``)."""
    Jd = J.double()
    norms = Jd.norm(dim=1)
    live = norms > 0
    proj = (Jd[live] @ d.double()) / norms[live]
    size = row_term_scale(J, w)[live] / norms[live]
    assert float((proj - proj.mean()).abs().max()) <= tol * float(size.max()), (proj, size)


def assert_nash_equations(J: Tensor, alpha: Tensor, *, tol: float) -> None:  # noqa: N803
    """``alpha_i (J J^T alpha)_i = 1`` for every non-zero row (``alpha_i = 0`` for zero rows)."""
    Jd, a = J.double(), alpha.double()
    live = Jd.norm(dim=1) > 0
    if not live.any():  # every row zero: documented weights 1, nothing to bargain
        return
    assert (a[live] > 0).all() and (a[~live] == 0).all(), a
    G = Jd @ Jd.T
    lhs = a * (G @ a)
    size = a * (G.abs() @ a)
    assert float(((lhs - 1).abs() / size.clamp(min=1.0))[live].max()) <= tol, lhs


def min_norm_reference(J: Tensor, *, digits: int = 60) -> np.ndarray:  # noqa: N803
    """MGDA's min-norm point of the rows' convex hull, to ``digits`` significant digits: every
    support, its equality-constrained minimiser in ``mpmath``, the best feasible one (``T <= 6``)."""
    mpmath = pytest.importorskip("mpmath")  # installed with torch (through sympy)
    k = J.shape[0]
    with mpmath.workdps(digits):
        rows = [[mpmath.mpf(float(x)) for x in r] for r in J.double().tolist()]
        G = mpmath.matrix(k, k)
        for i, j in itertools.product(range(k), range(k)):
            G[i, j] = mpmath.fsum(a * b for a, b in zip(rows[i], rows[j]))
        best, best_w = None, None
        for size in range(1, k + 1):
            for S in itertools.combinations(range(k), size):
                K = mpmath.matrix(size + 1, size + 1)
                for a, i in enumerate(S):
                    for b, j in enumerate(S):
                        K[a, b] = G[i, j]
                    K[a, size] = K[size, a] = 1
                rhs = mpmath.matrix(size + 1, 1)
                rhs[size] = 1
                try:
                    mu = mpmath.lu_solve(K, rhs)
                except ZeroDivisionError:
                    continue
                if any(mu[a] < 0 for a in range(size)):
                    continue
                w = [mpmath.mpf(0)] * k
                for a, i in enumerate(S):
                    w[i] = mu[a]
                value = mpmath.fsum(w[i] * G[i, j] * w[j] for i in range(k) for j in range(k))
                if best is None or value < best:
                    best, best_w = value, w
        assert best_w is not None
        d = [mpmath.fsum(best_w[i] * rows[i][c] for i in range(k)) for c in range(J.shape[1])]
        return np.array([float(x) for x in d])


def relative_error(got: Tensor | np.ndarray, want: np.ndarray) -> float:
    got = np.asarray(got.double() if isinstance(got, Tensor) else got, dtype=np.float64)
    return float(np.linalg.norm(got - want) / max(np.linalg.norm(want), 1e-300))


def permuted(n: int, seed: int) -> Tensor:
    return torch.randperm(n, generator=_gen(seed))


def mean_conflict(J: Tensor) -> float:  # noqa: N803
    """``min_i g_i . mean`` relative to ``max ||g_i||^2`` (negative: the mean conflicts)."""
    Jd = J.double()
    return float((Jd @ Jd.mean(0)).min() / Jd.norm(dim=1).max() ** 2)


__all__ = [
    "CASES",
    "assert_equal_projections",
    "assert_finite",
    "assert_nash_equations",
    "assert_non_conflicting",
    "eps",
    "hostile",
    "math",
    "mean_conflict",
    "min_norm_reference",
    "permuted",
    "relative_error",
    "row_scales",
    "row_term_scale",
]
