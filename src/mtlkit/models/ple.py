"""CGC and PLE (Tang et al., RecSys 2020): task-specific and shared experts, progressive extraction.

Paper: H. Tang, J. Liu, M. Zhao, X. Gong, "Progressive Layered Extraction (PLE): A Novel
Multi-Task Learning (MTL) Model for Personalized Recommendations", RecSys 2020.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.errors import ShapeError
from mtlkit.models._base import Decoded, MultiTaskModel, params_of
from mtlkit.models._blocks import MLP, ExpertMLPs, SoftmaxGate
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models._kernels import (
    can_group_experts,
    gate_outputs,
    grouped_expert_outputs,
    stack_experts,
    tower_outputs,
)
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["CGC", "PLE", "ExtractionNetwork", "LevelOutput", "cgc", "ple"]


def _as_module(experts: nn.Module | Sequence[nn.Module] | None) -> nn.Module | None:
    if experts is None or (isinstance(experts, nn.Module) and not isinstance(experts, nn.ModuleList)):
        return experts
    experts = nn.ModuleList(list(experts))
    return experts if len(experts) else None


def _mix(weights: Tensor, experts: Tensor) -> Tensor:
    """``sum_e weights[n, e] * experts[n, e, :]``: ``(N, E) x (N, E, D) -> (N, D)``."""
    return torch.bmm(weights.unsqueeze(1), experts).squeeze(1)


class LevelOutput(NamedTuple):
    """What one extraction level produces.

    Attributes:
        tasks: each task's mixture ``(N, D)``, in task order (the next level's task inputs).
        shared: the shared gate's mixture ``(N, D)`` (the next level's shared input), or None.
        gates: the gate weights, ``{task: (N, m_k + m_s)}`` and ``{"shared": (N, sum m_k + m_s)}``.
    """

    tasks: tuple[Tensor, ...]
    shared: Tensor | None
    gates: dict[str, Tensor]


class ExtractionNetwork(nn.Module):
    """One extraction level of CGC / PLE.

    For task ``k`` with input ``x_k`` and the shared input ``x_s`` (all equal to the model input
    at the first level)::

        S_k(x) = [E_k,1(x_k), ..., E_k,m_k(x_k), E_s,1(x_s), ..., E_s,m_s(x_s)]   (m_k + m_s experts)
        out_k  = sum_i g_k(x_k)_i S_k(x)_i,            g_k = softmax(W_k x_k)
        out_s  = sum_i g_s(x_s)_i S(x)_i               (every task's experts, then the shared ones)

    Default MLP experts (:class:`ExpertMLPs` banks of one shape) are evaluated together, every
    layer of every task's and the shared experts being one matrix product, even when they read
    different inputs; other expert modules are called one bank at a time.

    Args:
        task_experts: ``{task: experts}``, mapping the task's input ``(N, d)`` to ``(N, m_k, D)``
            (an :class:`ExpertMLPs` bank or any module; a list of modules mapping to ``(N, D)``
            also works). A task without an entry has no experts of its own (``m_k = 0``).
        shared_experts: experts on the shared input, ``(N, d_s) -> (N, m_s, D)``; None for
            ``m_s = 0``.
        task_gates: ``{task: gate}`` for every task, in task order; each maps the task's input to
            ``(N, m_k + m_s)`` weights that sum to one (own experts first, then shared).
        shared_gate: maps the shared input to ``(N, sum_k m_k + m_s)`` weights over all the
            level's experts (tasks' experts in task order, then the shared ones); None at the
            last level, which feeds only the towers.
    """

    def __init__(
        self,
        task_experts: Mapping[str, nn.Module | Sequence[nn.Module]],
        shared_experts: nn.Module | Sequence[nn.Module] | None,
        task_gates: Mapping[str, nn.Module],
        shared_gate: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not task_gates:
            raise ValueError("ExtractionNetwork needs one gate per task; got no task_gates.")
        self.task_names = tuple(task_gates)
        unknown = [t for t in task_experts if t not in self.task_names]
        if unknown:
            raise ValueError(
                f"ExtractionNetwork task_experts name tasks without a gate: {unknown}; tasks: {list(self.task_names)}."
            )
        experts = {t: _as_module(task_experts[t]) for t in self.task_names if t in task_experts}
        self.task_experts = nn.ModuleDict({t: m for t, m in experts.items() if m is not None})
        self.shared_experts = _as_module(shared_experts)
        if self.shared_experts is None:
            lonely = [t for t in self.task_names if t not in self.task_experts]
            if lonely:
                raise ValueError(
                    f"ExtractionNetwork: tasks {lonely} have no experts of their own and there are no shared "
                    "experts, so their gates have nothing to mix. Give every task at least one expert."
                )
        self.task_gates = nn.ModuleDict(dict(task_gates))
        self.shared_gate = shared_gate

    def _experts(
        self, task_inputs: Sequence[Tensor], shared_input: Tensor | None
    ) -> tuple[Tensor, list[int]]:
        """All experts' outputs ``(N, E, D)`` (tasks' in task order, then shared) and the bank sizes."""
        banks: list[nn.Module] = []
        inputs: list[Tensor] = []
        for t, x in zip(self.task_names, task_inputs):
            if t in self.task_experts:
                banks.append(self.task_experts[t])
                inputs.append(x)
        if self.shared_experts is not None:
            if shared_input is None:
                raise ShapeError("ExtractionNetwork has shared experts but was given no shared input.")
            banks.append(self.shared_experts)
            inputs.append(shared_input)
        if can_group_experts(banks):
            same = all(x is inputs[0] for x in inputs)
            out = grouped_expert_outputs(banks, inputs[0] if same else inputs)  # type: ignore[arg-type]
            return out, [b.num_experts for b in banks]  # type: ignore[misc]
        outs = [stack_experts(b, x) for b, x in zip(banks, inputs)]
        return torch.cat(outs, dim=-2) if len(outs) > 1 else outs[0], [o.shape[-2] for o in outs]

    def _gate_weights(
        self, task_inputs: Sequence[Tensor], shared_input: Tensor | None
    ) -> tuple[list[Tensor], Tensor | None]:
        """Every task gate's weights (batched where the gates allow) and the shared gate's (or None)."""
        gates = [self.task_gates[t] for t in self.task_names]
        if self.shared_gate is None:
            return gate_outputs(gates, task_inputs), None
        if shared_input is None:
            raise ShapeError("ExtractionNetwork has a shared gate but was given no shared input.")
        if all(x is shared_input for x in task_inputs):  # e.g. the first level: all gates read x
            *task_w, shared_w = gate_outputs([*gates, self.shared_gate], [*task_inputs, shared_input])
            return task_w, shared_w
        return gate_outputs(gates, task_inputs), self.shared_gate(shared_input)

    def forward(self, task_inputs: Sequence[Tensor], shared_input: Tensor | None) -> LevelOutput:
        """Mix the level's experts for every task (and for the shared path when it has a shared gate).

        Args:
            task_inputs: one ``(N, d)`` tensor per task, in task order.
            shared_input: the shared path's ``(N, d_s)`` input (None when there are no shared experts
                and no shared gate).
        """
        if len(task_inputs) != len(self.task_names):
            raise ShapeError(
                f"ExtractionNetwork expects one input per task ({len(self.task_names)}); got {len(task_inputs)}."
            )
        experts, sizes = self._experts(task_inputs, shared_input)
        offsets = [0]
        for n in sizes:
            offsets.append(offsets[-1] + n)
        m_s = sizes[-1] if self.shared_experts is not None else 0
        E = offsets[-1]
        gates: dict[str, Tensor] = {}
        # every task's weights scattered over all E experts (zeros for other tasks' experts), so
        # that all mixtures (and the shared one) are one batched product with the experts
        rows: list[Tensor] = []
        bank = 0
        task_w, shared_w = self._gate_weights(task_inputs, shared_input)
        for t, w in zip(self.task_names, task_w):
            m_k = sizes[bank] if t in self.task_experts else 0
            if w.shape[-1] != m_k + m_s:
                raise ShapeError(
                    f"The gate of task {t!r} gives {w.shape[-1]} weights, but the task mixes {m_k} own and {m_s} "
                    f"shared experts ({m_k + m_s})."
                )
            gates[t] = w
            start = offsets[bank] if m_k else 0
            bank += 1 if m_k else 0
            pieces = [
                w.new_zeros(w.shape[0], start),
                w[:, :m_k],
                w.new_zeros(w.shape[0], E - m_s - start - m_k),
            ]
            rows.append(torch.cat([*pieces, w[:, m_k:]], dim=-1))
        if shared_w is not None:
            w = shared_w
            if w.shape[-1] != E:
                raise ShapeError(
                    f"The shared gate gives {w.shape[-1]} weights, but the level has {E} experts."
                )
            gates["shared"] = w
            rows.append(w)
        mixed = torch.bmm(torch.stack(rows, dim=1), experts).unbind(1)  # R x (N, D)
        T = len(self.task_names)
        outs = mixed[:T]
        shared_out = mixed[T] if self.shared_gate is not None else None
        return LevelOutput(outs, shared_out, gates)


class PLE(MultiTaskModel):
    """Progressive Layered Extraction (Tang et al., RecSys 2020).

    ``L`` stacked :class:`ExtractionNetwork` levels, then one tower per task. At level ``j``,
    task ``k``'s experts read task ``k``'s mixture of level ``j-1`` and the shared experts read
    the shared mixture of level ``j-1`` (level 1: everything reads the input ``x``)::

        g^{k,j}(x) = w^{k,j}(g^{k,j-1}(x)) S^{k,j}(x)        (task k: own + shared experts)
        g^{s,j}(x) = w^{s,j}(g^{s,j-1}(x)) S^{s,j}(x)        (shared: all experts, levels < L)
        y^k(x)     = t^k(g^{k,L}(x))

    The number of shared experts is independent of the numbers of task experts. The last level
    has no shared gate (nothing reads its output); with ``L = 1`` this is :class:`CGC`.

    **Which parameters a task owns.** A parameter belongs to task ``k`` only if no other task's
    output depends on it. The shared gate of level ``j < L`` mixes every task's level-``j``
    experts into the shared path, which all tasks read at level ``j+1`` (through the shared
    experts). Hence, with shared experts (``m_s > 0``) and ``L >= 2``:

    * task ``k`` owns its tower, its experts and gate of the last level ``L``, and its gate of
      level ``L-1`` (that gate's mixture feeds only task ``k``'s level-``L`` experts and gate);
    * task ``k``'s experts of every level ``j < L`` are shared (the shared gate of level ``j``
      mixes them), and so are its gates of levels ``j < L-1`` (their mixture feeds task ``k``'s
      level-``j+1`` experts, which are shared);
    * shared experts and shared gates are shared.

    Without shared experts nothing crosses between tasks, and every task owns all of its
    experts and gates (PLE then equals independent per-task stacked MoEs). The rule is derived
    from the modules present (see :meth:`task_parameters`), so custom level stacks get the right
    partition too.

    Args:
        levels: the extraction levels, first to last; every level has a gate for every task.
        towers: ``{task: module}`` mapping the last level's task mixture to the output.
        input_layer: optional shared module applied to the inputs first (e.g. embeddings).
    """

    def __init__(
        self,
        levels: Sequence[ExtractionNetwork],
        towers: Mapping[str, nn.Module],
        *,
        input_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not towers:
            raise ValueError(f"{type(self).__name__} needs at least one tower.")
        if not levels:
            raise ValueError(f"{type(self).__name__} needs at least one extraction level.")
        self.task_names = tuple(towers)
        for j, level in enumerate(levels, 1):
            if not isinstance(level, ExtractionNetwork):
                raise TypeError(
                    f"PLE levels must be ExtractionNetworks; level {j} is {type(level).__name__}."
                )
            if set(level.task_names) != set(self.task_names):
                raise ValueError(
                    f"PLE level {j} has gates for tasks {list(level.task_names)}, but the towers are for "
                    f"{list(self.task_names)}."
                )
            if j > 1 and level.shared_experts is not None and levels[j - 2].shared_gate is None:
                raise ValueError(
                    f"PLE level {j} has shared experts, but level {j - 1} has no shared gate to give them an input."
                )
            if j > 1 and level.shared_gate is not None and levels[j - 2].shared_gate is None:
                raise ValueError(
                    f"PLE level {j} has a shared gate, but level {j - 1} has no shared gate to give it an input."
                )
        if levels[-1].shared_gate is not None:
            raise ValueError(
                "The last PLE level must have no shared gate: only the towers read the last level, so its "
                "output would be unused."
            )
        self.input_layer = input_layer
        self.levels = nn.ModuleList(levels)
        self.towers = nn.ModuleDict(dict(towers))
        self._owned = self._ownership()

    # ------------------------------------------------------------------ parameter ownership
    def _ownership(self) -> dict[str, list[nn.Module]]:
        """For each task, the modules whose parameters only that task's output depends on."""
        levels: list[ExtractionNetwork] = list(self.levels)  # type: ignore[arg-type]
        L = len(levels)
        # shared_used[j]: the shared mixture of level j reaches the tasks (through level j+1)
        shared_used = [False] * L
        for j in range(L - 2, -1, -1):
            nxt = levels[j + 1]
            shared_used[j] = nxt.shared_experts is not None or (
                nxt.shared_gate is not None and shared_used[j + 1]
            )
        mixes_into_shared = [lv.shared_gate is not None and shared_used[j] for j, lv in enumerate(levels)]
        owned: dict[str, list[nn.Module]] = {}
        for t in self.task_names:
            mods: list[nn.Module] = [self.towers[t]]
            private = True  # task t's mixture of level j reaches task t only
            for j in range(L - 1, -1, -1):
                level = levels[j]
                if j < L - 1:
                    nxt = levels[j + 1]
                    private = private and not (t in nxt.task_experts and mixes_into_shared[j + 1])
                if not private:
                    break
                mods.append(level.task_gates[t])
                if t in level.task_experts and not mixes_into_shared[j]:
                    mods.append(level.task_experts[t])
            owned[t] = mods
        return owned

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Task ``task``'s own parameters: those no other task's output depends on (see the class doc)."""
        self._check_task(task)
        return params_of(*self._owned[task])

    # ------------------------------------------------------------------ forward
    def _features(self, x: Inputs) -> Tensor:
        return self.input_layer(x) if self.input_layer is not None else x  # type: ignore[return-value]

    def _extract(self, h: Tensor) -> tuple[tuple[Tensor, ...], dict[str, Tensor]]:
        """Every level on the features ``h``: the last level's task mixtures and all gates."""
        task_in: tuple[Tensor, ...] = (h,) * len(self.task_names)
        shared_in: Tensor | None = h
        gates: dict[str, Tensor] = {}
        L = len(self.levels)
        for j, level in enumerate(self.levels, 1):
            out = level(task_in, shared_in)
            prefix = "" if j == L else f"level{j}/"
            gates.update({f"{prefix}{k}": v for k, v in out.gates.items()})
            task_in, shared_in = out.tasks, out.shared
        return task_in, gates

    def _forward(self, x: Inputs) -> Decoded:
        reps, _ = self._extract(self._features(x))
        return tower_outputs(self.towers, dict(zip(self.task_names, reps))), {}

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        """Gate weights: ``{task: (N, m_k + m_s)}`` for the last level (the gates before the towers),
        ``{"level{j}/{task}": ..., "level{j}/shared": (N, sum m_k + m_s)}`` for earlier levels."""
        return self._extract(self._features(x))[1]


