"""Nash-MTL: the Nash bargaining solution over the task gradients (Navon et al., 2022)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation
from mtlkit.aggregation._checks import check_float, check_int
from mtlkit.aggregation._device import to_device
from mtlkit.aggregation._solvers import Precision, nash_bargaining
from mtlkit.aggregation._weighting import GramianWeightedAggregator, GramianWeighting
from mtlkit.state import TrainState

__all__ = ["NashMTL", "NashMTLWeighting"]


class NashMTLWeighting(GramianWeighting):
    """``alpha > 0`` with ``(G alpha)_i = 1 / alpha_i`` (0 for zero rows)."""

    def fixed(self, num_rows: int) -> np.ndarray | None:
        return None  # alpha = 1 / ||g|| even for one row

    def __call__(self, gramian: np.ndarray, /, *, precision: Precision) -> np.ndarray:
        return nash_bargaining(gramian, precision)


class NashMTL(GramianWeightedAggregator):
    """Multi-task learning as a bargaining game.

    Paper: A. Navon, A. Shamsian, I. Achituve, H. Maron, K. Kawaguchi, G. Chechik, E. Fetaya,
    "Multi-Task Learning as a Bargaining Game", ICML 2022 (https://arxiv.org/abs/2202.01017).

    The update ``d = J^T alpha`` is the Nash bargaining solution, characterised by
    ``(G alpha)_i = 1 / alpha_i`` with ``G = J J^T`` and ``alpha > 0``: every task gets the same
    "utility-weighted" share, ``alpha_i (g_i . d) = 1``. This is the stationarity condition of the
    strictly convex ``min_{alpha > 0} 1/2 alpha^T G alpha - sum_i log alpha_i``, solved here by
    Newton's method with backtracking in float64 on the ``T x T`` problem (quadratic
    convergence: the equation holds to round-off). Note ``||d||^2 = alpha^T G alpha = T``
    whatever the gradients' scale, hence the clipping of the authors' code (``max_norm``).

    Args:
        update_weights_every: recompute ``alpha`` every this many calls and reuse the last
            ``alpha`` of each task in between (authors' default 1). A call where a present task
            has no ``alpha`` yet always recomputes.
        max_norm: clip the combined gradient to this norm (authors' default 1.0; 0 disables),
            with ``torch.nn.utils.clip_grad_norm_``'s formula ``max_norm / (norm + 1e-6)``.

    Cost: one ``T x T`` Gramian, one device-to-host copy, ~5-20 Newton steps of ``O(T^3)``.

    Departures from the authors' code: (1) no cvxpy/ECOS: their sequence of (at most 20)
    convex approximations is replaced by Newton's method on the exact problem, which converges
    to the solution instead of stopping at ``||G alpha - 1/alpha|| < 1e-3``; it runs on the
    unit-diagonal (cosine) Gramian, as the equations are invariant to rescaling the rows, so a
    row 1e12 times shorter than another gets its exact weight; (2) when the problem has no
    solution (a non-negative combination of rows vanishes, e.g. two opposite gradients; the
    authors' solver then keeps the previous ``alpha``), the solution for ``C + 1e-10 I`` is used
    (``C`` the cosine Gramian; ``alpha_i = b_i / ||g_i||``), and a zero gradient gets ``alpha = 0``;
    (3) ``max_norm`` clips the combined vector: identical to the authors' clipping of the shared
    parameters' gradients with ``gradient_target="parameters"``; with ``"representation"`` it
    clips the representation gradient instead.
    """

    def __init__(self, *, update_weights_every: int = 1, max_norm: float = 1.0) -> None:
        super().__init__(NashMTLWeighting())
        self.update_weights_every = check_int("NashMTL", "update_weights_every", update_weights_every, low=1)
        self.max_norm = check_float("NashMTL", "max_norm", max_norm, low=0.0)
        self.reset()

    def reset(self) -> None:
        """Forget the stored weights and the call count."""
        self._calls = 0
        self._alpha: dict[int, float] = {}

    def extra_repr(self) -> str:
        return f"update_weights_every={self.update_weights_every}, max_norm={self.max_norm}"

    def get_extra_state(self) -> Any:
        return {"calls": self._calls, "alpha": dict(self._alpha)}

    def set_extra_state(self, state: Any) -> None:
        self._calls = int(state["calls"])
        self._alpha = {int(k): float(v) for k, v in state["alpha"].items()}

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        tasks = [int(t) for t in rows.tolist()]
        stale = any(t not in self._alpha for t in tasks)
        if stale or self._calls % self.update_weights_every == 0:
            alpha = self.host_weights(jacobian)
            self._alpha.update(zip(tasks, alpha.tolist()))
        else:
            alpha = np.array([self._alpha[t] for t in tasks])
        self._calls += 1
        weights = to_device(alpha, jacobian)
        vector = weights @ jacobian
        if self.max_norm > 0:
            coef = (self.max_norm / (torch.linalg.vector_norm(vector) + 1e-6)).clamp(max=1.0)
            vector, weights = vector * coef, weights * coef
        return Aggregation(vector, weights)
