"""Pure solvers of the Gramian-based aggregators: numpy ``[T, T]`` Gramian in, ``[T]`` weights out.

Nothing here touches torch or a device: :class:`~mtlkit.aggregation.GramianWeightedAggregator`
computes ``G = J J^T`` on the Jacobian's device, copies it to the host once (float64) and hands
it to these functions with the :class:`Precision` it was computed in.

Scale. Each solver works on a rescaled Gramian so that its tolerances are relative:

- methods whose solution is invariant to rescaling the rows (UPGrad's projections, IMTL-G's
  directions, Nash-MTL's utilities) solve on the **unit-diagonal** Gramian (cosines) and map the
  weights back, so a row 1e12 times smaller than another is solved as accurately as an equal one;
- MGDA and CAGrad (not invariant) divide ``G`` by its largest diagonal entry; Wolfe's algorithm
  stops on a KKT test relative to the magnitudes of the terms it sums, and its affine minimiser
  is solved in the unit-diagonal coordinates of its support.

A row is zero when its squared norm is 0 or below ``tiny / eps`` of the Gramian's dtype (where
its direction is lost to underflow); every method gives it weight 0 (or ignores it).

- :func:`min_norm_simplex`: Wolfe's exact min-norm-point algorithm (MGDA, CAGrad's inner problem).
- :func:`nnls_lower_bound`, :func:`upgrad_weights`: Lawson-Hanson active set for ``min v^T G v``
  s.t. ``v >= u`` (UPGrad).
- :func:`nash_bargaining`: damped Newton on ``1/2 a^T G a - sum log a`` (Nash-MTL).
- :func:`cagrad_weights`: CAGrad's ``max_d min_i g_i . d`` in the ball ``||d - g_0|| <= c ||g_0||``.
- :func:`imtl_g_weights`, :func:`aligned_weights`: closed forms (IMTL-G, Aligned-MTL).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "FLOAT64",
    "Precision",
    "aligned_weights",
    "cagrad_weights",
    "imtl_g_weights",
    "min_norm_simplex",
    "nash_bargaining",
    "nnls_lower_bound",
    "unit_diagonal",
    "upgrad_weights",
]

# relative tolerance of the active-set solvers (on a Gramian scaled to max(diag) == 1, or unit diagonal)
_TOL = 1e-14
# Wolfe's optimality test: the KKT inequality may fail by this much relative to its terms
_KKT_TOL = 1e-12


@dataclass(frozen=True)
class Precision:
    """The floating-point format a Gramian was computed in (before its float64 host copy).

    Attributes:
        eps: machine epsilon: entry ``G_ij`` is exact to about ``eps ||g_i|| ||g_j||``, so a norm
            computed from ``G`` (a quadratic form) is exact to about ``sqrt(eps)`` of the largest row norm.
        tiny: the smallest normal number; a squared row norm below ``tiny / eps`` has lost its
            direction to underflow and counts as a zero row.
    """

    eps: float
    tiny: float

    @property
    def zero_norm(self) -> float:
        """A norm computed from a Gramian scaled to ``max(diag) == 1`` below this is round-off."""
        return 10.0 * math.sqrt(self.eps)


FLOAT64 = Precision(eps=float(np.finfo(np.float64).eps), tiny=float(np.finfo(np.float64).tiny))


# --------------------------------------------------------------------------- small linear algebra


def _solve(mat: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``mat x = b``; the minimum-norm least-squares solution when ``mat`` is singular."""
    if mat.shape[0] == 1:  # the common 1 x 1 case without LAPACK's call overhead (same quotient)
        if mat[0, 0] != 0.0:
            x = b / mat[0, 0]
            if np.isfinite(x).all():
                return x
        return np.linalg.lstsq(mat, b, rcond=None)[0]
    try:
        x = np.linalg.solve(mat, b)
        if np.isfinite(x).all():
            return x
    except np.linalg.LinAlgError:
        pass
    return np.linalg.lstsq(mat, b, rcond=None)[0]


