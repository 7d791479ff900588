"""GradDrop: gradient sign dropout (Chen et al., 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtlkit.aggregation._base import Aggregation, Aggregator
from mtlkit.aggregation._checks import check_float
from mtlkit.aggregation._device import device_generator
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
        # [4, P] scratch memory reused from one call to the next (not state: never saved); a
        # fresh P-sized temporary per elementwise step costs page faults on a CPU
        self._scratch: Tensor | None = None

    def extra_repr(self) -> str:
        return f"leak={self.leak}"

    def _work(self, jacobian: Tensor) -> Tensor:
        buf, P = self._scratch, jacobian.shape[1]
        if buf is None or buf.shape[1] != P or buf.dtype != jacobian.dtype or buf.device != jacobian.device:
            self._scratch = None
            buf = self._scratch = jacobian.new_empty(4, P)
        return buf

    def combine(self, jacobian: Tensor, state: TrainState, rows: Tensor) -> Aggregation:
        pos, neg, a, b = self._work(jacobian).unbind(0)
        # keeping the positive (negative) entries of a coordinate sums to pos (neg)
        _signed_sums(jacobian, pos, neg, a)
        total = pos + neg if self.leak != 0.0 else None
        mass = torch.sub(pos, neg, out=a)  # sum_i |g_i|
        # P = 1/2 (1 + total / mass); mass is 0 only where every g_i is 0 (so is total): 0/0 -> P = 1/2
        purity = torch.add(pos, neg, out=b).div_(mass).nan_to_num_(nan=0.0).add_(1.0).mul_(0.5)
        gen = device_generator(state.generator, jacobian.device)
        U = a.uniform_(0.0, 1.0, generator=gen)  # as torch.rand(P), in the scratch memory
        U.clamp_min_(torch.finfo(U.dtype).tiny)  # U in (0, 1): a lone negative entry is always kept
        # sign(P - U): +1 keeps the positive entries, -1 the negative ones, 0 (P = U) neither;
        # arithmetic selection pos * max(s, 0) - neg * min(s, 0), no torch.where (slow on a CPU)
        side = torch.sub(purity, U, out=b).sign_()
        kept = pos * torch.clamp(side, min=0, out=a)
        kept.sub_(neg.mul_(side.clamp_(max=0)))
        if total is None:
            return Aggregation(kept, None)
        return Aggregation(self.leak * total + (1.0 - self.leak) * kept, None)


def _signed_sums(jacobian: Tensor, pos: Tensor, neg: Tensor, tmp: Tensor) -> None:
    """Per coordinate, the sums of the positive (into ``pos``) and of the negative (``neg``)
    entries of the rows, row by row: no ``[T, P]`` temporary, the Jacobian is read once."""
    torch.clamp(jacobian[0], min=0, out=pos)
    torch.clamp(jacobian[0], max=0, out=neg)
    for row in jacobian[1:]:
        pos.add_(torch.clamp(row, min=0, out=tmp))
        neg.add_(torch.clamp(row, max=0, out=tmp))
