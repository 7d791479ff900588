"""Shared numerics for the aggregators: Gramians, exact small solvers, per-task state helpers.

The solvers work on the ``T x T`` Gramian ``G = J J^T`` only (never on the ``[T, P]`` Jacobian):
the Gramian is computed on the Jacobian's device, then moved to the CPU in float64 (numpy) for
the solve, and the ``T`` weights go back to the device. Every solver first divides ``G`` by its
largest diagonal entry, so tolerances are relative and the results do not depend on the scale of
the gradients (1e-12 and 1e12 give the same weights, up to the matching scaling).

- :func:`min_norm_simplex`: Wolfe's exact min-norm-point algorithm (MGDA, CAGrad's inner problem).
- :func:`nnls_lower_bound`: Lawson-Hanson active set for ``min v^T G v`` s.t. ``v >= u`` (UPGrad).
- :func:`nash_bargaining`: damped Newton on ``1/2 a^T G a - sum log a`` (Nash-MTL).
- :func:`cagrad_weights`: CAGrad's ``min_w g_w^T g_0 + c ||g_0|| ||g_w||`` over the simplex.
- :func:`imtl_g_weights`, :func:`aligned_weights`: closed forms (IMTL-G, Aligned-MTL).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "aligned_weights",
    "cagrad_weights",
    "check_choice",
    "check_float",
    "check_int",
    "device_generator",
    "gramian_of",
    "grow_square",
    "imtl_g_weights",
    "min_norm_simplex",
    "nash_bargaining",
    "nnls_lower_bound",
    "random_orders",
    "task_slots",
    "to_device",
    "to_host",
    "upgrad_weights",
    "work_dtype",
]

# relative tolerance of the active-set solvers on a Gramian scaled to max(diag) == 1
_TOL = 1e-14
# a norm computed from the Gramian (scaled to max(diag) == 1) below this is zero to round-off
_ZERO_NORM = 1e-7


# --------------------------------------------------------------------------- argument checks


def check_float(
    owner: str,
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
) -> float:
    """Return ``value`` as a float, or raise ``ValueError`` in the project's message template."""
    if low is not None and high is not None:
        constraint = f"a float in {'(' if low_open else '['}{low:g}, {high:g}]"
    elif low is not None:
        constraint = f"a float {'>' if low_open else '>='} {low:g}"
    else:
        constraint = "a finite float"
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = (low is None or (v > low if low_open else v >= low)) and (high is None or v <= high)
    if not ok:
        raise ValueError(f"{owner} parameter `{name}` must be {constraint}; got {value!r}.")
    return float(value)  # type: ignore[arg-type]


def check_int(owner: str, name: str, value: object, *, low: int) -> int:
    """Return ``value`` as an int ``>= low``, or raise ``ValueError``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ValueError(f"{owner} parameter `{name}` must be an int >= {low}; got {value!r}.")
    return int(value)


def check_choice(owner: str, name: str, value: object, choices: Sequence[object]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``choices``."""
    if value not in choices or isinstance(value, bool):
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{owner} parameter `{name}` must be one of {allowed}; got {value!r}.")


# --------------------------------------------------------------------------- device helpers