def _scaled(gram: np.ndarray) -> tuple[np.ndarray, float]:
    """``G / max(diag(G))`` and the scale (0 when every row is zero)."""
    scale = float(np.max(np.diag(gram))) if gram.size else 0.0
    if not math.isfinite(scale) or scale <= 0.0:
        return gram, 0.0
    return gram / scale, scale


def unit_diagonal(gram: np.ndarray, precision: Precision = FLOAT64) -> tuple[np.ndarray, np.ndarray]:
    """``(C, norms)``: the cosine Gramian ``C_ij = G_ij / (||g_i|| ||g_j||)`` (unit diagonal,
    entries clipped to ``[-1, 1]``) and the row norms; zero rows get norm 0 and a zero row and
    column in ``C``. ``G_ij`` is exact to ``eps ||g_i|| ||g_j||``, so ``C`` is exact to ``eps``
    whatever the ratio of the row norms."""
    diag = np.diag(gram)
    floor = precision.tiny / precision.eps
    if diag.min() > floor:  # the common case: no zero row
        norms = np.sqrt(diag)
        inv = 1.0 / norms
        cos = gram * inv[:, None] * inv[None, :]
        np.clip(cos, -1.0, 1.0, out=cos)
        np.fill_diagonal(cos, 1.0)
        return cos, norms
    zero = ~(diag > floor)  # also NaN
    norms = np.where(zero, 0.0, np.sqrt(np.where(zero, 1.0, diag)))
    inv = np.where(zero, 0.0, 1.0 / np.where(zero, 1.0, norms))
    cos = np.clip(gram * inv[:, None] * inv[None, :], -1.0, 1.0)
    np.fill_diagonal(cos, np.where(zero, 0.0, 1.0))
    return cos, norms


# --------------------------------------------------------------------------- min-norm point


def _affine_minimizer(gram: np.ndarray, balanced: bool = False) -> np.ndarray:
    """``argmin mu^T G mu`` subject to ``sum(mu) = 1`` (the affine hull's min-norm point).

    When a squared row norm is outside ``[1e-4, 1e4]`` (the callers scale ``G`` to a largest
    diagonal entry of about 1), it is solved in the unit-diagonal coordinates
    ``y = D mu`` (``D = diag(||g_i||)``, 1 for a zero row): ``[C, m; m^T, 0] [y; l] = [0; 1]`` with
    ``C = D^-1 G D^-1`` and ``m = D^-1 1`` scaled to ``max(m) = 1``. That bordered matrix has
    entries of order 1 whatever the ratio of the norms, so a small coefficient on a large row comes
    out to relative precision (on ``G`` itself it would be lost to the round-off of the large
    entries); otherwise (and when the caller knows every row is, ``balanced``) ``[G, 1; 1^T, 0]``
    directly (the same accuracy there, fewer operations).
    """
    k = gram.shape[0]
    K = np.zeros((k + 1, k + 1))
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    if balanced or (np.diag(gram).min() >= 1e-4 and np.diag(gram).max() <= 1e4):
        K[:k, :k] = gram
        K[:k, k] = 1.0
        K[k, :k] = 1.0
        return _solve(K, rhs)[:k]
    diag = np.diag(gram)
    d = np.where(diag > 0.0, np.sqrt(np.where(diag > 0.0, diag, 1.0)), 1.0)
    m = 1.0 / d
    m /= m.max()
    K[:k, :k] = gram / d[:, None] / d[None, :]
    K[:k, k] = m
    K[k, :k] = m
    mu = _solve(K, rhs)[:k] / d
    total = mu.sum()
    return mu / total if total != 0.0 and math.isfinite(total) else mu