class CGC(PLE):
    """Customized Gate Control (Tang et al., RecSys 2020): single-level PLE.

    ``y_k = t_k(sum_i g_k(x)_i S_k(x)_i)`` with ``S_k = [task k's experts; shared experts]`` and
    ``g_k = softmax(W_k x)``. Task ``k`` owns its experts, gate and tower; the shared experts
    (and the input layer) are shared.

    The shared representation (for representation-level gradient methods) is the shared
    experts' output ``(N, m_s, D)``; its ``_decode`` computes each task's own experts from the
    inputs, so that their gradient is the task's own.

    Args:
        level: the extraction level (without a shared gate).
        towers: ``{task: module}``.
        input_layer: optional shared module applied to the inputs first.
    """

    def __init__(
        self,
        level: ExtractionNetwork,
        towers: Mapping[str, nn.Module],
        *,
        input_layer: nn.Module | None = None,
    ) -> None:
        super().__init__([level], towers, input_layer=input_layer)

    @property
    def level(self) -> ExtractionNetwork:
        """The single extraction level."""
        return self.levels[0]  # type: ignore[return-value]

    @property
    def has_representation(self) -> bool:
        """True when the level has shared experts: their output ``(N, m_s, D)`` is the representation."""
        return self.level.shared_experts is not None

    def _encode(self, x: Inputs) -> tuple[Tensor, Tensor]:
        # the input layer once: its output feeds the shared experts (rep), the task experts and gates
        h = self._features(x)
        return stack_experts(self.level.shared_experts, h), h  # (N, m_s, D)

    def _decode(self, rep: Tensor, h: Tensor) -> Decoded:
        # Each task from its own experts and gate, so that a task's backward pass touches only them.
        level = self.level
        m_s = rep.shape[-2]
        out: dict[str, Tensor] = {}
        for t in self.task_names:
            w = level.task_gates[t](h)
            mixed = _mix(w[:, w.shape[-1] - m_s :], rep)
            if t in level.task_experts:
                own = stack_experts(level.task_experts[t], h)
                mixed = mixed + _mix(w[:, : own.shape[-2]], own)
            out[t] = self.towers[t](mixed)
        return out, {}


