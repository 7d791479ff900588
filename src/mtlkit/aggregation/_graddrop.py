"""GradDrop: gradient sign dropout (Chen et al., 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._solvers import check_float, device_generator
from mtlkit.state import TrainState

__all__ = ["GradDrop"]


class GradDrop(Aggregator):
    """Gradient sign dropout: per coordinate, keep only the gradients of one sign, at random.

    Paper: Z. Chen, J. Ngiam, Y. Huang, T. Luong, H. Kretzschmar, Y. Chai, D. Anguelov,
    "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient Sign Dropout",
    NeurIPS 2020 (https://arxiv.org/abs/2010.06808).

    Per coordinate, the sign purity ``P = 1/2 (1 + sum_i g_i / sum_i |g_i|)`` is compared with
    ``U ~ Uniform(0, 1)``: if ``P > U`` only the positive entries are kept, if ``P < U`` only the
    negative ones (mask ``M_i``). The update is ``sum_i (l + (1 - l) M_i) g_i`` with the leak ``l``.

    Randomness: one uniform draw per coordinate and call. On the CPU it comes from
    ``state.generator``; on other devices a device generator seeded from it draws the ``P``
    numbers where they are used (so CPU and GPU runs draw different masks).

    Args:
        leak: the paper's leak ``l`` in ``[0, 1]`` (default 0: full sign dropout; 1 gives the sum).

    Cost: a few elementwise passes over the ``[T, P]`` Jacobian and ``P`` random numbers; no
    Gramian, no host synchronisation.

    Departures from the paper and LibMTL: (1) the purity is computed per coordinate of the
    rows (parameters, or the flattened representation): the aggregator sees neither the
    activations (so no ``sign(A)`` factor) nor the batch axis (no sum over it before ``P``);
    (2) ``P = 1/2`` where every ``g_i`` is 0, instead of adding ``1e-7`` to the denominator,
    which makes the result independent of the gradients' scale; (3) one scalar leak for all
    tasks.
    """

    stochastic = True

    def __init__(self, *, leak: float = 0.0) -> None:
        super().__init__()
        self.leak = check_float("GradDrop", "leak", leak, low=0.0, high=1.0)

    def extra_repr(self) -> str:
        return f"leak={self.leak}"

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        # Keeping the positive entries of a coordinate sums to `pos`, the negative ones to `neg`
        # (two clamp-and-sum passes: faster on the CPU than a strided L1 norm over the rows).
        pos = jacobian.clamp(min=0).sum(0)
        neg = jacobian.clamp(max=0).sum(0)
        total, mass = pos + neg, pos - neg
        purity = 0.5 * (1.0 + torch.where(mass > 0, total / torch.where(mass > 0, mass, 1.0), 0.0))
        gen = device_generator(state.generator, jacobian.device)
        U = torch.rand(jacobian.shape[1], generator=gen, device=jacobian.device, dtype=jacobian.dtype)
        U = U.clamp_min(torch.finfo(U.dtype).tiny)  # U in (0, 1): a lone negative entry is always kept
        kept = torch.where(purity > U, pos, torch.where(purity < U, neg, torch.zeros_like(neg)))
        if self.leak == 0.0:
            return Aggregation(kept, None)
        return Aggregation(self.leak * total + (1.0 - self.leak) * kept, None)
