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

    Cost: one pass over the ``[T, P]`` Jacobian (row by row into two ``[P]`` sums, no ``[T, P]``
    temporary), ``P`` random numbers and about ten elementwise passes over ``P``; no Gramian,
    no host synchronisation.

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
        pos, neg = _signed_sums(jacobian)  # keeping the positive (negative) entries sums to pos (neg)
        total, mass = pos + neg, pos - neg
        # mass = sum_i |g_i| is 0 only where every g_i is 0 (so is total): 0 / 0 -> P = 1/2
        purity = (total / mass).nan_to_num_(nan=0.0).add_(1.0).mul_(0.5)
        gen = device_generator(state.generator, jacobian.device)
        U = torch.rand(jacobian.shape[1], generator=gen, device=jacobian.device, dtype=jacobian.dtype)
        U = U.clamp_min(torch.finfo(U.dtype).tiny)  # U in (0, 1): a lone negative entry is always kept
        # sign(P - U): +1 keeps the positive entries, -1 the negative ones, 0 (P = U) neither;
        # arithmetic selection instead of torch.where (several times faster on the CPU)
        side = torch.sign(purity - U)
        kept = pos * side.clamp(min=0) - neg * side.clamp(max=0)
        if self.leak == 0.0:
            return Aggregation(kept, None)
        return Aggregation(self.leak * total + (1.0 - self.leak) * kept, None)


def _signed_sums(jacobian: Tensor) -> tuple[Tensor, Tensor]:
    """Per coordinate, the sums of the positive and of the negative entries of the rows.

    Row by row into two ``[P]`` accumulators: no ``[T, P]`` temporary, so the Jacobian is read
    from memory once and everything else stays in cache.
    """
    pos, neg = jacobian[0].clamp(min=0), jacobian[0].clamp(max=0)
    if jacobian.shape[0] > 1:
        tmp = torch.empty_like(pos)
        for row in jacobian[1:]:
            pos.add_(torch.clamp(row, min=0, out=tmp))
            neg.add_(torch.clamp(row, max=0, out=tmp))
    return pos, neg
