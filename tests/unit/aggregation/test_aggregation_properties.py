"""Property suite for every aggregator on hostile Jacobians (the style of TorchJD's suites).

Rows scaled 1e-12 .. 1e12 relative to each other, exactly opposite rows, duplicated rows, zero
rows, rank-deficient and Pareto-stationary Jacobians; T from 1 to 16; float32 and float64; 1 and
2 torch threads. Checked: finite results (and ``d = J^T w``), and each method's own guarantee with
a tolerance relative to the size of the terms (``tests/_aggregation_checks.py``): non-conflict
(UPGrad, MGDA's ``g_i . d >= ||d||^2``, CAGrad with ``c >= 1`` at stationary points, which
returns 0), equal projections (IMTL-G), the Nash equations, MGDA's min-norm point against a
60-digit brute force, and permutation equivariance.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch

from _aggregation_checks import (
    CASES,
    assert_equal_projections,
    assert_finite,
    assert_nash_equations,
    assert_non_conflicting,
    eps,
    hostile,
    mean_conflict,
    min_norm_reference,
    permuted,
    relative_error,
    row_scales,
)
from mtlkit import Task
from mtlkit.aggregation import AGGREGATORS, IMTLG, MGDA, CAGrad, NashMTL, UPGrad
from mtlkit.state import TrainState

NAMES = AGGREGATORS.names()
SIZES = (1, 2, 3, 5, 8, 16)
DTYPES = (torch.float32, torch.float64)
P = 12


@pytest.fixture(params=[1, 2], ids=["threads1", "threads2"])
def threads(request: pytest.FixtureRequest) -> Iterator[int]:
    """Run under 1 and 2 torch threads: no result may depend on the thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(request.param)
    yield request.param
    torch.set_num_threads(before)


def build(name: str, k: int):
    return AGGREGATORS.build(name, tasks=[Task(name=f"t{i}", kind="regression") for i in range(k)])


def state(seed: int = 0) -> TrainState:
    return TrainState(generator=torch.Generator().manual_seed(seed))