def min_norm_simplex(
    gram: np.ndarray, *, max_iter: int | None = None, start: np.ndarray | None = None
) -> np.ndarray:
    """Exact ``argmin_{w in simplex} w^T G w`` by Wolfe's min-norm-point algorithm.

    P. Wolfe, "Finding the nearest point in a polytope", Math. Programming 11, 1976. Written on
    the Gramian: a corral (affinely independent support) is grown by the most violated point and
    shrunk by line searches toward the affine minimizer, which ends in finitely many steps at
    the optimum; termination is the KKT condition ``g_j . x >= ||x||^2`` for every row ``j``,
    tested relative to the size of the terms of ``g_j . x`` and ``||x||^2`` (their round-off):
    a fixed tolerance would stop early when ``||x||`` is far below the largest row norm.

    Args:
        gram: the Gramian ``G``, ``[T, T]`` symmetric positive semi-definite float64.
        start: optional simplex weights to start from (a warm start: their support must be
            affinely independent rows, e.g. the solution of a nearby problem, whose support is a
            corral); by default the algorithm starts from the shortest row.

    Returns:
        ``[T]`` simplex weights. When every row is zero the uniform weights are returned.
    """
    n = gram.shape[0]
    Gn, scale = _scaled(gram)
    if n == 1:
        return np.ones(1)
    if scale == 0.0:
        return np.full(n, 1.0 / n)
    diag = np.diag(Gn)
    balanced = bool(diag.min() >= 1e-4)  # every row within 100x of the longest (max(diag) == 1)
    if start is None:
        support = [int(np.argmin(diag))]
        lam = np.ones(1)
    else:
        support = [int(i) for i in np.flatnonzero(start > 0.0)]
        lam = start[support] / start[support].sum()
        if len(support) > 1:  # the affine minimizer of the old corral for this Gramian
            support, lam = _minor_cycle(Gn, support, lam, balanced)
    for _ in range(max_iter or 50 * n + 50):
        cols = Gn[:, support]
        Gx = cols @ lam
        xx = float(lam @ Gx[support])
        # the KKT test g_j . x >= ||x||^2, violated by less than the round-off of its terms
        # (sum_k lam_k |G_jk| and sum_kl lam_k lam_l |G_kl|, not the largest entry of G): the
        # most violated row relative to its own terms enters, so a short row is not overlooked
        size = np.abs(cols) @ lam
        slack = Gx - xx + _KKT_TOL * (size + float(lam @ size[support]))
        j = int(np.argmin(slack))
        if slack[j] >= 0.0 or j in support:
            break
        support.append(j)
        support, lam = _minor_cycle(Gn, support, np.append(lam, 0.0), balanced)
        if j not in support:  # round-off: the entering point was dropped at once, no progress left
            break
    w = np.zeros(n)
    w[support] = lam
    return w


def _minor_cycle(
    gram: np.ndarray, support: list[int], lam: np.ndarray, balanced: bool = False
) -> tuple[list[int], np.ndarray]:
    """Wolfe's minor cycle: move from ``lam`` toward the support's affine minimizer, dropping the
    points whose weight reaches 0 (at most ``len(support)`` removals)."""
    while True:
        mu = _affine_minimizer(gram[np.ix_(support, support)], balanced)
        if np.all(mu > 0.0):
            return support, mu
        out = mu <= 0.0
        gap = lam - mu
        ratios = np.full(len(lam), np.inf)
        ratios[out] = np.where(gap[out] > 0.0, lam[out] / np.where(gap[out] > 0.0, gap[out], 1.0), 0.0)
        drop = int(np.argmin(ratios))
        theta = float(ratios[drop])
        lam = (1.0 - theta) * lam + theta * mu
        lam[drop] = 0.0
        keep = lam > 0.0
        support = [s for s, k in zip(support, keep) if k]
        lam = lam[keep] / lam[keep].sum()
        if len(support) == 1:
            return support, np.ones(1)


# --------------------------------------------------------------------------- lower-bounded QP


