"""Hierarchical sharing: task heads attached at different depths of one shared stack.

Søgaard & Goldberg ("Deep multi-task learning with low level tasks supervised at lower layers",
ACL 2016) and Hashimoto et al. ("A Joint Many-Task Model", EMNLP 2017) supervise low-level tasks
at lower layers and high-level tasks at higher ones: ``y_k = h_k(f_{d_k}(... f_1(x)))``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.errors import did_you_mean
from mtlkit.models._base import Decoded, MultiTaskModel, params_of
from mtlkit.models._blocks import MLP, _dims
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models._kernels import tower_outputs
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["Hierarchical", "hierarchical"]


class Hierarchical(MultiTaskModel):
    """A stack of layers with each task's head attached at its own depth.

    Task ``k`` reads the output of the first ``d_k`` layers: ``y_k = h_k(f_{d_k} o ... o f_1(x))``.
    A layer is used by every task attached at or above it: shared when two or more tasks use it,
    owned by the task when only one does (e.g. the top layers above every other task's head).

    Args:
        layers: the stack ``f_1 .. f_L``, applied in order.
        heads: ``{task: module}`` mapping the output of layer ``d_k`` to the task's output.
        depths: ``{task: d_k}`` with ``1 <= d_k <= L`` for every task; the deepest must be ``L``
            (a layer above every head would never be used).
        input_layer: optional module applied to the inputs first (used by every task).
    """

    def __init__(
        self,
        layers: Sequence[nn.Module],
        heads: Mapping[str, nn.Module],
        depths: Mapping[str, int],
        *,
        input_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("Hierarchical needs at least one task head.")
        if not layers:
            raise ValueError("Hierarchical needs at least one layer in its stack.")
        self.task_names = tuple(heads)
        L = len(layers)
        if set(depths) != set(self.task_names):
            raise ValueError(
                f"Hierarchical needs a depth for every task {list(self.task_names)}; got {dict(depths)}."
            )
        bad = {
            t: d
            for t, d in depths.items()
            if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= L
        }
        if bad:
            raise ValueError(
                f"Hierarchical task depths must be ints in 1..{L} (the stack has {L} layers); got {bad}."
            )
        if max(depths.values()) != L:
            raise ValueError(
                f"Hierarchical: the deepest task head is at depth {max(depths.values())}, so the top "
                f"{L - max(depths.values())} of the {L} layers would never be used; remove them or attach a task there."
            )
        self.layers = nn.ModuleList(list(layers))
        self.heads = nn.ModuleDict(dict(heads))
        self.depths = {t: int(depths[t]) for t in self.task_names}
        self.input_layer = input_layer

    def users(self, depth: int) -> tuple[str, ...]:
        """Tasks that use layer ``depth`` (1-based; 0 = the input layer): those attached at or above it."""
        return tuple(t for t in self.task_names if self.depths[t] >= depth)

    def _forward(self, x: Inputs) -> Decoded:
        h = self.input_layer(x) if self.input_layer is not None else x
        by_depth: dict[int, list[str]] = {}
        for t in self.task_names:
            by_depth.setdefault(self.depths[t], []).append(t)
        out: dict[str, Tensor] = {}
        for d, layer in enumerate(self.layers, start=1):
            h = layer(h)
            if d in by_depth:  # the heads attached here read the same h: batched where that pays
                out.update(tower_outputs(self.heads, dict.fromkeys(by_depth[d], h)))
        return {t: out[t] for t in self.task_names}, {}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        owned: list[nn.Module | None] = [self.heads[task]]
        if self.users(0) == (task,):
            owned.append(self.input_layer)
        owned += [layer for d, layer in enumerate(self.layers, start=1) if self.users(d) == (task,)]
        return params_of(*owned)

    def extra_repr(self) -> str:
        return f"depths={self.depths}"


def resolve_depths(
    names: Sequence[str], task_depths: Mapping[str, int] | None, num_layers: int, who: str
) -> dict[str, int]:
    """Every task's depth: the given ones, the top layer for the others; unknown names raise."""
    given = dict(task_depths or {})
    unknown = [t for t in given if t not in names]
    if unknown:
        raise ValueError(
            f"{who} task_depths names unknown task {unknown[0]!r}.{did_you_mean(unknown[0], names)} "
            f"Tasks: {', '.join(names)}."
        )
    depths = {t: given.get(t, num_layers) for t in names}
    bad = {
        t: d
        for t, d in depths.items()
        if isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= num_layers
    }
    if bad:
        raise ValueError(
            f"{who} task depths must be ints in 1..{num_layers} (the stack has {num_layers} layers); got {bad}."
        )
    return depths


@MODELS.register("hierarchical")
def hierarchical(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    hidden_dims: Sequence[int] = (64, 32),
    task_depths: dict[str, int] | None = None,
    tower_dims: Sequence[int] = (16,),
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> Hierarchical:
    """Hierarchical sharing: one MLP stack, each task's tower attached at its depth (task_depths)."""
    check_model_args("hierarchical", hidden_dims=hidden_dims, tower_dims=tower_dims, dropout=dropout)
    names = task_names(tasks)
    dims = _dims(hidden_dims, "hierarchical hidden_dims")
    if not dims:
        raise ValueError("hierarchical needs at least one layer; got hidden_dims=[].")
    (layer,), width = make_input_layers(input_dim, input_layer, who="hierarchical")
    depths = resolve_depths(names, task_depths, len(dims), "hierarchical")
    widths = [width, *dims]
    layers = [MLP(a, (b,), activation=activation, dropout=dropout) for a, b in zip(widths, dims)]
    heads = {
        t.name: MLP(widths[depths[t.name]], tower_dims, t.output_dim, activation=activation, dropout=dropout)
        for t in tasks
    }
    return Hierarchical(layers, heads, depths, input_layer=layer)