def _check_count(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{what} must be an int >= 0; got {value!r}.")
    return value


def _task_expert_counts(num_task_experts: int | Mapping[str, int], names: tuple[str, ...]) -> dict[str, int]:
    if isinstance(num_task_experts, Mapping):
        unknown = [t for t in num_task_experts if t not in names]
        if unknown:
            raise ValueError(f"num_task_experts names unknown tasks {unknown}; tasks: {list(names)}.")
        missing = [t for t in names if t not in num_task_experts]
        if missing:
            raise ValueError(
                f"num_task_experts gives no count for tasks {missing}; give one per task or an int."
            )
        return {t: _check_count(num_task_experts[t], f"num_task_experts[{t!r}]") for t in names}
    n = _check_count(num_task_experts, "num_task_experts")
    return dict.fromkeys(names, n)


def _build_ple(
    input_dim: int | None,
    tasks: Sequence[Task],
    num_levels: int,
    num_task_experts: int | Mapping[str, int],
    num_shared_experts: int,
    expert_dims: Sequence[int],
    tower_dims: Sequence[int],
    activation: str,
    dropout: float,
    input_layer: InputLayerLike | None,
    who: str,
) -> CGC | PLE:
    names = task_names(tasks)
    if isinstance(num_levels, bool) or not isinstance(num_levels, int) or num_levels < 1:
        raise ValueError(f"{who} num_levels must be an int >= 1; got {num_levels!r}.")
    m_t = _task_expert_counts(num_task_experts, names)
    m_s = _check_count(num_shared_experts, "num_shared_experts")
    if m_s == 0 and min(m_t.values()) == 0:
        lonely = [t for t in names if m_t[t] == 0]
        raise ValueError(
            f"{who}: tasks {lonely} have no experts (num_task_experts 0) and there are no shared experts "
            "(num_shared_experts 0). Give every task at least one expert."
        )
    (layer,), width = make_input_layers(input_dim, input_layer, who=who)
    total = sum(m_t.values()) + m_s
    levels = []
    for j in range(num_levels):
        task_experts = {
            t: ExpertMLPs(m_t[t], width, expert_dims, activation=activation, dropout=dropout)
            for t in names
            if m_t[t]
        }
        shared = ExpertMLPs(m_s, width, expert_dims, activation=activation, dropout=dropout) if m_s else None
        gates = {t: SoftmaxGate(width, m_t[t] + m_s) for t in names}
        shared_gate = SoftmaxGate(width, total) if m_s and j < num_levels - 1 else None
        levels.append(ExtractionNetwork(task_experts, shared, gates, shared_gate))
        width = int(expert_dims[-1])
    towers = {
        t.name: MLP(width, tower_dims, t.output_dim, activation=activation, dropout=dropout) for t in tasks
    }
    if num_levels == 1:
        return CGC(levels[0], towers, input_layer=layer)
    return PLE(levels, towers, input_layer=layer)


@MODELS.register("cgc")
def cgc(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    num_task_experts: int | dict[str, int] = 2,
    num_shared_experts: int = 2,
    expert_dims: Sequence[int] = (16,),
    tower_dims: Sequence[int] = (8,),
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> CGC:
    """CGC (Tang et al. 2020): per-task and shared MLP experts, one gate over own + shared experts per task.

    Args:
        input_dim: width of flat input features (when there is no input layer).
        tasks: the tasks (one gate and one tower each).
        num_task_experts: experts per task (an int, or ``{task: count}``); 0 is allowed when there
            are shared experts.
        num_shared_experts: shared experts, independent of the task expert counts.
        expert_dims: layer widths of every expert MLP.
        tower_dims: hidden widths of every tower.
        activation: activation of experts and towers.
        dropout: dropout after every hidden activation.
        input_layer: a shared backbone module (or factory) in front of the experts and gates.
    """
    check_model_args("cgc", expert_dims=expert_dims, tower_dims=tower_dims, dropout=dropout)  # counts: >= 0
    model = _build_ple(
        input_dim,
        tasks,
        1,
        num_task_experts,
        num_shared_experts,
        expert_dims,
        tower_dims,
        activation,
        dropout,
        input_layer,
        "cgc",
    )
    assert isinstance(model, CGC)
    return model


@MODELS.register("ple")
def ple(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    num_levels: int = 2,
    num_task_experts: int | dict[str, int] = 2,
    num_shared_experts: int = 2,
    expert_dims: Sequence[int] = (16,),
    tower_dims: Sequence[int] = (8,),
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> PLE:
    """PLE (Tang et al. 2020): stacked extraction levels of task and shared experts with a shared gate between levels.

    Args:
        input_dim: width of flat input features (when there is no input layer).
        tasks: the tasks (one gate per level and one tower each).
        num_levels: extraction levels; 1 gives :class:`CGC`.
        num_task_experts: experts per task and level (an int, or ``{task: count}``).
        num_shared_experts: shared experts per level, independent of the task expert counts.
        expert_dims: layer widths of every expert MLP (level 1 reads the input; higher levels read
            the previous level's ``expert_dims[-1]``-wide mixtures).
        tower_dims: hidden widths of every tower.
        activation: activation of experts and towers.
        dropout: dropout after every hidden activation.
        input_layer: a shared backbone module (or factory) in front of the first level.
    """
    check_model_args(
        "ple",
        num_levels=num_levels,
        expert_dims=expert_dims,
        tower_dims=tower_dims,
        dropout=dropout,
    )
    return _build_ple(
        input_dim,
        tasks,
        num_levels,
        num_task_experts,
        num_shared_experts,
        expert_dims,
        tower_dims,
        activation,
        dropout,
        input_layer,
        "ple",
    )
