"""Batched fast-path kernels: several blocks of one shape evaluated as one call.

Each function has a plain counterpart it must equal (tower by tower, bank by bank, gate by gate);
the blocks themselves live in :mod:`mtlkit.models._blocks`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ShapeError
from mtlkit.models._blocks import MLP, ExpertMLPs, SoftmaxGate, _check_input

__all__ = [
    "batch_towers",
    "can_group_experts",
    "can_group_mlps",
    "gate_outputs",
    "grouped_expert_outputs",
    "grouped_mlp_outputs",
    "grouped_mlp_stacked",
    "row_tower_outputs",
    "select_rows",
    "stack_experts",
    "stacked_tower_outputs",
    "tower_outputs",
]


def stack_experts(experts: nn.Module | Sequence[nn.Module], x: Tensor) -> Tensor:
    """Expert outputs as ``(N, E, D)``: one call for a batched bank, a loop for user modules."""
    if isinstance(experts, nn.ModuleList):
        return torch.stack([e(x) for e in experts], dim=-2)
    return experts(x)


def can_group_experts(banks: Sequence[nn.Module]) -> bool:
    """True when ``banks`` are :class:`ExpertMLPs` of one shape (input width, layer widths,
    activation, dropout), so :func:`grouped_expert_outputs` can evaluate them as one bank."""
    if not banks or not all(isinstance(b, ExpertMLPs) for b in banks):
        return False
    first = banks[0]
    return all(
        (b.in_features, b.hidden_dims, b.activation, b.dropout)
        == (first.in_features, first.hidden_dims, first.activation, first.dropout)
        for b in banks
    )


def grouped_expert_outputs(banks: Sequence[ExpertMLPs], inputs: Tensor | Sequence[Tensor]) -> Tensor:
    """Several :class:`ExpertMLPs` banks evaluated as one batched bank.

    Each bank keeps its own parameters (so that, e.g., each task can own its experts); their
    weights are concatenated for the call, which copies weights but never activations, and
    every layer of all banks is then one matrix product (see :class:`ExpertMLPs`).

    Args:
        banks: compatible banks (:func:`can_group_experts`), ``E = sum of num_experts``.
        inputs: one ``(N, in)`` tensor read by every bank, or one ``(N, in)`` tensor per bank
            (bank ``g``'s experts read ``inputs[g]``).

    Returns:
        ``(N, E, D)``: the experts of ``banks[0]`` first, then those of ``banks[1]``, ...
    """
    if not can_group_experts(banks):
        raise ValueError(
            "grouped_expert_outputs needs ExpertMLPs banks of one shape (widths, activation, dropout)."
        )
    first = banks[0]
    per_bank = not isinstance(inputs, Tensor)
    if per_bank and len(inputs) != len(banks):
        raise ValueError(
            f"grouped_expert_outputs needs one input per bank ({len(banks)}); got {len(inputs)}."
        )
    if len(banks) == 1:
        return first(inputs[0] if per_bank else inputs)  # type: ignore[index,arg-type]
    d = first.in_features
    sizes = [b.num_experts for b in banks]
    E, h0 = sum(sizes), first.hidden_dims[0]
    w0 = torch.cat([b.weight0 for b in banks], dim=1)  # (in, E, h0)
    b0 = torch.cat([b.bias0 for b in banks])  # (E, h0)
    if per_bank:
        xs = [_check_input(x, d, "ExpertMLPs") for x in inputs]  # type: ignore[union-attr]
        lead = xs[0].shape[:-1]
        if any(x.shape != xs[0].shape for x in xs):
            raise ShapeError(
                f"grouped_expert_outputs needs inputs of one shape; got {[tuple(x.shape) for x in xs]}."
            )
        # expert-major input: every expert reads its own bank's input (one copy of the inputs)
        x_e = torch.cat([x.reshape(1, -1, d).expand(n, -1, -1) for x, n in zip(xs, sizes)])
        h = first._activate(torch.baddbmm(b0.unsqueeze(1), x_e, w0.transpose(0, 1)))
    else:
        x = _check_input(inputs, d, "ExpertMLPs")  # type: ignore[arg-type]
        lead = x.shape[:-1]
        x2 = x.reshape(-1, d)
        if len(first.hidden_dims) == 1:
            h = torch.addmm(b0.reshape(-1), x2, w0.reshape(d, E * h0))
            return first._activate(h).reshape(*lead, E, h0)
        h = first._activate(torch.baddbmm(b0.unsqueeze(1), x2.expand(E, *x2.shape), w0.transpose(0, 1)))
    for i in range(len(first.weights)):
        w = torch.cat([b.weights[i] for b in banks])
        bias = torch.cat([b.biases[i] for b in banks])
        h = first._activate(torch.baddbmm(bias.unsqueeze(1), h, w))
    return h.transpose(0, 1).reshape(*lead, E, first.out_features)


def can_group_mlps(mlps: Sequence[nn.Module]) -> bool:
    """True when ``mlps`` are :class:`MLP` s of one shape (input width, hidden widths, activation,
    dropout, layer structure); their final output widths may differ."""
    if not mlps or not all(isinstance(m, MLP) for m in mlps):
        return False
    first: MLP = mlps[0]  # type: ignore[assignment]

    def key(m: MLP) -> tuple[object, ...]:
        return (m.in_features, m.hidden_dims, m.activation, m.dropout, [type(mod) for mod in m.net])

    if any(key(m) != key(first) for m in mlps[1:]):  # type: ignore[arg-type]
        return False
    # the layers themselves (an MLP's modules may have been replaced after construction)
    last = len(first.net) - 1
    for i, mod in enumerate(first.net):
        if not isinstance(mod, nn.Linear):
            continue
        for other in (m.net[i] for m in mlps[1:]):  # type: ignore[union-attr]
            if other.in_features != mod.in_features or (other.out_features != mod.out_features and i != last):
                return False
            if (mod.bias is None) != (other.bias is None):
                return False
    return True


def _stacked_layer_weights(layers: Sequence[nn.Linear]) -> tuple[Tensor, Tensor | None]:
    """``(K, in, width)`` weights and ``(K, 1, width)`` biases of ``K`` linear layers, zero-padded
    to the widest output (only the final layers of grouped MLPs may differ in width)."""
    width = max(lin.out_features for lin in layers)

    def padded(t: Tensor, n: int) -> Tensor:  # no pad op where the width is already the widest
        return t if n == width else F.pad(t, (0, 0, 0, width - n) if t.ndim == 2 else (0, width - n))

    w = torch.stack([padded(lin.weight, lin.out_features) for lin in layers])
    if layers[0].bias is None:
        return w.transpose(1, 2), None
    b = torch.stack([padded(lin.bias, lin.out_features) for lin in layers])  # type: ignore[arg-type]
    return w.transpose(1, 2), b.unsqueeze(1)


def _grouped_layers(seqs: Sequence[Sequence[nn.Module]], start: int, h: Tensor) -> Tensor:
    """Layers ``start..`` of grouped MLPs (``seqs``: their ``net`` modules) on ``(K, N, d)``: every
    linear layer is one batched product, every activation / dropout one call."""
    for i in range(start, len(seqs[0])):
        mod = seqs[0][i]
        if not isinstance(mod, nn.Linear):
            h = mod(h)  # the activation / dropout, the same for every MLP
            continue
        w, b = _stacked_layer_weights([s[i] for s in seqs])  # type: ignore[misc]
        h = torch.bmm(h, w) if b is None else torch.baddbmm(b, h, w)
    return h


def _split_outputs(h: Tensor, widths: Sequence[int]) -> list[Tensor]:
    """``(K, N, max width)`` -> ``K`` tensors ``(N, widths[k])``; one unbind, so that the backward
    pass stacks the gradients once instead of filling a zero tensor per output."""
    return [o if n == o.shape[-1] else o[:, :n] for o, n in zip(h.unbind(0), widths)]


def grouped_mlp_stacked(mlps: Sequence[MLP], h: Tensor) -> Tensor:
    """Grouped :class:`MLP` s on stacked inputs: ``(K, N, in)`` -> ``(K, N, max out)``.

    Row ``k`` of the result is ``mlps[k](h[k])``, zero-padded to the widest output. ``h`` may be a
    strided view (e.g. ``(N, K, D).transpose(0, 1)``); it is not copied.
    """
    if not can_group_mlps(mlps):
        raise ValueError("grouped_mlp_stacked needs MLPs of one shape (widths, activation, dropout).")
    if (
        not isinstance(h, Tensor)
        or h.ndim != 3
        or h.shape[0] != len(mlps)
        or h.shape[2] != mlps[0].in_features
    ):
        got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
        raise ShapeError(
            f"grouped_mlp_stacked needs ({len(mlps)}, N, {mlps[0].in_features}) inputs (one row per MLP); got {got}."
        )
    return _grouped_layers([list(m.net) for m in mlps], 0, h)


def grouped_mlp_outputs(mlps: Sequence[MLP], inputs: Tensor | Sequence[Tensor]) -> list[Tensor]:
    """Several :class:`MLP` s (e.g. one tower per task) evaluated together.

    Each MLP keeps its own parameters; their weights are stacked for the call (the final layers
    zero-padded to the widest output) and every layer is one matrix product over the MLPs. When
    every MLP reads the same input, the first layer is one ``(N, in) x (in, K*h)`` product over
    the concatenated weights (the input is not repeated), as in :class:`ExpertMLPs`.

    Args:
        mlps: compatible MLPs (:func:`can_group_mlps`).
        inputs: one ``(N, in)`` tensor read by every MLP, or one ``(N, in)`` tensor per MLP, all of
            one shape.

    Returns:
        ``mlps[i](x_i)`` for every ``i``.
    """
    if not can_group_mlps(mlps):
        raise ValueError("grouped_mlp_outputs needs MLPs of one shape (widths, activation, dropout).")
    widths = [m.out_features for m in mlps]
    seqs = [list(m.net) for m in mlps]
    if isinstance(inputs, Tensor):
        x = _check_input(inputs, mlps[0].in_features, "MLP")
        if x.ndim != 2:
            raise ShapeError(f"grouped_mlp_outputs needs (N, in) inputs; got {tuple(x.shape)}.")
        first: list[nn.Linear] = [s[0] for s in seqs]  # type: ignore[misc]
        w = torch.cat([lin.weight for lin in first])
        b = torch.cat([lin.bias for lin in first]) if first[0].bias is not None else None
        out = F.linear(x, w, b)  # (N, sum of first widths)
        if len(seqs[0]) == 1:  # a single (output) layer: widths may differ
            return list(out.split([lin.out_features for lin in first], dim=-1))
        h = out.reshape(x.shape[0], len(mlps), -1).transpose(0, 1)  # (K, N, h): a view
        return _split_outputs(_grouped_layers(seqs, 1, h), widths)
    if len(inputs) != len(mlps):
        raise ValueError(f"grouped_mlp_outputs needs one input per MLP ({len(mlps)}); got {len(inputs)}.")
    xs = [_check_input(x, mlps[0].in_features, "MLP") for x in inputs]
    if any(x.shape != xs[0].shape or x.ndim != 2 for x in xs):
        raise ShapeError(
            f"grouped_mlp_outputs needs (N, in) inputs of one shape; got {[tuple(x.shape) for x in xs]}."
        )
    return _split_outputs(_grouped_layers(seqs, 0, torch.stack(xs)), widths)


def batch_towers(x: Tensor) -> bool:
    """Whether towers of one shape on ``x`` are evaluated as one batched call (the default of
    :func:`tower_outputs` and :func:`stacked_tower_outputs`).

    True on accelerators, where every layer of every tower is otherwise its own small kernel
    launch (8 towers: 234 -> 162 ops per shared-bottom training step). False on the CPU, where
    the loop is as fast or faster: the batched products and their backward passes on strided
    ``(K, N, h)`` layouts cost about what the saved calls do (towers ``[32]`` on 64 features,
    batch 1024, forward + backward: 0.87x with 2 towers, 1.01x with 8; whole shared-bottom step
    0.96x / 0.97x; ``benchmarks/RESULTS.md``, "Architectures").
    """
    return x.device.type != "cpu"


def tower_outputs(
    towers: Mapping[str, nn.Module], inputs: Mapping[str, Tensor], *, batched: bool | None = None
) -> dict[str, Tensor]:
    """``{task: towers[task](inputs[task])}``: one batched evaluation for MLP towers of one shape
    (:func:`grouped_mlp_outputs`; towers that all read the same tensor share one first product),
    else tower by tower.

    Args:
        towers: ``{task: module}``.
        inputs: ``{task: (N, d) input}``; the towers are evaluated in this order.
        batched: batch compatible towers (default: :func:`batch_towers` of the first input).
    """
    names = list(inputs)
    mods = [towers[t] for t in names]
    xs = [inputs[t] for t in names]
    if batched is None:
        batched = bool(xs) and isinstance(xs[0], Tensor) and batch_towers(xs[0])
    if (
        batched
        and len(mods) > 1
        and all(isinstance(x, Tensor) and x.ndim == 2 for x in xs)
        and can_group_mlps(mods)
    ):
        if all(x is xs[0] for x in xs):
            return dict(zip(names, grouped_mlp_outputs(mods, xs[0])))  # type: ignore[arg-type]
        if all(x.shape == xs[0].shape for x in xs):
            return dict(zip(names, grouped_mlp_outputs(mods, xs)))  # type: ignore[arg-type]
    return {t: towers[t](x) for t, x in zip(names, xs)}


GATHER_FRACTION = 0.75
"""A task's layers run on its rows only when it has at most this fraction of the batch's rows
(below that, one batched call over every row costs about as much as the gather and scatter)."""


def select_rows(x: Tensor | Mapping[str, Tensor], idx: Tensor) -> Tensor | dict[str, Tensor] | None:
    """Rows ``idx`` of inputs ``x`` (a tensor, or a dict of tensors with one row per sample);
    None when ``x`` is not row-aligned (then the caller computes every row)."""
    if isinstance(x, Tensor):
        return x.index_select(0, idx) if x.ndim >= 1 else None
    if not isinstance(x, Mapping) or not x:
        return None
    n = None
    for v in x.values():
        if not isinstance(v, Tensor) or v.ndim < 1 or (n is not None and v.shape[0] != n):
            return None
        n = v.shape[0]
    return {k: v.index_select(0, idx) for k, v in x.items()}


def row_tower_outputs(
    towers: Mapping[str, nn.Module],
    inputs: Mapping[str, Tensor | Mapping[str, Tensor]],
    rows: Mapping[str, Tensor],
    n: int,
) -> dict[str, Tensor]:
    """:func:`tower_outputs` where task ``t`` in ``rows`` needs only rows ``rows[t]``: a task
    with at least 2 and at most :data:`GATHER_FRACTION` of the ``n`` rows runs on those rows and
    its output is scattered into zeros of ``n`` rows (the gradient reaches its rows only; the
    others are constants); the remaining tasks run on every row, batched where possible. Fewer
    than 2 rows keep the full computation, so normalisation layers always see a batch and an
    unlabelled task's parameters still get their (zero) gradients.
    """
    names = list(inputs)
    gathered: dict[str, Tensor] = {}
    for t in names:
        idx = rows.get(t)
        if idx is None or not 2 <= idx.numel() <= GATHER_FRACTION * n:
            continue
        sub = select_rows(inputs[t], idx)
        if sub is None:
            continue
        y = towers[t](sub)
        gathered[t] = y.new_zeros((n, *y.shape[1:])).index_copy(0, idx, y)
    rest = {t: inputs[t] for t in names if t not in gathered}
    full = tower_outputs(towers, rest) if rest else {}  # type: ignore[arg-type]
    return {t: gathered[t] if t in gathered else full[t] for t in names}


def stacked_tower_outputs(
    towers: Mapping[str, nn.Module], names: Sequence[str], h: Tensor, *, batched: bool | None = None
) -> dict[str, Tensor]:
    """``{names[k]: towers[names[k]](h[k])}`` for stacked inputs ``h`` ``(K, N, d)`` (e.g. every
    task's mixture, possibly a strided view): one batched evaluation for MLP towers of one shape
    (without copying ``h``), else tower by tower on ``h.unbind(0)`` (one unbind, so that the
    backward pass stacks the inputs' gradients once instead of zero-filling ``(K, N, d)`` per task).

    Args:
        towers: ``{task: module}``.
        names: the task of each row of ``h``.
        h: ``(K, N, d)``.
        batched: batch compatible towers (default: :func:`batch_towers` of ``h``).
    """
    if h.ndim < 2 or h.shape[0] != len(names):
        raise ShapeError(
            f"stacked_tower_outputs needs one row of h per task ({len(names)}); got {tuple(h.shape)}."
        )
    mods = [towers[t] for t in names]
    if batched is None:
        batched = batch_towers(h)
    if batched and len(mods) > 1 and h.ndim == 3 and can_group_mlps(mods):
        out = grouped_mlp_stacked(mods, h)  # type: ignore[arg-type]
        return dict(zip(names, _split_outputs(out, [m.out_features for m in mods])))
    return {t: towers[t](x) for t, x in zip(names, h.unbind(0))}


def gate_outputs(gates: Sequence[nn.Module], inputs: Sequence[Tensor]) -> list[Tensor]:
    """``[gates[i](inputs[i]) for i]``, batched for :class:`SoftmaxGate` s.

    Gates that read the same tensor are one matrix product over their concatenated weights
    (e.g. every gate of a level that reads the model input); gates of one shape that read
    different inputs of one shape are one batched product. Other gates are called one by one.
    """
    if len(gates) != len(inputs):
        raise ValueError(f"gate_outputs needs one input per gate ({len(gates)}); got {len(inputs)}.")
    if len(gates) < 2 or not all(type(g) is SoftmaxGate and g.bias is not None for g in gates):
        return [g(x) for g, x in zip(gates, inputs)]
    first: SoftmaxGate = gates[0]  # type: ignore[assignment]
    same_in = all(g.in_features == first.in_features for g in gates)  # type: ignore[union-attr]
    if same_in and all(x is inputs[0] for x in inputs):
        x = _check_input(inputs[0], first.in_features, "Gate")
        w = torch.cat([g.weight for g in gates])  # type: ignore[misc]
        b = torch.cat([g.bias for g in gates])  # type: ignore[misc]
        sizes = [g.out_features for g in gates]  # type: ignore[misc]
        return [torch.softmax(part, dim=-1) for part in F.linear(x, w, b).split(sizes, dim=-1)]
    same_out = all(g.out_features == first.out_features for g in gates)  # type: ignore[union-attr]
    if same_in and same_out and all(x.ndim == 2 and x.shape == inputs[0].shape for x in inputs):
        xs = torch.stack([_check_input(x, first.in_features, "Gate") for x in inputs])  # (K, N, in)
        w = torch.stack([g.weight for g in gates])  # (K, out, in)  # type: ignore[misc]
        b = torch.stack([g.bias for g in gates])  # type: ignore[misc]
        return list(torch.softmax(torch.baddbmm(b.unsqueeze(1), xs, w.transpose(1, 2)), dim=-1).unbind(0))
    return [g(x) for g, x in zip(gates, inputs)]