def nnls_lower_bound(gram: np.ndarray, u: np.ndarray, *, max_iter: int | None = None) -> np.ndarray:
    """Exact ``argmin_v v^T G v`` subject to ``v >= u`` (Lawson-Hanson active set on ``G``).

    With ``v = u + y``, this is the non-negative least-squares problem
    ``min_{y >= 0} ||J^T y + J^T u||^2``, solved by Lawson and Hanson's active-set method
    ("Solving Least Squares Problems", 1974, ch. 23) written on the Gramian (Bro and De Jong's
    form): a free variable enters when its dual ``-G (u + y)`` is positive, and the free-set
    solution is pulled back inside ``y >= 0`` when it leaves it. A column enters only when it is
    not in the span of the free ones, so a singular ``G`` is handled.

    Args:
        gram: the Gramian ``G``, ``[T, T]`` symmetric positive semi-definite float64.
        u: ``[T]`` lower bounds.

    Returns:
        ``[T]`` the minimiser ``v`` (``u`` itself when ``G`` is zero).
    """
    n = gram.shape[0]
    Gn, scale = _scaled(gram)
    if scale == 0.0:
        return u.astype(np.float64).copy()
    return u + _nnls_scaled(Gn, Gn @ u, max_iter or 10 * n + 10, _TOL)


def upgrad_weights(gram: np.ndarray, precision: Precision = FLOAT64) -> np.ndarray:
    """UPGrad's weights ``(1/T) sum_i v_i`` with ``v_i = argmin_{v >= e_i} v^T G v``.

    The projections do not depend on the rows' lengths: with ``G = D C D`` (``C`` the cosine
    Gramian, ``D = diag(||g_i||)``), ``v_i = ||g_i|| D^-1 z_i`` where
    ``z_i = argmin_{z >= e_i} z^T C z``, so the ``T`` active-set solves run on ``C`` (tolerances
    relative to unit rows). Zero rows are left out of the solves (their ``v_i`` is ``e_i``).
    """
    n = gram.shape[0]
    C, norms = unit_diagonal(gram, precision)
    active = np.flatnonzero(norms > 0.0)
    total = np.ones(n)  # sum_i e_i
    if len(active) == 0:
        return total / n
    full = len(active) == n
    Ca, na = (C, norms) if full else (C[np.ix_(active, active)], norms[active])
    inner = np.zeros(len(active))
    # C is exact to ~eps of the Gramian's dtype: a dual below that is round-off (with a fixed
    # 1e-14 a float32 Gramian made the active set cycle to its iteration limit)
    tol = max(_TOL, 10.0 * precision.eps)
    for k in range(len(active)):
        y = _nnls_scaled(Ca, Ca[:, k].copy(), 10 * n + 10, tol)  # z_k - e_k, from C e_k = column k
        inner += y * na[k]
    total[active] += inner / na
    return total / n


def _nnls_scaled(Gn: np.ndarray, Gu: np.ndarray, max_iter: int, tol: float) -> np.ndarray:  # noqa: N803
    """The Lawson-Hanson loop of :func:`nnls_lower_bound`: ``y >= 0`` minimising
    ``(u + y)^T G (u + y)``, given ``G`` (scaled) and ``G u``; a variable enters when its dual
    exceeds ``tol`` times ``1 + sum(y)`` (the size of the terms of ``G (u + y)``)."""
    n = Gu.shape[0]
    y = np.zeros(n)
    free = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        dual = -(Gu + Gn @ y)
        dual[free] = -np.inf
        j = int(dual.argmax())
        if dual[j] <= tol or dual[j] <= tol * (1.0 + float(y.sum())):
            break
        free[j] = True
        while True:
            idx = free.nonzero()[0]
            z = np.zeros(n)
            z[idx] = _solve(Gn[idx[:, None], idx], -Gu[idx])
            if (z[idx] > 0.0).all():
                y = z
                break
            out = free & (z <= 0.0)
            ratios = np.full(n, np.inf)
            ratios[out] = y[out] / (y[out] - z[out])
            drop = int(ratios.argmin())
            alpha = float(ratios[drop])
            y = y + alpha * (z - y)
            y[drop] = 0.0
            free &= y > 0.0
            y[~free] = 0.0
            if not free.any():
                break
        if not free.any() and not y.any():
            # the entering variable was pushed straight back out: nothing more to gain
            break
    return y


# --------------------------------------------------------------------------- Nash bargaining