def tol(dtype: torch.dtype) -> float:
    """Relative tolerance of a guarantee: the weights come from a Gramian exact to ``eps``."""
    return 1e3 * eps(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", NAMES)
def test_every_aggregator_is_finite_on_hostile_jacobians(
    name: str, case: str, dtype: torch.dtype, threads: int
) -> None:
    for k in (1, 2, 5, 16):
        J = hostile(case, k, P, seed=k, dtype=dtype)
        agg = build(name, k)
        for step in range(2):  # stateful methods: the second call uses the first one's state
            out = agg.aggregate(J, state=state(step))
            assert_finite(J, out.vector, out.weights)


NON_CONFLICTING = {"upgrad": UPGrad, "mgda": MGDA}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", sorted(NON_CONFLICTING))
def test_upgrad_and_mgda_never_conflict_with_any_row(
    name: str, case: str, dtype: torch.dtype, threads: int
) -> None:
    """UPGrad: ``g_i . d >= 0``; MGDA: ``g_i . d >= ||d||^2`` (its KKT condition), for the
    shortest row as for the longest."""
    for k in SIZES:
        for seed in range(2):
            J = hostile(case, k, P, seed=100 * k + seed, dtype=dtype)
            out = NON_CONFLICTING[name]().aggregate(J)
            d = out.vector.double()
            floor = None if name == "upgrad" else torch.full((k,), float(d @ d), dtype=torch.float64)
            assert_non_conflicting(J, out.vector, out.weights, tol=tol(dtype), floor=floor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("k", [2, 3, 5])
def test_mgda_is_the_min_norm_point_at_every_scale(k: int, dtype: torch.dtype, threads: int) -> None:
    """Against a 60-digit brute force over supports; rows 1e-12 .. 1e12 relative to each other
    (the relative error was 27-283 % at a 1e9 ratio with a fixed stopping tolerance)."""
    for seed in range(3):
        J = hostile("scaled", k, 6, seed=seed, dtype=dtype)
        J[1] = -J[1] if seed % 2 else J[1]
        want = min_norm_reference(J)
        got = MGDA().aggregate(J).vector
        # float32: the Gramian is exact to eps32 relative to ||g_i|| ||g_j||, so the min-norm
        # point of nearly dependent rows moves by ~sqrt(eps) of the rows' cosine conditioning
        bound = 1e-10 if dtype == torch.float64 else 1e-3
        assert relative_error(got, want) <= bound, (seed, relative_error(got, want))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["scaled", "duplicated", "zero_rows", "opposite"])
def test_imtl_g_has_equal_projections_at_every_scale(case: str, dtype: torch.dtype, threads: int) -> None:
    for k in SIZES[1:]:
        J = hostile(case, k, P + 8, seed=k, dtype=dtype)
        out = IMTLG().aggregate(J)
        assert_equal_projections(J, out.vector, out.weights, tol=tol(dtype))
        assert abs(float(out.weights.double().sum()) - 1) <= tol(dtype)


def test_imtl_g_direction_and_nash_update_do_not_depend_on_the_rows_lengths(threads: int) -> None:
    """Rescaling the rows keeps IMTL-G's direction and Nash-MTL's update (alpha scales inversely)."""
    for k in (2, 5, 8):
        J = (
            hostile("scaled", k, P, seed=k, dtype=torch.float64) / row_scales(k, seed=k)[:, None]
        )  # unit-ish rows
        s = row_scales(k, seed=k + 50)[:, None]
        a, b = IMTLG().aggregate(J).vector, IMTLG().aggregate(J * s).vector
        # the same line (sum(alpha) = 1 may flip its sign: IMTL-G's projections can all be negative)
        assert abs(float(a @ b / (a.norm() * b.norm()))) >= 1 - 1e-12
        a, b = NashMTL(max_norm=0.0).aggregate(J).vector, NashMTL(max_norm=0.0).aggregate(J * s).vector
        torch.testing.assert_close(b, a, rtol=1e-9, atol=1e-9 * float(a.norm()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", ["scaled", "duplicated", "zero_rows"])
def test_nash_mtl_solves_the_bargaining_equations_at_every_scale(
    case: str, dtype: torch.dtype, threads: int
) -> None:
    for k in SIZES:
        J = hostile(case, k, P + 8, seed=k, dtype=dtype)
        alpha = NashMTL(max_norm=0.0).aggregate(J).weights
        assert_nash_equations(J, alpha, tol=tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nash_mtl_falls_back_when_the_unit_rows_sum_to_zero(dtype: torch.dtype, threads: int) -> None:
    """Two opposite rows, or a rank-1 Jacobian with mixed signs: no solution exists (a positive
    combination vanishes); the ridge solution is used (it raised ZeroDivisionError)."""
    g = torch.randn(1, P, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for J in (torch.cat([g, -g]), torch.cat([g, -2 * g, 3 * g]), torch.cat([g, -g * 1e-12, g * 1e9])):
        out = NashMTL().aggregate(J.to(dtype))
        assert_finite(J.to(dtype), out.vector, out.weights)
        assert (out.weights > 0).all()
        assert float(out.vector.double().norm()) <= 1.0 + 1e-5  # max_norm


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1.0, 2.0, 5.0])
def test_cagrad_with_c_at_least_one_returns_zero_at_stationary_points(
    c: float, dtype: torch.dtype, threads: int
) -> None:
    """0 in the hull and c >= 1: the paper's optimum max_d min_i g_i . d = 0 is attained by d = 0."""
    for case in ("stationary", "opposite"):
        for k in SIZES[1:]:
            J = hostile(case, k, 3 if case == "stationary" else P, seed=k, dtype=dtype)
            out = CAGrad(c=c, rescale=0).aggregate(J)
            scale = float(J.double().norm(dim=1).max())
            assert float(out.vector.double().norm()) <= 1e2 * math.sqrt(eps(dtype)) * scale, (case, k)
            assert float((J.double() @ out.vector.double()).min()) >= -1e2 * math.sqrt(eps(dtype)) * scale**2
    assert mean_conflict(hostile("stationary", 5, 3, seed=5)) < 0  # the mean is no answer there


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [0.5, 1.0, 4.0])
def test_cagrad_stays_in_its_ball_and_beats_the_mean_at_every_scale(
    c: float, dtype: torch.dtype, threads: int
) -> None:
    for k in SIZES[1:]:
        J = hostile("scaled", k, P, seed=k, dtype=dtype)
        d = CAGrad(c=c, rescale=0).aggregate(J).vector.double()
        Jd = J.double()
        g0 = Jd.mean(0)
        scale = float(Jd.norm(dim=1).max())
        assert float((d - g0).norm()) <= c * float(g0.norm()) + 1e2 * eps(dtype) * scale
        # the worst task improvement is at least the mean's (the mean is in the ball)
        assert float((Jd @ d).min()) >= float((Jd @ g0).min()) - 1e2 * math.sqrt(eps(dtype)) * scale**2


DETERMINISTIC = [n for n in NAMES if n not in {"pcgrad", "gradvac", "graddrop"}]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_permutation_equivariance_on_hostile_jacobians(name: str, case: str, dtype: torch.dtype) -> None:
    for k in (2, 3, 5, 8):
        J = hostile(case, k, P, seed=k, dtype=dtype)
        perm = permuted(k, seed=k)
        a = build(name, k).aggregate(J, state=state(), rows=torch.arange(k))
        b = build(name, k).aggregate(J[perm], state=state(), rows=perm)
        scale = (
            float(J.double().norm(dim=1).max()) * max(1.0, float(a.weights.double().abs().sum()))
            if a.weights is not None
            else float(J.double().abs().sum(0).max())
        )
        assert (
            float((a.vector.double() - b.vector.double()).abs().max()) <= 1e3 * math.sqrt(eps(dtype)) * scale
        ), (k, a.vector, b.vector)


@pytest.mark.slow
@pytest.mark.parametrize("name", DETERMINISTIC)
def test_many_random_hostile_jacobians_stay_finite_and_deterministic(name: str) -> None:
    for seed in range(200):
        k = 1 + seed % 16
        case = CASES[seed % len(CASES)]
        J = hostile(case, k, 1 + seed % 20, seed=seed)
        a = build(name, k).aggregate(J, state=state()).vector
        b = build(name, k).aggregate(J.clone(), state=state()).vector
        assert torch.isfinite(a).all() and torch.equal(a, b), (seed, case)
