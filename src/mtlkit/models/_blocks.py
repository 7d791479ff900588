"""Building blocks: MLPs, a batched bank of MLP experts, softmax gates, and the one activation table.

The batched evaluation of several blocks at once (towers, expert banks, gates) lives in
:mod:`mtlkit.models._kernels`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mtlkit.errors import ShapeError

__all__ = ["ACTIVATIONS", "MLP", "Activation", "ExpertMLPs", "SoftmaxGate", "SoftmaxGates", "make_activation"]


@dataclass(frozen=True)
class Activation:
    """One activation in its three forms: a module class (for ``nn.Sequential`` layers), a function,
    and an in-place function (None where autograd or torch has none)."""

    module: Callable[[], nn.Module]
    function: Callable[[Tensor], Tensor]
    inplace: Callable[[Tensor], Tensor] | None = None


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation(nn.ReLU, F.relu, torch.relu_),
    "gelu": Activation(nn.GELU, F.gelu),
    "silu": Activation(nn.SiLU, F.silu),
    "tanh": Activation(nn.Tanh, torch.tanh, torch.tanh_),
    "sigmoid": Activation(nn.Sigmoid, torch.sigmoid, torch.sigmoid_),
    "leaky_relu": Activation(nn.LeakyReLU, F.leaky_relu, F.leaky_relu_),
    "elu": Activation(nn.ELU, F.elu, F.elu_),
    "identity": Activation(nn.Identity, lambda t: t),
}
"""Every activation a block accepts, by name."""


def resolve_activation(name: str) -> Activation:
    """The :class:`Activation` called ``name``; a clear error naming the choices otherwise."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}; got {name!r}.")
    return ACTIVATIONS[name]


def make_activation(name: str) -> nn.Module:
    """An activation module by name (one of :data:`ACTIVATIONS`)."""
    return resolve_activation(name).module()


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
        act = resolve_activation(activation)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}.")
        if out_features is None and not hidden:
            raise ValueError("MLP needs hidden_dims or out_features; got neither.")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), act.module()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_features is not None:
            layers.append(nn.Linear(width, int(out_features)))
            width = int(out_features)
        self.net = nn.Sequential(*layers)
        self.in_features, self.out_features = in_features, width
        self.hidden_dims, self.activation, self.dropout = hidden, activation, float(dropout)

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
        act = resolve_activation(activation)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1); got {dropout!r}.")
        self.num_experts, self.in_features, self.hidden_dims = num_experts, in_features, dims
        self.out_features = dims[-1]
        self.activation, self.dropout = activation, dropout
        self._act, self._act_ = act.function, act.inplace
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


class SoftmaxGate(nn.Linear):
    """One linear softmax gate, ``softmax(W x + b)`` over ``out_features`` experts.

    The single-gate counterpart of :class:`SoftmaxGates`, for gates that read different inputs
    (e.g. each task's own representation at the higher levels of PLE or a stacked MMoE).
    """

    def forward(self, x: Tensor) -> Tensor:
        return torch.softmax(super().forward(_check_input(x, self.in_features, "Gate")), dim=-1)