def nash_bargaining(
    gram: np.ndarray, precision: Precision = FLOAT64, *, ridge: float = 1e-10, max_iter: int = 200
) -> np.ndarray:
    """The Nash bargaining weights: ``alpha > 0`` with ``(G alpha)_i = 1 / alpha_i``.

    They are the stationary point of the strictly convex ``f(a) = 1/2 a^T G a - sum_i log a_i``
    (its gradient is ``G a - 1/a``), found by Newton's method with a backtracking (Armijo)
    line search that keeps ``a > 0``; it converges quadratically near the solution.

    The equations are invariant to rescaling the rows: with ``G = D C D`` (``C`` the cosine
    Gramian, ``D = diag(||g_i||)``), ``alpha = D^-1 b`` where ``C b = 1 / b``, so Newton runs on
    ``C`` (a row 1e12 times shorter than another is an ordinary row there). It first runs on
    ``C + ridge I``, which always has a solution, then is polished on ``C`` itself: that
    converges (to machine precision) whenever the exact problem has a solution; when it has none
    (a non-negative combination of rows vanishes, e.g. two opposite rows: ``f`` is unbounded
    below) the ridge solution is kept. The start is the best multiple of ``1`` for ``C + ridge I``
    (with unit rows summing to zero, as for two opposite rows, that is ``1 / sqrt(ridge)``).

    A zero row has no bargaining utility (``log 0``): it gets weight 0 and the others are
    solved without it.

    Args:
        gram: the Gramian ``G``, ``[T, T]`` symmetric positive semi-definite float64.

    Returns:
        ``[T]`` weights, positive for the non-zero rows. All ones when every row is zero.
    """
    n = gram.shape[0]
    C, norms = unit_diagonal(gram, precision)
    active = np.flatnonzero(norms > 0.0)
    if len(active) == 0:
        return np.ones(n)
    Ca, k = C[np.ix_(active, active)], len(active)
    ridged = Ca + ridge * np.eye(k)
    spread = float(ridged.sum())  # 1^T (C + ridge I) 1 >= ridge k, up to round-off
    b0 = np.full(k, math.sqrt(k / max(spread, ridge * k)))
    b, _ = _newton_log_barrier(ridged, b0, max_iter)
    # polish on the exact problem; it converges from there unless the problem is unbounded
    exact, converged = _newton_log_barrier(Ca, b, 30)
    # an unbounded problem can stall where C + diag(1 / b^2) is singular to round-off: keep the
    # polished point only if it solves the equations b_i (C b)_i = 1
    solved = converged and np.all(np.isfinite(exact)) and np.all(exact > 0)
    if solved and float(np.abs(exact * (Ca @ exact) - 1.0).max()) <= 1e-6:
        b = exact
    out = np.zeros(n)
    out[active] = b / norms[active]
    return out


def _newton_log_barrier(gram: np.ndarray, a: np.ndarray, max_iter: int) -> tuple[np.ndarray, bool]:
    """Damped Newton on ``1/2 a^T G a - sum log a`` from ``a > 0``; ``(a, converged)``.

    The function is self-concordant, so once the squared Newton decrement is below 1/4 the
    full step stays feasible and converges quadratically (Boyd and Vandenberghe, 9.6); before
    that, a backtracking line search keeps ``a > 0`` and decreases ``f``.
    """

    def f(x: np.ndarray) -> float:
        return float(0.5 * x @ gram @ x - np.log(x).sum())

    fa = f(a)
    previous = math.inf
    for _ in range(max_iter):
        grad = gram @ a - 1.0 / a
        d = -_solve(gram + np.diag(1.0 / a**2), grad)
        decrement = float(-grad @ d)  # squared Newton decrement
        if not decrement > 1e-26:
            return a, bool(abs(decrement) <= 1e-26)
        # near the solution the decrement squares at every full step; when it stops shrinking
        # it is the round-off of large terms (e.g. a ridge solution ~1e5), not progress
        if decrement < 1e-8 and decrement > 0.25 * previous:
            return a, True
        previous = decrement
        if decrement < 0.25:
            cand = a + d
            if np.all(cand > 0):
                a, fa = cand, f(cand)
                continue
        t = 1.0
        neg = d < 0
        if neg.any():
            t = min(1.0, 0.99 * float(np.min(-a[neg] / d[neg])))
        while True:  # backtracking (Armijo) line search
            cand = a + t * d
            fc = f(cand)
            if fc <= fa - 0.25 * t * decrement or t < 1e-12:
                break
            t *= 0.5
        a, fa = cand, fc
    return a, False


