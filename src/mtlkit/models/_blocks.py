"""Building blocks: MLPs, a batched bank of MLP experts and softmax gates."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ShapeError

__all__ = ["ACTIVATIONS", "MLP", "ExpertMLPs", "SoftmaxGates", "make_activation"]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "identity": nn.Identity,
}

_FUNCTIONAL: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "identity": lambda t: t,
}


_INPLACE: dict[str, Callable[[Tensor], Tensor]] = {
    "relu": torch.relu_,
    "tanh": torch.tanh_,
    "sigmoid": torch.sigmoid_,
    "leaky_relu": F.leaky_relu_,
    "elu": F.elu_,
}


def make_activation(name: str) -> nn.Module:
    """An activation module by name (one of :data:`ACTIVATIONS`)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}; got {name!r}.")
    return ACTIVATIONS[name]()


def _dims(dims: Sequence[int], what: str) -> tuple[int, ...]:
    try:
        out = tuple(int(d) for d in dims)
    except TypeError:
        raise ValueError(f"{what} must be a list of positive ints; got {dims!r}.") from None
    if any(d < 1 for d in out) or any(not float(d).is_integer() for d in dims):
        raise ValueError(f"{what} must be a list of positive ints; got {list(dims)!r}.")
    return out


def _check_input(x: object, in_features: int, who: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise ShapeError(
            f"{who} takes one feature tensor; got {type(x).__name__}. Named (dict) inputs need an input "
            "layer that turns them into one tensor (e.g. an embedding front end)."
        )
    if x.ndim < 1 or x.shape[-1] != in_features:
        raise ShapeError(
            f"{who} expects inputs with {in_features} features in the last dimension; got shape "
            f"{tuple(x.shape)}. Check the model's input_dim against the data."
        )
    return x


class MLP(nn.Module):
    """Linear -> activation (-> dropout) blocks; an optional final linear layer without activation.

    Args:
        in_features: input width.
        hidden_dims: widths of the hidden layers (each followed by the activation).
        out_features: width of a final linear output layer; ``None`` ends on the last hidden layer.
        activation: activation name.
        dropout: dropout probability after each hidden activation.
    """

    def __init__(
        self,
        in_features: int,
        hidden_dims: Sequence[int] = (),
        out_features: int | None = None,
        *,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"MLP in_features must be an int >= 1; got {in_features!r}.")
        hidden = _dims(hidden_dims, "MLP hidden_dims")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}.")
        if out_features is None and not hidden:
            raise ValueError("MLP needs hidden_dims or out_features; got neither.")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), make_activation(activation)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_features is not None:
            layers.append(nn.Linear(width, int(out_features)))
            width = int(out_features)
        self.net = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, width

    def forward(self, x: Tensor) -> Tensor:
        return self.net(_check_input(x, self.in_features, "MLP"))


class ExpertMLPs(nn.Module):
    """``num_experts`` independent MLPs evaluated together with batched matrix products.

    ``forward(x)`` maps ``(N, in_features)`` to ``(N, num_experts, out_features)``. The first
    layer of all experts is one ``(in, E*h)`` matrix product; deeper layers are one batched
    ``bmm`` over experts. Every layer is followed by the activation (experts produce hidden
    representations). Initialisation matches ``nn.Linear`` per expert.
    """

    def __init__(
        self,
        num_experts: int,
        in_features: int,
        hidden_dims: Sequence[int],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if not isinstance(num_experts, int) or num_experts < 1:
            raise ValueError(f"num_experts must be an int >= 1; got {num_experts!r}.")
        if not isinstance(in_features, int) or in_features < 1:
            raise ValueError(f"in_features must be an int >= 1; got {in_features!r}.")
        dims = _dims(hidden_dims, "expert hidden_dims")
        if not dims:
            raise ValueError("expert hidden_dims needs at least one layer width.")
        if activation not in _FUNCTIONAL:
            raise ValueError(
                f"activation must be one of {', '.join(map(repr, _FUNCTIONAL))}; got {activation!r}."
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}.")
        self.num_experts, self.in_features, self.hidden_dims = num_experts, in_features, dims
        self.out_features = dims[-1]
        self.activation, self.dropout = activation, dropout
        self._act = _FUNCTIONAL[activation]
        self._act_ = _INPLACE.get(activation)
        E = num_experts
        # first layer stored (in, E, h): viewed as one (in, E*h) matrix
        self.weight0 = nn.Parameter(torch.empty(in_features, E, dims[0]))
        self.bias0 = nn.Parameter(torch.empty(E, dims[0]))
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for a, b in itertools.pairwise(dims):
            self.weights.append(nn.Parameter(torch.empty(E, a, b)))
            self.biases.append(nn.Parameter(torch.empty(E, b)))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
        with torch.no_grad():
            bound = 1.0 / math.sqrt(self.in_features)
            self.weight0.uniform_(-bound, bound)
            self.bias0.uniform_(-bound, bound)
            for w, b in zip(self.weights, self.biases):
                bound = 1.0 / math.sqrt(w.shape[1])
                w.uniform_(-bound, bound)
                b.uniform_(-bound, bound)

    def expert_layers(self, e: int) -> list[tuple[Tensor, Tensor]]:
        """(weight (in, out), bias (out,)) of every layer of expert ``e`` (for references and tests)."""
        out = [(self.weight0[:, e, :], self.bias0[e])]
        out += [(w[e], b[e]) for w, b in zip(self.weights, self.biases)]
        return out

    def _activate(self, h: Tensor) -> Tensor:
        # in place where autograd allows it (the matmul outputs are not needed for their backward)
        h = self._act_(h) if self._act_ is not None else self._act(h)
        return F.dropout(h, self.dropout, self.training) if self.dropout else h

    def forward_layer(self, index: int, h: Tensor) -> Tensor:
        """Layer ``index`` of every expert alone, expert-major: ``(E, N, in) -> (E, N, out)``.

        Layer 0 also takes one input shared by all experts, ``(N, in_features)``. Used by
        architectures that act between layers (cross-stitch units mix the experts' activations).
        """
        E = self.num_experts
        if index == 0:
            if not (isinstance(h, Tensor) and h.ndim == 3):
                h = _check_input(h, self.in_features, "ExpertMLPs")
                out = torch.addmm(self.bias0.reshape(-1), h, self.weight0.reshape(self.in_features, -1))
                return self._activate(out.reshape(h.shape[0], E, -1).transpose(0, 1))
            w, b = self.weight0.transpose(0, 1), self.bias0
        else:
            w, b = self.weights[index - 1], self.biases[index - 1]
        if h.ndim != 3 or h.shape[0] != E or h.shape[2] != w.shape[1]:
            raise ShapeError(
                f"ExpertMLPs layer {index} expects ({E}, N, {w.shape[1]}) inputs; got {tuple(h.shape)}."
            )
        return self._activate(torch.baddbmm(b.unsqueeze(1), h, w))

    def forward(self, x: Tensor) -> Tensor:
        x = _check_input(x, self.in_features, "ExpertMLPs")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        E, h0 = self.num_experts, self.hidden_dims[0]
        if not len(self.weights):
            # one layer: a single (N, in) x (in, E*h) product, output viewed as (N, E, h)
            h = torch.addmm(self.bias0.reshape(-1), x2, self.weight0.reshape(self.in_features, E * h0))
            return self._activate(h).reshape(*lead, E, h0)
        # deeper experts stay expert-major (E, N, h) and contiguous through every layer, so each
        # layer is one bmm and no gradient needs a layout copy; the result is returned as a view.
        h = torch.baddbmm(self.bias0.unsqueeze(1), x2.expand(E, *x2.shape), self.weight0.transpose(0, 1))
        h = self._activate(h)
        for w, b in zip(self.weights, self.biases):
            h = self._activate(torch.baddbmm(b.unsqueeze(1), h, w))
        return h.transpose(0, 1).reshape(*lead, E, self.out_features)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, in_features={self.in_features}, "
            f"hidden_dims={list(self.hidden_dims)}, activation={self.activation!r}"
        )