def gramian_of(jacobian: Tensor) -> Tensor:
    """``J J^T`` on the Jacobian's device (half precisions are accumulated in float32)."""
    if jacobian.dtype in (torch.float16, torch.bfloat16):
        jacobian = jacobian.float()
    return jacobian @ jacobian.T


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the small on-device ``T x T`` computations (float32 where float64 is missing)."""
    return torch.float32 if device.type == "mps" else torch.float64


def to_host(gramian: Tensor) -> np.ndarray:
    """The ``T x T`` Gramian as a symmetric float64 numpy array (one device-to-host copy)."""
    G = gramian.detach().to("cpu").to(torch.float64).numpy()
    return 0.5 * (G + G.T)


def to_device(weights: np.ndarray, like: Tensor) -> Tensor:
    """``T`` weights computed on the host, moved next to ``like`` (same device and dtype)."""
    w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float64)).to(like.dtype)  # cast on the host
    return w.to(device=like.device, non_blocking=True)


def task_slots(rows: Tensor, device: torch.device) -> tuple[slice | Tensor, int]:
    """Index selecting the per-task state of ``rows``, and the number of tasks it needs.

    Returns a slice when ``rows`` is ``0..K-1`` (the common case: no gather, no copy), else the
    indices on ``device``. ``rows`` is read on the host (it is a small CPU tensor).
    """
    idx = [int(r) for r in rows.tolist()]
    needed = max(idx) + 1 if idx else 0
    if idx == list(range(len(idx))):
        return slice(0, len(idx)), needed
    return torch.tensor(idx, dtype=torch.long).to(device, non_blocking=True), needed


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


# --------------------------------------------------------------------------- min-norm point


def _affine_minimizer(gram: np.ndarray) -> np.ndarray:
    """``argmin mu^T G mu`` subject to ``sum(mu) = 1`` (the affine hull's min-norm point)."""
    k = gram.shape[0]
    K = np.zeros((k + 1, k + 1))
    K[:k, :k] = gram
    K[:k, k] = 1.0
    K[k, :k] = 1.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    return _solve(K, rhs)[:k]


def min_norm_simplex(
    gram: np.ndarray, *, max_iter: int | None = None, start: np.ndarray | None = None
) -> np.ndarray:
    """Exact ``argmin_{w in simplex} w^T G w`` by Wolfe's min-norm-point algorithm.

    P. Wolfe, "Finding the nearest point in a polytope", Math. Programming 11, 1976. Written on
    the Gramian: a corral (affinely independent support) is grown by the most violated point and
    shrunk by line searches toward the affine minimizer, which ends in finitely many steps at
    the optimum; termination is the KKT condition ``g_j . x >= ||x||^2`` for every row ``j``.

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
    if start is None:
        support = [int(np.argmin(np.diag(Gn)))]
        lam = np.ones(1)
    else:
        support = [int(i) for i in np.flatnonzero(start > 0.0)]
        lam = start[support] / start[support].sum()
        if len(support) > 1:  # the affine minimizer of the old corral for this Gramian
            support, lam = _minor_cycle(Gn, support, lam)
    for _ in range(max_iter or 50 * n + 50):
        Gx = Gn[:, support] @ lam
        xx = float(lam @ Gx[support])
        j = int(np.argmin(Gx))
        if Gx[j] >= xx - _TOL or j in support:
            break
        support.append(j)
        support, lam = _minor_cycle(Gn, support, np.append(lam, 0.0))
        if j not in support:  # round-off: the entering point was dropped at once, no progress left
            break
    w = np.zeros(n)
    w[support] = lam
    return w


def _minor_cycle(gram: np.ndarray, support: list[int], lam: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Wolfe's minor cycle: move from ``lam`` toward the support's affine minimizer, dropping the
    points whose weight reaches 0 (at most ``len(support)`` removals)."""
    while True:
        mu = _affine_minimizer(gram[np.ix_(support, support)])
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
    return u + _nnls_scaled(Gn, Gn @ u, max_iter or 10 * n + 10)


def upgrad_weights(gram: np.ndarray) -> np.ndarray:
    """UPGrad's weights ``(1/T) sum_i v_i`` with ``v_i = argmin_{v >= e_i} v^T G v`` (one
    :func:`nnls_lower_bound` per row, sharing the scaling of ``G``)."""
    n = gram.shape[0]
    Gn, scale = _scaled(gram)
    if scale == 0.0:
        return np.full(n, 1.0 / n)
    total = np.eye(n).sum(0)  # sum_i e_i
    for i in range(n):
        total += _nnls_scaled(Gn, Gn[:, i].copy(), 10 * n + 10)  # G e_i = column i
    return total / n


def _nnls_scaled(Gn: np.ndarray, Gu: np.ndarray, max_iter: int) -> np.ndarray:  # noqa: N803
    """The Lawson-Hanson loop of :func:`nnls_lower_bound`: ``y >= 0`` minimising
    ``(u + y)^T G (u + y)``, given ``G`` (scaled) and ``G u``."""
    n = Gu.shape[0]
    y = np.zeros(n)
    free = np.zeros(n, dtype=bool)
    for _ in range(max_iter):
        dual = -(Gu + Gn @ y)
        dual[free] = -np.inf
        j = int(dual.argmax())
        if dual[j] <= _TOL:
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


def nash_bargaining(gram: np.ndarray, *, ridge: float = 1e-10, max_iter: int = 200) -> np.ndarray:
    """The Nash bargaining weights: ``alpha > 0`` with ``(G alpha)_i = 1 / alpha_i``.

    They are the stationary point of the strictly convex ``f(a) = 1/2 a^T G a - sum_i log a_i``
    (its gradient is ``G a - 1/a``), found by Newton's method with a backtracking (Armijo)
    line search that keeps ``a > 0``; it converges quadratically near the solution. ``G`` is
    scaled to ``max(diag) = 1``. Newton first runs on ``G + ridge * I``, which always has a
    solution, then is polished on ``G`` itself: that converges (to machine precision) whenever
    the exact problem has a solution; when it has none (a non-negative combination of rows
    vanishes, e.g. two opposite rows: ``f`` is unbounded below) the ridge solution is kept.

    A zero row has no bargaining utility (``log 0``): it gets weight 0 and the others are
    solved without it.

    Args:
        gram: the Gramian ``G``, ``[T, T]`` symmetric positive semi-definite float64.

    Returns:
        ``[T]`` weights for the unscaled ``G``, positive for the non-zero rows. All ones when
        every row is zero.
    """
    n = gram.shape[0]
    Gn, scale = _scaled(gram)
    if scale == 0.0:
        return np.ones(n)
    active = np.flatnonzero(np.diag(Gn) > 1e-24)
    if len(active) < n:
        out = np.zeros(n)
        out[active] = nash_bargaining(Gn[np.ix_(active, active)], ridge=ridge, max_iter=max_iter)
        return out / math.sqrt(scale)
    a0 = 1.0 / np.sqrt(np.diag(Gn))
    a0 = a0 * math.sqrt(n / float(a0 @ Gn @ a0))  # the best multiple of 1 / sqrt(diag G)
    a, _ = _newton_log_barrier(Gn + ridge * np.eye(n), a0, max_iter)
    # polish on the exact problem; it converges from there unless the problem is unbounded
    exact, converged = _newton_log_barrier(Gn, a, 30)
    if converged and np.all(np.isfinite(exact)) and np.all(exact > 0):
        a = exact
    return a / math.sqrt(scale)


def _newton_log_barrier(gram: np.ndarray, a: np.ndarray, max_iter: int) -> tuple[np.ndarray, bool]:
    """Damped Newton on ``1/2 a^T G a - sum log a`` from ``a > 0``; ``(a, converged)``.

    The function is self-concordant, so once the squared Newton decrement is below 1/4 the
    full step stays feasible and converges quadratically (Boyd and Vandenberghe, 9.6); before
    that, a backtracking line search keeps ``a > 0`` and decreases ``f``.
    """

    def f(x: np.ndarray) -> float:
        return float(0.5 * x @ gram @ x - np.log(x).sum())

    fa = f(a)
    for _ in range(max_iter):
        grad = gram @ a - 1.0 / a
        d = -_solve(gram + np.diag(1.0 / a**2), grad)
        decrement = float(-grad @ d)  # squared Newton decrement
        if not decrement > 1e-26:
            return a, bool(abs(decrement) <= 1e-26)
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


def cagrad_weights(gram: np.ndarray, c: float, *, max_iter: int = 200) -> tuple[np.ndarray, float]:
    """CAGrad's inner problem ``w* = argmin_{w in simplex} g_w . g_0 + c ||g_0|| ||g_w||``.

    ``g_w = J^T w``, ``g_0 = J^T 1/T``. Writing ``||x|| = min_t (||x||^2 / (2t) + t/2)``, the
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
        ``(w*, lam)`` with ``lam = c ||g_0|| / ||g_w*||`` (0 when ``g_w* = 0`` or ``c ||g_0|| = 0``),
        so that CAGrad's direction is ``g_0 + lam g_w* = J^T (1/T + lam w*)``.
    """
    n = gram.shape[0]
    Gn, scale = _scaled(gram)
    b = np.full(n, 1.0 / n)
    if scale == 0.0:
        return b, 0.0
    a = Gn @ b  # J g_0
    g0g0 = max(float(b @ a), 0.0)
    kappa = c * math.sqrt(g0g0)
    if kappa <= 1e-12:
        return b, 0.0
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
    # g_w = 0 (to round-off): CAGrad's g_w / ||g_w|| is undefined there; the update is g_0. The
    # norm comes from the quadratic form w^T G w, whose round-off (~T eps, G scaled to max diag 1)
    # puts the norm of a zero point near 1e-8: below 1e-7 the direction is noise
    lam = kappa / norm if norm > _ZERO_NORM else 0.0
    return w, lam


# --------------------------------------------------------------------------- IMTL-G


def imtl_g_weights(gram: np.ndarray) -> np.ndarray:
    """IMTL-G: ``alpha`` with ``sum(alpha) = 1`` and equal ``J^T alpha . u_i`` for every unit row ``u_i``.

    The closed form of Liu et al. (``alpha_{2:T} = g_1 U^T (D U^T)^{-1}``) solves the same
    equations as the symmetric system ``[N G, -1; 1^T, 0] [alpha; c] = [0; 1]`` with
    ``N = diag(1 / ||g_i||)``, used here because it does not single out task 1; when it is
    singular (e.g. identical rows) its minimum-norm least-squares solution is taken. Zero rows
    get weight 0 (their direction is undefined); all-zero rows give uniform weights.
    """
    n = gram.shape[0]
    Gn, scale = _scaled(gram)
    if scale == 0.0:
        return np.full(n, 1.0 / n)
    norms = np.sqrt(np.clip(np.diag(Gn), 0.0, None))
    active = np.flatnonzero(norms > 1e-12)
    m = len(active)
    M = Gn[np.ix_(active, active)] / norms[active, None]
    K = np.zeros((m + 1, m + 1))
    K[:m, :m] = M
    K[:m, m] = -1.0
    K[m, :m] = 1.0
    rhs = np.zeros(m + 1)
    rhs[m] = 1.0
    alpha = np.zeros(n)
    # lstsq with a relative cut-off: exact when well posed, minimum-norm when (nearly) singular
    alpha[active] = np.linalg.lstsq(K, rhs, rcond=1e-12)[0][:m]
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


# --------------------------------------------------------------------------- randomness and state


def random_orders(k: int, generator: torch.Generator | None) -> Tensor:
    """``[k, k - 1]`` CPU long tensor: row ``i`` is a uniformly random order of the tasks ``!= i``."""
    keys = torch.rand(k, k, generator=generator, dtype=torch.float64)
    keys.fill_diagonal_(2.0)  # task i sorts last, then is cut off
    return keys.argsort(dim=1)[:, : k - 1]


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator drawing on ``device``, seeded from the (CPU) ``generator``.

    On the CPU this is ``generator`` itself; elsewhere a fresh device generator is seeded with
    one 63-bit draw from it, so large random tensors are drawn where they are used (no transfer)
    and the stream stays determined by ``generator``.
    """
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def grow_square(buf: Tensor, n: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``buf`` (``[m, m]``) on ``device`` in ``dtype``, zero-padded to ``[n, n]`` when ``n > m``."""
    buf = buf.to(device=device, dtype=dtype)
    m = buf.shape[0]
    if n <= m:
        return buf
    out = torch.zeros(n, n, dtype=dtype, device=device)
    out[:m, :m] = buf
    return out