# --------------------------------------------------------------------------- CAGrad


def cagrad_weights(
    gram: np.ndarray, c: float, precision: Precision = FLOAT64, *, max_iter: int = 200
) -> np.ndarray:
    """CAGrad's direction ``d = J^T v``: ``max_d min_i g_i . d`` subject to ``||d - g_0|| <= c ||g_0||``.

    ``g_0 = J^T 1/T`` is the mean row. Through the dual (the paper's eq. 6),
    ``w* = argmin_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||`` (``g_w = J^T w``) and
    ``d = g_0 + (c ||g_0|| / ||g_w*||) g_w*``, i.e. ``v = 1/T + lam w*``.

    Pareto-stationary rows (0 in their convex hull, ``g_w* = 0``) with ``c >= 1``: the dual's
    value is ``F(w) >= (c - 1) ||g_0|| ||g_w|| >= 0``, attained at ``g_w = 0``, so the optimum
    ``max_d min_i g_i . d`` is 0 and ``d = 0`` attains it (it is in the ball); every ``d`` has
    ``min_i g_i . d <= 0`` there, and the mean row usually conflicts with a task. The paper's
    formula is undefined (``g_w* / ||g_w*||``), so ``v = 0`` is returned (as TorchJD). The test
    is on MGDA's min-norm point, whose norm is exact to ``sqrt(eps)`` of the largest row only
    (a norm computed from a Gramian): below :attr:`Precision.zero_norm` it is 0, which costs at
    most that much (relative) of the optimal value. With ``c < 1`` and ``g_w* = 0`` the mean row
    is returned (``lam = 0``; ``d = 0`` is outside the ball).

    The dual: Writing ``||x|| = min_t (||x||^2 / (2t) + t/2)``, the
    problem for a fixed ``t = c ||g_0|| beta`` is the min-norm point of the shifted rows
    ``g_i + beta g_0`` (solved exactly by :func:`min_norm_simplex` on the shifted Gramian), and
    the optimal ``beta`` is the root of ``||g_w(beta)|| = c ||g_0|| beta``; this ratio crosses 1
    once (``h(t)`` is convex), so a bracketing search finds it to machine precision. While the
    support of the min-norm point stays the same, its weights are affine in ``beta`` (the shift
    only moves the right-hand side of the affine minimizer's linear system), so
    ``||g_w(beta)||^2`` is a quadratic and the root on that face has a closed form: each step
    tries it (verified by the next solve; usually the answer after two solves) and falls back
    to an Illinois (regula falsi) or bisection step when it leaves the bracket.

    Returns:
        ``[T]`` weights ``v`` (``1/T`` when ``c ||g_0|| = 0``; 0 at Pareto-stationary rows with
        ``c >= 1``).
    """
    n = gram.shape[0]
    Gn, scale = _scaled(gram)
    b = np.full(n, 1.0 / n)
    if scale == 0.0:
        return b
    a = Gn @ b  # J g_0
    g0g0 = max(float(b @ a), 0.0)
    kappa = c * math.sqrt(g0g0)
    if kappa <= 1e-12:
        return b
    zero_norm = precision.zero_norm
    if c >= 1.0:
        m = min_norm_simplex(Gn)
        if math.sqrt(max(float(m @ Gn @ m), 0.0)) <= zero_norm:  # 0 in the hull: d = 0 is optimal
            return np.zeros(n)
    ones = np.ones(n)
    cross = np.outer(a, ones) + np.outer(ones, a)  # shifted Gramian: Gn + beta cross + beta^2 g0g0 11^T
    last: list[np.ndarray | None] = [None]  # the previous solution: its support (a corral) warm-starts the next

    def solve(beta: float) -> tuple[np.ndarray, float]:
        shifted = Gn + beta * cross + (beta**2 * g0g0)
        w = min_norm_simplex(shifted, start=last[0])
        last[0] = w
        return w, math.sqrt(max(float(w @ Gn @ w), 0.0))

    def q(beta: float) -> tuple[float, np.ndarray, float]:
        # log(||g_w(beta)|| / (kappa beta)): non-increasing in beta, its root is the optimum
        w, norm = solve(beta)
        ratio = norm / (kappa * beta)
        return (math.log(ratio) if ratio > 0.0 else -math.inf), w, norm

    def face_root(w: np.ndarray, near: float, lo: float, hi: float) -> float | None:
        # on the face of w's support S the weights are mu0 + beta mu1 (the affine minimizer's
        # system [G_SS 1; 1^T 0] [mu; l] = [-beta a_S; 1]), so ||g_w||^2 = q0 + 2 q1 beta + q2 beta^2
        S = np.flatnonzero(w > 0.0)
        k = len(S)
        G_S = Gn[np.ix_(S, S)]
        K = np.zeros((k + 1, k + 1))
        K[:k, :k] = G_S
        K[:k, k] = K[k, :k] = 1.0
        rhs = np.zeros((k + 1, 2))
        rhs[k, 0] = 1.0
        rhs[:k, 1] = -a[S]
        m = _solve(K, rhs)[:k]
        Gm = G_S @ m
        q0, q1, q2 = float(m[:, 0] @ Gm[:, 0]), float(m[:, 0] @ Gm[:, 1]), float(m[:, 1] @ Gm[:, 1])
        A, B, C = q2 - kappa * kappa, 2.0 * q1, q0  # ||g_w||^2 = kappa^2 beta^2
        if A == 0.0:
            roots = [-C / B] if B != 0.0 else []
        else:
            disc = B * B - 4.0 * A * C
            if not disc >= 0.0:
                return None
            half = -0.5 * (B + math.copysign(math.sqrt(disc), B))  # stable quadratic roots
            roots = [half / A] + ([C / half] if half != 0.0 else [])
        inside = [r for r in roots if lo < r < hi]
        return min(inside, key=lambda r: abs(r - near)) if inside else None

    lo, hi = 0.0, 1.0 / kappa  # ||g_w|| <= max row norm = 1, so q(hi) <= 0 < q(0+)
    q_lo = math.inf
    q_hi, w_hi, n_hi = q(hi)
    best = (abs(q_hi), w_hi, n_hi)
    side = 0
    at, w_at = hi, w_hi  # the last solve: its face gives the next guess
    for it in range(max_iter):
        if best[0] <= 1e-13 or hi - lo <= 1e-13 * hi or hi <= 1e-13 / kappa:
            break
        # closed-form guesses while they are inside the bracket (at most 8: the bracket then
        # shrinks by the guaranteed Illinois / bisection steps alone)
        mid = face_root(w_at, at, lo, hi) if it < 8 else None
        if mid is None:
            if math.isfinite(q_lo) and math.isfinite(q_hi):
                mid = (lo * q_hi - hi * q_lo) / (q_hi - q_lo)  # regula falsi (Illinois)
                if not lo < mid < hi:
                    mid = 0.5 * (lo + hi)
            elif lo == 0.0:
                # probe the smallest beta that counts: q <= 0 there puts the root at 0 (0 in the
                # hull, so g_w* = 0), otherwise it gives a finite lower end for the bracket
                mid = min(0.5 * hi, 1e-13 / kappa)
            else:
                mid = 0.5 * (lo + hi)
        q_mid, w_mid, n_mid = q(mid)
        at, w_at = mid, w_mid
        if abs(q_mid) < best[0]:
            best = (abs(q_mid), w_mid, n_mid)
        if q_mid > 0.0:
            lo, q_lo = mid, q_mid
            if side == 1 and math.isfinite(q_hi):
                q_hi *= 0.5
            side = 1
        else:
            hi, q_hi = mid, q_mid
            if side == -1 and math.isfinite(q_lo):
                q_lo *= 0.5
            side = -1
        if q_mid == 0.0:
            break
    if hi <= 1e-13 / kappa:  # the root is beta = 0: the optimum is g_w = 0 (0 is in the hull)
        best = (0.0, min_norm_simplex(Gn), 0.0)
    _, w, norm = best
    # g_w = 0 (to round-off; c < 1 here): CAGrad's g_w / ||g_w|| is undefined, the update is g_0.
    # The norm comes from the quadratic form w^T G w: below zero_norm the direction is noise
    lam = kappa / norm if norm > zero_norm else 0.0
    return b + lam * w


