"""Soft parameter sharing: one network per task, corresponding layers coupled by a penalty.

Duong et al. (ACL 2015) couple two task networks with ``||W_1 - W_2||_F^2``; Yang & Hospedales
("Trace Norm Regularised Deep Multi-Task Learning", ICLR workshop 2017) stack the task networks'
weights of each layer and penalise the trace (nuclear) norm of the stack, which favours weights
that are linear combinations of a few shared ones. Nothing is shared in the parameter sense:
the penalty is the only coupling and joins the objective as the auxiliary loss
``forward_parts(x).aux["soft_sharing"] = strength * penalty``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.models._base import Decoded, MultiTaskModel
from mtlkit.models._blocks import MLP
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["PENALTIES", "SoftSharing", "l2_coupling", "soft_sharing", "trace_norm_coupling"]

AUX_KEY = "soft_sharing"
PENALTIES = ("l2", "trace")


def l2_coupling(stacked: Tensor, /) -> Tensor:
    """Sum of squared distances over all task pairs: ``sum_{i<j} ||W_i - W_j||_F^2``.

    Args:
        stacked: ``(T, ...)`` one layer's weights of the ``T`` tasks.

    Computed as ``T * sum_i ||W_i - mean_j W_j||_F^2`` (the same number, in ``O(T P)``).
    """
    flat = stacked.flatten(1)
    centred = flat - flat.mean(0, keepdim=True)
    return flat.shape[0] * centred.square().sum()


def trace_norm_coupling(stacked: Tensor, /) -> Tensor:
    """Nuclear norm of the task-axis flattening ``(T, P)`` of one layer's stacked weights.

    The "last axis flattening" tensor trace norm of Yang & Hospedales (2017): the sum of the
    singular values of the matrix whose row ``k`` is task ``k``'s flattened weight.
    """
    return torch.linalg.matrix_norm(stacked.flatten(1), ord="nuc")


_COUPLINGS = {"l2": l2_coupling, "trace": trace_norm_coupling}


class SoftSharing(MultiTaskModel):
    """One network per task, corresponding weights coupled by an L2 or trace-norm penalty.

    ``forward_parts(x).aux`` holds ``"soft_sharing"``, the scaled penalty
    ``strength * sum_l c(W_l^1, ..., W_l^T)`` over the tied parameters ``l`` (see
    :func:`l2_coupling`, :func:`trace_norm_coupling`). The trainer adds it to the objective as it
    is. Every parameter belongs to its task, so ``shared_parameters()`` is empty: gradient-level
    balancing methods (which combine gradients of shared parameters) are refused, loss weightings
    work.

    Args:
        networks: ``{task: module}``, each mapping the inputs to that task's output.
        penalty: ``"l2"`` (pairwise squared Frobenius distances) or ``"trace"`` (nuclear norm of
            the stacked weights).
        strength: the penalty's factor (>= 0; 0 turns the coupling off).
        tied: names (as in ``network.named_parameters()``) of the parameters to couple; each must
            exist in every network with the same shape. Default: every parameter with at least
            two dimensions (weight matrices, embedding tables, kernels) whose name and shape are
            the same in all networks.
    """

    def __init__(
        self,
        networks: Mapping[str, nn.Module],
        *,
        penalty: Literal["l2", "trace"] = "l2",
        strength: float = 0.01,
        tied: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        if not networks:
            raise ValueError("SoftSharing needs at least one task network.")
        if penalty not in _COUPLINGS:
            raise ValueError(
                f"SoftSharing penalty must be one of {', '.join(map(repr, PENALTIES))}; got {penalty!r}."
            )
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not strength >= 0:
            raise ValueError(f"SoftSharing strength must be a float >= 0; got {strength!r}.")
        self.task_names = tuple(networks)
        self.networks = nn.ModuleDict(dict(networks))
        self.penalty, self.strength = penalty, float(strength)
        self.tied = self._resolve_tied(tied)
        if self.strength > 0 and not self.tied:
            raise ValueError(
                "SoftSharing has no parameters to couple: no weight has the same name and shape in every task "
                "network. Give the networks corresponding layers, name them with tied=..., or set strength=0."
            )

    def _resolve_tied(self, tied: Sequence[str] | None) -> tuple[str, ...]:
        named = [dict(self.networks[t].named_parameters()) for t in self.task_names]
        if tied is None:
            first = named[0]
            return tuple(
                n
                for n, p in first.items()
                if p.ndim >= 2 and all(n in other and other[n].shape == p.shape for other in named[1:])
            )
        for n in tied:
            shapes = {t: tuple(ps[n].shape) if n in ps else None for t, ps in zip(self.task_names, named)}
            if None in shapes.values() or len(set(shapes.values())) != 1:
                raise ValueError(
                    f"SoftSharing tied parameter {n!r} must exist with one shape in every task network; got "
                    + ", ".join(f"{t}: {s if s is not None else 'missing'}" for t, s in shapes.items())
                    + "."
                )
        return tuple(tied)

    def stacked(self, name: str) -> Tensor:
        """The tied parameter ``name`` of every task network, stacked: ``(T, *shape)``."""
        return torch.stack([self.networks[t].get_parameter(name) for t in self.task_names])

    def coupling_penalty(self) -> Tensor:
        """The unscaled penalty ``sum_l c(stack_l)`` over the tied parameters."""
        fn = _COUPLINGS[self.penalty]
        terms = [fn(self.stacked(n)) for n in self.tied]
        if not terms:
            ref = next(self.parameters())
            return ref.new_zeros(())
        return torch.stack(terms).sum()

    def _forward(self, x: Inputs) -> Decoded:
        out = {t: self.networks[t](x) for t in self.task_names}
        aux = {AUX_KEY: self.strength * self.coupling_penalty()} if self.strength > 0 else {}
        return out, aux

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        return list(self.networks[task].parameters())

    def extra_repr(self) -> str:
        return f"penalty={self.penalty!r}, strength={self.strength}, tied={list(self.tied)}"


@MODELS.register("soft_sharing")
def soft_sharing(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    hidden_dims: Sequence[int] = (64, 32),
    penalty: Literal["l2", "trace"] = "l2",
    strength: float = 0.01,
    tie_input_layer: bool = True,
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> SoftSharing:
    """Soft parameter sharing: one MLP per task, hidden layers coupled by an L2 or trace-norm penalty.

    The hidden layers' weight matrices are tied (the output layers differ in width between tasks
    and stay free); with an input layer, each task gets its own copy, whose weights (e.g. the
    embedding table) are tied as well unless ``tie_input_layer=False``.
    """
    check_model_args("soft_sharing", hidden_dims=hidden_dims, dropout=dropout)
    task_names(tasks)
    if not hidden_dims:
        raise ValueError("soft_sharing needs at least one hidden layer to couple; got hidden_dims=[].")
    layers, width = make_input_layers(input_dim, input_layer, copies=len(tasks), who="soft_sharing")
    networks: dict[str, nn.Module] = {}
    for t, layer in zip(tasks, layers):
        mlp = MLP(width, hidden_dims, t.output_dim, activation=activation, dropout=dropout)
        networks[t.name] = nn.Sequential(mlp) if layer is None else nn.Sequential(layer, mlp)
    first = next(iter(networks.values()))
    mlp_prefix = str(len(first) - 1)
    linears = [n for n, m in first[-1].net.named_children() if isinstance(m, nn.Linear)][
        :-1
    ]  # not the output
    tied = [f"{mlp_prefix}.net.{n}.weight" for n in linears]
    if layers[0] is not None and tie_input_layer:
        tied = [f"0.{n}" for n, p in first[0].named_parameters() if p.ndim >= 2] + tied
    return SoftSharing(networks, penalty=penalty, strength=strength, tied=tied)