class SoftmaxGates(nn.Module):
    """One linear softmax gate per name: ``softmax(W_k x + b_k)`` over ``num_experts``.

    ``forward(x)`` returns ``(N, K, num_experts)`` for the ``K`` names, computed with one
    matrix product over the concatenated gate weights. Each gate keeps its own parameters
    (``gates[name]``) so that a task owns its gate.
    """

    def __init__(
        self, names: Sequence[str], in_features: int, num_experts: int, *, bias: bool = True
    ) -> None:
        super().__init__()
        if not names:
            raise ValueError("SoftmaxGates needs at least one gate name.")
        self.names = tuple(names)
        self.in_features, self.num_experts = in_features, num_experts
        self.gates = nn.ModuleDict({n: nn.Linear(in_features, num_experts, bias=bias) for n in self.names})

    def forward(self, x: Tensor) -> Tensor:
        x = _check_input(x, self.in_features, "Gate")
        gates = [self.gates[n] for n in self.names]
        w = torch.cat([g.weight for g in gates]) if len(gates) > 1 else gates[0].weight
        logits = F.linear(x, w, torch.cat([g.bias for g in gates]) if gates[0].bias is not None else None)
        return torch.softmax(logits.reshape(*x.shape[:-1], len(gates), self.num_experts), dim=-1)

    def by_name(self, x: Tensor) -> Mapping[str, Tensor]:
        g = self.forward(x)
        return {n: g[..., i, :] for i, n in enumerate(self.names)}


__all__ += ["SoftmaxGate", "can_group_experts", "grouped_expert_outputs"]


class SoftmaxGate(nn.Linear):
    """One linear softmax gate, ``softmax(W x + b)`` over ``out_features`` experts.

    The single-gate counterpart of :class:`SoftmaxGates`, for gates that read different inputs
    (e.g. each task's own representation at the higher levels of PLE or a stacked MMoE).
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(super().forward(_check_input(x, self.in_features, "Gate")), dim=-1)


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


__all__ += [
    "batch_towers",
    "can_group_mlps",
    "grouped_mlp_outputs",
    "grouped_mlp_stacked",
    "stacked_tower_outputs",
    "tower_outputs",
]


def can_group_mlps(mlps: Sequence[nn.Module]) -> bool:
    """True when ``mlps`` are :class:`MLP` s of one shape (input width, hidden widths, activation,
    dropout); their final output widths may differ."""
    if not mlps or not all(isinstance(m, MLP) for m in mlps):
        return False
    seqs = [list(m.net) for m in mlps]
    first = seqs[0]
    if any(len(s) != len(first) for s in seqs):
        return False
    for i, mod in enumerate(first):
        for other in (s[i] for s in seqs[1:]):
            if type(other) is not type(mod):
                return False
            if isinstance(mod, nn.Linear):
                last = i == len(first) - 1
                if other.in_features != mod.in_features or (
                    other.out_features != mod.out_features and not last
                ):
                    return False
                if (mod.bias is None) != (other.bias is None):
                    return False
            elif repr(other) != repr(mod):
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


__all__ += ["gate_outputs"]


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