# --------------------------------------------------------------------------- IMTL-G


def imtl_g_weights(gram: np.ndarray, precision: Precision = FLOAT64) -> np.ndarray:
    """IMTL-G: ``alpha`` with ``sum(alpha) = 1`` and equal ``J^T alpha . u_i`` for every unit row ``u_i``.

    The closed form of Liu et al. (``alpha_{2:T} = g_1 U^T (D U^T)^{-1}``) solves the same
    equations as a task-symmetric linear system, used here because it does not single out
    task 1. The equations only involve the rows' directions: with ``d = sum_i b_i u_i``
    (``alpha_i = b_i / ||g_i||``) they read ``C b = t 1`` (``C`` the cosine Gramian) and
    ``sum_i b_i / ||g_i|| = 1``, solved as ``[C, -1; m^T, 0] [b; t] = [0; 1]`` with
    ``m = (1 / ||g_i||)`` scaled to ``max(m) = 1`` (entries of order 1 whatever the ratio of the
    row norms). When it is singular (e.g. identical rows) its minimum-norm least-squares solution
    is taken. Zero rows get weight 0 (their direction is undefined); all-zero rows give uniform
    weights.
    """
    n = gram.shape[0]
    C, norms = unit_diagonal(gram, precision)
    active = np.flatnonzero(norms > 0.0)
    if len(active) == 0:
        return np.full(n, 1.0 / n)
    k = len(active)
    inv = 1.0 / norms[active]
    top = float(inv.max())
    K = np.zeros((k + 1, k + 1))
    K[:k, :k] = C[np.ix_(active, active)]
    K[:k, k] = -1.0
    K[k, :k] = inv / top
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    alpha = np.zeros(n)
    # lstsq with a relative cut-off: exact when well posed, minimum-norm when (nearly) singular;
    # C is exact to ~eps of the Gramian's dtype, so singular values below 10 eps are round-off
    rcond = max(1e-12, 10.0 * precision.eps)
    alpha[active] = np.linalg.lstsq(K, rhs, rcond=rcond)[0][:k] * (inv / top)
    return alpha


