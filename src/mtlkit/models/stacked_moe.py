"""Stacked (multi-level) MMoE: the mixture of one MoE level is the input of the next.

The idea of stacking mixture-of-experts layers, each reading the previous layer's mixture, is
Eigen, Ranzato and Sutskever, "Learning Factored Representations in a Deep Mixture of Experts"
(ICLR workshop 2014); the multi-task form below gives every task its own gate at every level
(MMoE, Ma et al., KDD 2018, stacked).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.errors import ShapeError
from mtlkit.models._base import Decoded, MultiTaskModel, params_of
from mtlkit.models._blocks import MLP, ExpertMLPs, SoftmaxGate
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models._kernels import gate_outputs, stack_experts, stacked_tower_outputs
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["StackedMMoE", "stacked_mmoe"]


def _as_module(experts: nn.Module | Sequence[nn.Module]) -> nn.Module:
    if isinstance(experts, nn.Module) and not isinstance(experts, nn.ModuleList):
        return experts
    experts = nn.ModuleList(list(experts))
    if not len(experts):
        raise ValueError("Every StackedMMoE level needs at least one expert.")
    return experts


class StackedMMoE(MultiTaskModel):
    """Multi-level MMoE: ``L`` mixture-of-experts levels, each task's mixture feeding the next level.

    Level ``l`` has its own experts ``e^l_1..e^l_{E_l}`` (shared by all tasks) and one gate per
    task. Task ``k``'s input at level 1 is the model input ``x``; at level ``l > 1`` it is task
    ``k``'s mixture of level ``l-1``::

        z^0_k = x
        z^l_k = sum_i g^l_k(z^{l-1}_k)_i e^l_i(z^{l-1}_k),    g^l_k = softmax(W^l_k z^{l-1}_k)
        y_k   = h_k(z^L_k)

    So above the first level the experts are applied to every task's own input (all tasks in
    one batched call), and each gate reads the same input as the experts it mixes (as in Eigen
    et al.'s deep MoE and in PLE). With ``L = 1`` this is :class:`~mtlkit.models.MMoE`.

    Experts are shared; task ``k`` owns its gates of every level (their output only flows into
    task ``k``'s path) and its tower. There is no single shared representation for ``L > 1``
    (the level-2 experts read task-specific inputs), so representation-level gradient methods
    are not available; use ``gradient_target='parameters'``.

    Args:
        experts: one expert module per level, mapping ``(M, d_l)`` to ``(M, E_l, D_l)`` (an
            :class:`ExpertMLPs` bank, any such module, or a list of modules mapping to
            ``(M, D_l)``); level ``l+1`` reads ``D_l``-wide inputs.
        gates: one ``{task: gate}`` mapping per level; each gate maps the task's level input
            ``(N, d_l)`` to ``(N, E_l)`` weights summing to one (default :class:`SoftmaxGate`).
        towers: ``{task: module}`` mapping the last level's mixture to the output.
        input_layer: optional shared module applied to the inputs first (e.g. embeddings).
    """

    def __init__(
        self,
        experts: Sequence[nn.Module | Sequence[nn.Module]],
        gates: Sequence[Mapping[str, nn.Module]],
        towers: Mapping[str, nn.Module],
        *,
        input_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not towers:
            raise ValueError("StackedMMoE needs at least one tower.")
        if not experts or len(experts) != len(gates):
            raise ValueError(
                f"StackedMMoE needs one expert module and one gate mapping per level (at least one level); got "
                f"{len(experts)} expert modules and {len(gates)} gate mappings."
            )
        self.task_names = tuple(towers)
        for j, g in enumerate(gates, 1):
            if set(g) != set(self.task_names):
                raise ValueError(
                    f"StackedMMoE level {j} has gates for {sorted(g)}, but the towers are for {list(self.task_names)}."
                )
        self.input_layer = input_layer
        self.experts = nn.ModuleList(_as_module(e) for e in experts)
        self.level_gates = nn.ModuleList(nn.ModuleDict({t: g[t] for t in self.task_names}) for g in gates)
        self.towers = nn.ModuleDict(dict(towers))

    @property
    def num_levels(self) -> int:
        return len(self.experts)

    def _features(self, x: Inputs) -> Tensor:
        return self.input_layer(x) if self.input_layer is not None else x  # type: ignore[return-value]

    def _levels(self, h: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The last level's per-task mixtures, stacked ``(T, N, D)``, and every gate's weights."""
        T = len(self.task_names)
        z: Tensor | None = None  # every task's level input, (T, N, d); None: every task reads h
        gates: dict[str, Tensor] = {}
        for j, (experts, level_gates) in enumerate(zip(self.experts, self.level_gates), 1):
            if z is None:
                inputs = [h] * T
                out = stack_experts(experts, h)  # (N, E, D), read by every task
            else:
                inputs = list(z.unbind(0))
                out = stack_experts(experts, z.reshape(-1, z.shape[-1]))  # all tasks in one call: (T*N, E, D)
            prefix = "" if j == self.num_levels else f"level{j}/"
            ws = gate_outputs([level_gates[t] for t in self.task_names], inputs)
            for t, w in zip(self.task_names, ws):
                if w.shape[-1] != out.shape[-2]:
                    raise ShapeError(
                        f"StackedMMoE level {j}: the gate of task {t!r} gives {w.shape[-1]} weights for "
                        f"{out.shape[-2]} experts."
                    )
                gates[prefix + t] = w
            if z is None:  # one product for all tasks: (N, T, E) x (N, E, D), viewed as (T, N, D)
                z = torch.bmm(torch.stack(ws, dim=1), out).transpose(0, 1)
            else:  # each task's weights with its own expert outputs: (T*N, 1, E) x (T*N, E, D)
                mixed = torch.bmm(torch.stack(ws).reshape(-1, 1, out.shape[-2]), out)
                z = mixed.reshape(T, -1, out.shape[-1])
        assert z is not None
        return z, gates

    def _forward(self, x: Inputs) -> Decoded:
        stacked, _ = self._levels(self._features(x))
        return stacked_tower_outputs(self.towers, self.task_names, stacked), {}

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        """``{task: (N, E_L)}`` for the last level, ``{"level{l}/{task}": (N, E_l)}`` for earlier ones."""
        return self._levels(self._features(x))[1]

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Task ``task``'s gates at every level and its tower (the experts are shared)."""
        self._check_task(task)
        return params_of(*(g[task] for g in self.level_gates), self.towers[task])


@MODELS.register("stacked_mmoe", aliases=("multilevel_mmoe", "stacked_moe"))
def stacked_mmoe(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    num_levels: int = 2,
    num_experts: int | list[int] = 4,
    expert_dims: Sequence[int] = (16,),
    tower_dims: Sequence[int] = (8,),
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> StackedMMoE:
    """Stacked MMoE: MoE levels with per-task gates, each task's mixture feeding the next level.

    Args:
        input_dim: width of flat input features (when there is no input layer).
        tasks: the tasks (one gate per level and one tower each).
        num_levels: MoE levels (1 is MMoE).
        num_experts: experts per level: one int for every level, or one per level.
        expert_dims: layer widths of every expert MLP (level 1 reads the input; higher levels
            read ``expert_dims[-1]``-wide mixtures).
        tower_dims: hidden widths of every tower.
        activation: activation of experts and towers.
        dropout: dropout after every hidden activation.
        input_layer: a shared backbone module (or factory) in front of the first level.
    """
    check_model_args(
        "stacked_mmoe",
        num_levels=num_levels,
        num_experts=num_experts,
        expert_dims=expert_dims,
        tower_dims=tower_dims,
        dropout=dropout,
    )
    names = task_names(tasks)
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"stacked_mmoe num_levels must be an int >= 1; got {num_levels!r}.")
    counts = [num_experts] * num_levels if isinstance(num_experts, int) else list(num_experts)
    if len(counts) != num_levels:
        raise ValueError(
            f"stacked_mmoe num_experts must be an int or one count per level ({num_levels}); got {num_experts!r}."
        )
    (layer,), width = make_input_layers(input_dim, input_layer, who="stacked_mmoe")
    experts, gates = [], []
    for n in counts:
        bank = ExpertMLPs(n, width, expert_dims, activation=activation, dropout=dropout)
        experts.append(bank)
        gates.append({t: SoftmaxGate(width, n) for t in names})
        width = bank.out_features
    towers = {
        t.name: MLP(width, tower_dims, t.output_dim, activation=activation, dropout=dropout) for t in tasks
    }
    return StackedMMoE(experts, gates, towers, input_layer=layer)
