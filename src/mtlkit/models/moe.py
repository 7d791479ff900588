"""Mixture-of-experts models: OMoE (one gate) and MMoE (one gate per task)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.models._base import Decoded, MultiTaskModel, params_of
from mtlkit.models._blocks import MLP, ExpertMLPs, SoftmaxGates
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models._kernels import stack_experts, stacked_tower_outputs, tower_outputs
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["MMoE", "OMoE", "mmoe", "omoe"]


def _as_experts(experts: nn.Module | Sequence[nn.Module]) -> nn.Module:
    if isinstance(experts, nn.Module) and not isinstance(experts, nn.ModuleList):
        return experts
    experts = nn.ModuleList(list(experts))
    if len(experts) == 0:
        raise ValueError("A mixture of experts needs at least one expert.")
    return experts


class _MoEBase(MultiTaskModel):
    def __init__(
        self,
        experts: nn.Module | Sequence[nn.Module],
        towers: Mapping[str, nn.Module],
        input_layer: nn.Module | None,
    ) -> None:
        super().__init__()
        if not towers:
            raise ValueError(f"{type(self).__name__} needs at least one tower.")
        self.task_names = tuple(towers)
        self.input_layer = input_layer
        self.experts = _as_experts(experts)
        self.towers = nn.ModuleDict(dict(towers))

    def _features(self, x: Inputs) -> Tensor:
        return self.input_layer(x) if self.input_layer is not None else x  # type: ignore[return-value]


class MMoE(_MoEBase):
    """Multi-gate mixture of experts (Ma et al., KDD 2018).

    ``f_k(x) = sum_i g_k(x)_i e_i(x)`` with ``g_k(x) = softmax(W_k x)``, then ``y_k = h_k(f_k(x))``.
    Experts are shared; each task owns its gate and tower.

    Args:
        experts: an :class:`ExpertMLPs` bank (batched) or any module mapping ``x`` to
            ``(N, E, D)``, or a list of modules each mapping ``x`` to ``(N, D)``.
        gates: :class:`SoftmaxGates` with one gate per task (or any module returning
            ``(N, T, E)`` weights that sum to one over experts).
        towers: ``{task: module}`` mapping ``(N, D)`` to the task output.
        input_layer: optional shared module applied to the inputs first (e.g. embeddings).
            Its output also feeds the gates; with representation-level gradient methods the
            shared representation is the expert output, so the input layer then learns only
            through the experts (the gate path's share of its gradient is per-task and is not
            aggregated).
    """

    def __init__(
        self,
        experts: nn.Module | Sequence[nn.Module],
        gates: nn.Module,
        towers: Mapping[str, nn.Module],
        *,
        input_layer: nn.Module | None = None,
    ) -> None:
        super().__init__(experts, towers, input_layer)
        if isinstance(gates, SoftmaxGates) and gates.names != self.task_names:
            raise ValueError(
                f"MMoE gates must be named after the tasks {self.task_names}; got {gates.names}."
            )
        self.gate = gates

    def _encode(self, x: Inputs) -> tuple[Tensor, Tensor]:
        # the input layer once: its output feeds the experts (rep) and the gates (ctx)
        h = self._features(x)
        return stack_experts(self.experts, h), h  # (N, E, D)

    def _decode(self, rep: Tensor, h: Tensor) -> Decoded:
        # One gate and one mixture per task, so that each task's backward pass (gradient-level
        # methods take one per task) touches only its own gate; _forward does all tasks at once.
        if not isinstance(self.gate, SoftmaxGates):
            mixed = torch.bmm(self.gate(h), rep)  # (N, T, D)
            return stacked_tower_outputs(self.towers, self.task_names, mixed.transpose(0, 1), batched=False), {}
        out = {}
        for t in self.task_names:
            g = torch.softmax(self.gate.gates[t](h), dim=-1)  # (N, E)
            out[t] = self.towers[t](torch.bmm(g.unsqueeze(1), rep).squeeze(1))
        return out, {}

    def _forward(self, x: Inputs) -> Decoded:
        h = self._features(x)
        mixed = torch.bmm(self.gate(h), stack_experts(self.experts, h))  # all gates in one product: (N, T, D)
        return stacked_tower_outputs(self.towers, self.task_names, mixed.transpose(0, 1)), {}

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        g = self.gate(self._features(x))
        return {t: g[:, i] for i, t in enumerate(self.task_names)}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        own_gate = self.gate.gates[task] if isinstance(self.gate, SoftmaxGates) else None
        return params_of(own_gate, self.towers[task])


class OMoE(_MoEBase):
    """One-gate mixture of experts: ``f(x) = sum_i g(x)_i e_i(x)`` shared by all towers.

    Args:
        experts: as for :class:`MMoE`.
        gate: module mapping ``x`` to ``(N, E)`` weights (default: a linear softmax gate).
        towers: ``{task: module}``.
        input_layer: optional shared module applied to the inputs first.
    """

    def __init__(
        self,
        experts: nn.Module | Sequence[nn.Module],
        gate: nn.Module,
        towers: Mapping[str, nn.Module],
        *,
        input_layer: nn.Module | None = None,
    ) -> None:
        super().__init__(experts, towers, input_layer)
        self.gate = gate

    def _gate(self, h: Tensor) -> Tensor:
        g = self.gate(h)
        return g[:, 0] if g.ndim == 3 else g  # SoftmaxGates with one name gives (N, 1, E)

    def _encode(self, x: Inputs) -> tuple[Tensor, None]:
        h = self._features(x)
        return torch.bmm(self._gate(h).unsqueeze(1), stack_experts(self.experts, h)).squeeze(1), None  # (N, D)

    def _decode(self, rep: Tensor, ctx: None) -> Decoded:
        # tower by tower: each task's backward pass (gradient-level methods) touches only its tower
        return {t: self.towers[t](rep) for t in self.task_names}, {}

    def _forward(self, x: Inputs) -> Decoded:
        rep = self._encode(x)[0]
        return tower_outputs(self.towers, dict.fromkeys(self.task_names, rep)), {}

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        return {"shared": self._gate(self._features(x))}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        return list(self.towers[task].parameters())


def _moe_parts(
    input_dim: int | None,
    tasks: Sequence[Task],
    num_experts: int,
    expert_dims: Sequence[int],
    tower_dims: Sequence[int],
    activation: str,
    dropout: float,
    input_layer: InputLayerLike | None,
    who: str,
) -> tuple[nn.Module | None, int, ExpertMLPs, dict[str, MLP]]:
    task_names(tasks)
    (layer,), width = make_input_layers(input_dim, input_layer, who=who)
    experts = ExpertMLPs(num_experts, width, expert_dims, activation=activation, dropout=dropout)
    towers = {
        t.name: MLP(experts.out_features, tower_dims, t.output_dim, activation=activation, dropout=dropout)
        for t in tasks
    }
    return layer, width, experts, towers


@MODELS.register("mmoe")
def mmoe(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    num_experts: int = 8,
    expert_dims: Sequence[int] = (16,),
    tower_dims: Sequence[int] = (8,),
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> MMoE:
    """MMoE (Ma et al. 2018): shared MLP experts, one softmax gate and one tower per task."""
    check_model_args(
        "mmoe",
        num_experts=num_experts,
        expert_dims=expert_dims,
        tower_dims=tower_dims,
        dropout=dropout,
    )
    layer, width, experts, towers = _moe_parts(
        input_dim, tasks, num_experts, expert_dims, tower_dims, activation, dropout, input_layer, "mmoe"
    )
    gates = SoftmaxGates([t.name for t in tasks], width, num_experts)
    return MMoE(experts, gates, towers, input_layer=layer)


@MODELS.register("omoe", aliases=("moe",))
def omoe(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    num_experts: int = 8,
    expert_dims: Sequence[int] = (16,),
    tower_dims: Sequence[int] = (8,),
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> OMoE:
    """One-gate MoE: shared MLP experts mixed by a single softmax gate, one tower per task."""
    check_model_args(
        "omoe",
        num_experts=num_experts,
        expert_dims=expert_dims,
        tower_dims=tower_dims,
        dropout=dropout,
    )
    layer, width, experts, towers = _moe_parts(
        input_dim, tasks, num_experts, expert_dims, tower_dims, activation, dropout, input_layer, "omoe"
    )
    return OMoE(experts, SoftmaxGates(["shared"], width, num_experts), towers, input_layer=layer)