# --------------------------------------------------------------------------- Aligned-MTL


def aligned_weights(
    gram: np.ndarray, *, eps: float, scale_mode: Literal["min", "median", "rmse"] = "min"
) -> np.ndarray:
    """Aligned-MTL weights ``B 1`` with ``B = sigma V Lambda^{-1/2} V^T`` (rank-truncated).

    ``G = V Lambda V^T``; eigenvalues below ``max(Lambda) * T * eps`` are dropped (the authors'
    rank rule); ``sigma^2`` is the smallest kept eigenvalue (``min``), their lower median
    (``median``, as ``torch.median``) or their mean (``rmse``). Zero ``G`` gives zero weights.
    """
    n = gram.shape[0]
    Gn, scale = _scaled(gram)
    if scale == 0.0:
        return np.zeros(n)
    lam, V = np.linalg.eigh(Gn)
    tol = float(lam.max()) * n * eps
    keep = lam > tol
    lam, V = lam[keep], V[:, keep]
    if scale_mode == "min":
        s2 = float(lam.min())
    elif scale_mode == "median":
        s2 = float(np.sort(lam)[(len(lam) - 1) // 2])
    else:
        s2 = float(lam.mean())
    B = (V * (math.sqrt(s2) / np.sqrt(lam))) @ V.T
    return B.sum(axis=1)
