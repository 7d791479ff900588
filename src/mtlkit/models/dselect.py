"""DSelect-k (Hazimeh et al., NeurIPS 2021): differentiable top-k expert selection for MMoE.

Paper: H. Hazimeh, Z. Zhao, A. Chowdhery, M. Sathiamoorthy, Y. Chen, R. Mazumder, L. Hong,
E. H. Chi, "DSelect-k: Differentiable Selection in the Mixture of Experts with Applications to
Multi-Task Learning", NeurIPS 2021. Reference code: google-research/dselect_k_moe (TensorFlow).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.models._base import Decoded, MultiTaskModel, params_of
from mtlkit.models._blocks import MLP, ExpertMLPs, _check_input
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models._kernels import stack_experts, stacked_tower_outputs
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["DSelectK", "DSelectKGate", "binary_codes", "dselect_k", "selector_outputs", "smooth_step"]

Gating = Literal["per_example", "static"]
_ENTROPY_EPS = 1e-6  # as in the reference code: -sum r log(r + eps)


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """The cubic smooth-step of Hazimeh et al. (2020, 2021).

    ``S(t) = 0`` for ``t <= -gamma/2``, ``1`` for ``t >= gamma/2``, and
    ``-2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2`` in between: continuously differentiable, with
    exact zeros and ones (and zero gradient) outside ``(-gamma/2, gamma/2)``. The cubic reaches 0
    and 1 at the ends of that interval, so clamping ``t`` first gives the same function.
    """
    t = t.clamp(-gamma / 2, gamma / 2)
    return t * (1.5 / gamma - (2.0 / gamma**3) * t * t) + 0.5


def binary_codes(num_experts: int) -> Tensor:
    """``(n, m)`` bool: row ``l`` is the ``m = ceil(log2 n)``-bit binary code of expert ``l``,
    most significant bit first (as in the reference code)."""
    m = math.ceil(math.log2(num_experts)) if num_experts > 1 else 0
    ids = torch.arange(num_experts).unsqueeze(1)
    shifts = torch.arange(m - 1, -1, -1).unsqueeze(0)
    return ((ids >> shifts) & 1).bool()


def selector_outputs(z: Tensor, codes: Tensor, gamma: float) -> Tensor:
    """Single-expert selectors ``r(z)``: ``(..., m)`` logits to ``(..., n)`` expert weights.

    ``r(z)_l = prod_j (S(z_j) if bit j of l is 1 else 1 - S(z_j))``. Once every ``S(z_j)`` is 0
    or 1, ``r`` is one-hot (it selects one expert); while ``2^m > n`` the weights of the ``n``
    reachable experts may sum to less than one.
    """
    s = smooth_step(z, gamma)
    if s.shape[-1] == 0:  # one expert: the empty product
        return s.new_ones(*s.shape[:-1], codes.shape[0])
    # the product over the m bits as m - 1 multiplications (a prod() would check its input for
    # zeros in the backward pass, a host synchronisation, and saturated smooth-steps are exact zeros)
    out: Tensor | None = None
    for bit, s_j in zip(codes.unbind(-1), s.unbind(-1)):
        s_j = s_j.unsqueeze(-1)  # (..., 1)
        factor = torch.where(bit, s_j, 1 - s_j)  # (..., n)
        out = factor if out is None else out * factor
    assert out is not None
    return out


class DSelectKGate(nn.Module):
    """One DSelect-k gate: ``k`` single-expert selectors mixed by a softmax.

    ``a(x) = sum_{i=1..k} softmax(alpha(x))_i r(z^{(i)}(x))`` over ``n`` experts, with ``m =
    ceil(log2 n)`` selector "bits" ``z^{(i)}`` per selector. With ``gating="per_example"`` both
    ``z = Z x + b_z`` (``k*m`` logits) and ``alpha = A x + b_alpha`` (``k`` logits) depend on the
    example; with ``gating="static"`` they are free parameters (one selection per task). Once the
    smooth-steps are binary the gate has at most ``k`` non-zero weights, exactly ``k`` when the
    selectors pick distinct experts.

    Initialisation follows the reference code: ``z`` weights uniform in ``(-gamma/100,
    gamma/100)`` (every selector starts near the uniform mixture), ``alpha`` weights uniform in
    ``(-0.05, 0.05)``.

    Args:
        in_features: input width (unused, may be None, for static gates).
        num_experts: ``n``.
        k: number of selectors, the largest number of experts the gate ends up using.
        gamma: width of the smooth-step's cubic region.
        gating: ``"per_example"`` (input-dependent) or ``"static"``.
    """

    def __init__(
        self,
        in_features: int | None,
        num_experts: int,
        k: int,
        *,
        gamma: float = 1.0,
        gating: Gating = "per_example",
    ) -> None:
        super().__init__()
        if isinstance(num_experts, bool) or not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"DSelect-k num_experts must be an int >= 1; got {num_experts!r}.")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_experts:
            raise ValueError(f"DSelect-k k must be an int in [1, num_experts={num_experts}]; got {k!r}.")
        if not (isinstance(gamma, int | float) and math.isfinite(gamma) and gamma > 0):
            raise ValueError(f"DSelect-k gamma must be a float > 0; got {gamma!r}.")
        if gating not in ("per_example", "static"):
            raise ValueError(f"DSelect-k gating must be 'per_example' or 'static'; got {gating!r}.")
        self.num_experts, self.k, self.gamma, self.gating = num_experts, k, float(gamma), gating
        self.num_bits = math.ceil(math.log2(num_experts)) if num_experts > 1 else 0
        self.register_buffer("codes", binary_codes(num_experts), persistent=False)
        m = self.num_bits
        if gating == "per_example":
            if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
                raise ValueError(
                    f"A per-example DSelect-k gate needs in_features (an int >= 1); got {in_features!r}."
                )
            self.in_features = in_features
            self.z = nn.Linear(in_features, k * m)
            self.alpha = nn.Linear(in_features, k)
        else:
            self.in_features = in_features  # type: ignore[assignment]
            self.z = nn.Parameter(torch.empty(k, m))  # type: ignore[assignment]
            self.alpha = nn.Parameter(torch.empty(k))  # type: ignore[assignment]
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            for p in self.z.parameters() if isinstance(self.z, nn.Module) else [self.z]:
                p.uniform_(-self.gamma / 100, self.gamma / 100)
            for p in self.alpha.parameters() if isinstance(self.alpha, nn.Module) else [self.alpha]:
                p.uniform_(-0.05, 0.05)

    def logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z (N, k, m), alpha (N, k))`` for per-example gates; ``((1, k, m), (1, k))`` for static."""
        if self.gating == "static":
            return self.z.unsqueeze(0), self.alpha.unsqueeze(0)  # type: ignore[union-attr,operator]
        x = _check_input(x, self.in_features, "DSelect-k gate")
        return self.z(x).reshape(*x.shape[:-1], self.k, self.num_bits), self.alpha(x)  # type: ignore[operator]

    def combine(self, z: Tensor, alpha: Tensor) -> tuple[Tensor, Tensor]:
        """``(weights (..., n), selectors (..., k, n))`` from the logits."""
        selectors = selector_outputs(z, self.codes, self.gamma)
        weights = torch.einsum("...k,...kn->...n", torch.softmax(alpha, dim=-1), selectors)
        return weights, selectors

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(weights (N, n), selectors (N, k, n))``; for static gates the first dim is 1."""
        return self.combine(*self.logits(x))


class DSelectK(MultiTaskModel):
    """MMoE with DSelect-k gates (Hazimeh et al., NeurIPS 2021).

    ``y_k = h_k(sum_i a_k(x)_i e_i(x))`` with shared experts ``e_i`` and one
    :class:`DSelectKGate` ``a_k`` per task (per-example or static). Each task owns its gate and
    tower. When training (``model.train()``), ``forward_parts(x).aux`` holds the regularizers
    (added to the objective as they are):

    * ``dselect_entropy/{task}`` = ``entropy_reg * mean_x sum_i H(r(z^{(i)}_k(x)))``, the
      entropy of each single-expert selector, which drives the smooth-steps to 0/1 (each
      selector to one expert), with ``H(r) = -sum_l r_l log(r_l + 1e-6)``;
    * ``dselect_unreachable/{task}`` (only when ``n`` is not a power of two) =
      ``mean_x sum_i (1 / sum_l r(z^{(i)}_k(x))_l - 1)``, which keeps each selector's weight on the
      ``n`` reachable codes (it is 0 once they carry all the weight).

    Departures from the reference code: the regularizers are averaged over the batch instead of
    summed (``entropy_reg`` is then independent of the batch size), the unreachable-code term is
    shifted by a constant (``-1`` per selector, same gradient) so that it logs 0 when satisfied,
    and the experts are all evaluated (the sparse gate is not used to skip experts).

    Args:
        experts: an :class:`ExpertMLPs` bank or any module mapping ``x`` to ``(N, n, D)``, or a list
            of modules mapping to ``(N, D)``.
        gates: ``{task: DSelectKGate}`` over the ``n`` experts.
        towers: ``{task: module}``.
        input_layer: optional shared module applied to the inputs first.
        entropy_reg: the coefficient ``lambda >= 0`` of the entropy regularizer (0: none).
    """

    def __init__(
        self,
        experts: nn.Module | Sequence[nn.Module],
        gates: Mapping[str, DSelectKGate],
        towers: Mapping[str, nn.Module],
        *,
        input_layer: nn.Module | None = None,
        entropy_reg: float = 0.0,
    ) -> None:
        super().__init__()
        if not towers:
            raise ValueError("DSelectK needs at least one tower.")
        self.task_names = tuple(towers)
        if set(gates) != set(self.task_names):
            raise ValueError(
                f"DSelectK needs one gate per task {list(self.task_names)}; got {sorted(gates)}."
            )
        bad = [t for t, g in gates.items() if not isinstance(g, DSelectKGate)]
        if bad:
            raise TypeError(f"DSelectK gates must be DSelectKGate modules; those of {bad} are not.")
        if len({g.num_experts for g in gates.values()}) != 1:
            raise ValueError("DSelectK gates must all select among the same number of experts.")
        if not (isinstance(entropy_reg, int | float) and math.isfinite(entropy_reg) and entropy_reg >= 0):
            raise ValueError(f"DSelectK entropy_reg must be a float >= 0; got {entropy_reg!r}.")
        if isinstance(experts, nn.Module) and not isinstance(experts, nn.ModuleList):
            self.experts = experts
        else:
            self.experts = nn.ModuleList(list(experts))
        self.input_layer = input_layer
        self.task_gates = nn.ModuleDict({t: gates[t] for t in self.task_names})
        self.towers = nn.ModuleDict(dict(towers))
        self.entropy_reg = float(entropy_reg)
        self.num_experts = next(iter(gates.values())).num_experts

    def _features(self, x: Inputs) -> Tensor:
        return self.input_layer(x) if self.input_layer is not None else x  # type: ignore[return-value]

    def _all_gates(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Every task's weights and selectors, stacked: ``(N', T, n)`` and ``(N', T, k, n)`` (``N' = 1``
        when every gate is static); all per-example gates of one shape are one matrix product."""
        gates: list[DSelectKGate] = [self.task_gates[t] for t in self.task_names]  # type: ignore[misc]
        first = gates[0]
        uniform = all(
            (g.gating, g.k, g.gamma, g.in_features) == (first.gating, first.k, first.gamma, first.in_features)
            for g in gates
        )
        if not uniform or len(gates) == 1:
            pairs = [g(h) for g in gates]
            n = max(w.shape[0] for w, _ in pairs)
            w = torch.stack([w.expand(n, -1) for w, _ in pairs], dim=1)
            return w, torch.stack([sel.expand(n, *sel.shape[1:]) for _, sel in pairs], dim=1)
        T, k, m = len(gates), first.k, first.num_bits
        if first.gating == "static":
            z = torch.stack([g.z for g in gates]).unsqueeze(0)  # type: ignore[misc]
            alpha = torch.stack([g.alpha for g in gates]).unsqueeze(0)  # type: ignore[misc]
        else:
            h = _check_input(h, first.in_features, "DSelect-k gate")
            zw = torch.cat([g.z.weight for g in gates])  # type: ignore[union-attr]
            zb = torch.cat([g.z.bias for g in gates])  # type: ignore[union-attr]
            aw = torch.cat([g.alpha.weight for g in gates])  # type: ignore[union-attr]
            ab = torch.cat([g.alpha.bias for g in gates])  # type: ignore[union-attr]
            z = F.linear(h, zw, zb).reshape(h.shape[0], T, k, m)
            alpha = F.linear(h, aw, ab).reshape(h.shape[0], T, k)
        return first.combine(z, alpha)  # (N', T, n), (N', T, k, n)

    def _regularizers(self, selectors: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """``(entropy term, unreachable-code term)`` of selectors ``(N', ..., k, n)``, averaged over
        ``N'``: scalars for one task's selectors, ``(T,)`` for every task's; None where a term is off."""
        entropy = reach = None
        if self.entropy_reg > 0:
            h = -(selectors * torch.log(selectors + _ENTROPY_EPS)).sum((-2, -1))
            entropy = self.entropy_reg * h.mean(0)
        if self.num_experts & (self.num_experts - 1):  # not a power of two: some codes reach no expert
            reach = (1.0 / selectors.sum(-1) - 1.0).sum(-1).mean(0)
        return entropy, reach

    def _aux(self, tasks: Sequence[str], selectors: Tensor) -> dict[str, Tensor]:
        """The regularizers of the tasks' stacked selectors ``(N', T, k, n)``, each task's its own loss
        (training only)."""
        if not self.training:
            return {}
        entropy, reach = self._regularizers(selectors)
        out: dict[str, Tensor] = {}
        if entropy is not None:
            out.update(zip((f"dselect_entropy/{t}" for t in tasks), entropy.unbind(0)))
        if reach is not None:
            out.update(zip((f"dselect_unreachable/{t}" for t in tasks), reach.unbind(0)))
        return out

    def _encode(self, x: Inputs) -> tuple[Tensor, Tensor]:
        # the input layer once: its output feeds the experts (rep) and the gates (ctx)
        h = self._features(x)
        return stack_experts(self.experts, h), h  # (N, n, D)

    def _decode(self, rep: Tensor, h: Tensor) -> Decoded:
        # each task from its own gate, so that a task's backward pass touches only its gate
        out: dict[str, Tensor] = {}
        aux: dict[str, Tensor] = {}
        for t in self.task_names:
            w, sel = self.task_gates[t](h)
            out[t] = self.towers[t](torch.bmm(w.expand(rep.shape[0], -1).unsqueeze(1), rep).squeeze(1))
            aux.update(self._aux([t], sel.unsqueeze(1)))
        return out, aux

    def _forward(self, x: Inputs) -> Decoded:
        h = self._features(x)
        experts = stack_experts(self.experts, h)  # (N, n, D)
        w, selectors = self._all_gates(h)  # (N', T, n), (N', T, k, n)
        mixed = torch.bmm(w.expand(experts.shape[0], -1, -1), experts)  # (N, T, D): every mixture at once
        out = stacked_tower_outputs(self.towers, self.task_names, mixed.transpose(0, 1))
        return out, self._aux(self.task_names, selectors)

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        """``{task: (N, n)}`` expert weights (static gates repeated over the batch)."""
        h = self._features(x)
        n = h.shape[0] if isinstance(h, Tensor) else 1
        return {t: self.task_gates[t](h)[0].expand(n, -1) for t in self.task_names}

    def selectors(self, x: Inputs) -> dict[str, Tensor]:
        """``{task: (N, k, n)}``: each single-expert selector's weights (one-hot once converged)."""
        h = self._features(x)
        n = h.shape[0] if isinstance(h, Tensor) else 1
        out = {}
        for t in self.task_names:
            sel = self.task_gates[t](h)[1]
            out[t] = sel.expand(n, *sel.shape[1:])
        return out

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        return params_of(self.task_gates[task], self.towers[task])


@MODELS.register("dselect_k", aliases=("dselect",))
def dselect_k(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    num_experts: int = 8,
    k: int = 2,
    gamma: float = 1.0,
    entropy_reg: float = 0.01,
    gating: Gating = "per_example",
    expert_dims: Sequence[int] = (16,),
    tower_dims: Sequence[int] = (8,),
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> DSelectK:
    """DSelect-k (Hazimeh et al. 2021): shared MLP experts, one differentiable k-sparse gate and one tower per task.

    Args:
        input_dim: width of flat input features (when there is no input layer).
        tasks: the tasks (one gate and one tower each).
        num_experts: ``n``, the shared experts.
        k: selectors per task gate: each task ends up using at most ``k`` experts.
        gamma: width of the smooth-step's cubic region.
        entropy_reg: coefficient of the selectors' entropy regularizer (0 turns it off).
        gating: ``"per_example"`` (the gate reads the input) or ``"static"`` (one selection per task).
        expert_dims: layer widths of every expert MLP.
        tower_dims: hidden widths of every tower.
        activation: activation of experts and towers.
        dropout: dropout after every hidden activation.
        input_layer: a shared backbone module (or factory) in front of the experts and gates.
    """
    check_model_args(
        "dselect_k",
        num_experts=num_experts,
        k=k,
        expert_dims=expert_dims,
        tower_dims=tower_dims,
        dropout=dropout,
    )
    names = task_names(tasks)
    (layer,), width = make_input_layers(input_dim, input_layer, who="dselect_k")
    experts = ExpertMLPs(num_experts, width, expert_dims, activation=activation, dropout=dropout)
    gates = {t: DSelectKGate(width, num_experts, k, gamma=gamma, gating=gating) for t in names}
    towers = {
        t.name: MLP(experts.out_features, tower_dims, t.output_dim, activation=activation, dropout=dropout)
        for t in tasks
    }
    return DSelectK(experts, gates, towers, input_layer=layer, entropy_reg=entropy_reg)
