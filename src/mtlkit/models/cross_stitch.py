"""Cross-stitch networks (Misra, Shrivastava, Gupta & Hebert, CVPR 2016).

One column (network) per task; after every column layer a cross-stitch unit mixes the columns'
activations: ``h~_k = sum_j a_kj h_j`` (a ``T x T`` matrix per layer, optionally one per
channel). Each task's head reads its own row of the last mix.

Ownership: after the first stitch every column feeds every task, so the column layers and all
but the last stitch unit are shared. Row ``k`` of the last unit only forms task ``k``'s head
input, so it belongs to task ``k`` with the head. The shared representation is the
columns' last activations before that final mix, ``(N, T, *features)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.errors import ShapeError
from mtlkit.models._base import Decoded, MultiTaskModel, params_of
from mtlkit.models._blocks import MLP, ExpertMLPs
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models._kernels import stacked_tower_outputs
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["CrossStitch", "CrossStitchUnit", "cross_stitch"]


def _batch_size(x: Inputs) -> int:
    if isinstance(x, Tensor):
        return x.shape[0]
    return next(iter(x.values())).shape[0]


class CrossStitchUnit(nn.Module):
    """Mixes ``T`` task columns: ``y_k = sum_j a_kj x_j`` (per channel when ``channels`` is given).

    The matrix is stored one row per task (``rows[task]``: ``(T,)``, or ``(T, C)`` per channel) so
    that a task can own its row. Initialised as the paper's convex combination: ``a_kk =
    alpha_same`` and ``a_kj = (1 - alpha_same) / (T - 1)`` off the diagonal (rows sum to one).

    Args:
        task_names: the columns, in order.
        channels: ``C`` for one matrix per channel (the first feature dimension: units of an MLP
            layer, channels of a convolution); ``None`` for one matrix for the whole layer.
        alpha_same: initial weight of a task's own column, in [0, 1] (1 = independent columns).
    """

    def __init__(
        self, task_names: Sequence[str], channels: int | None = None, *, alpha_same: float = 0.9
    ) -> None:
        super().__init__()
        names = tuple(task_names)
        if not names:
            raise ValueError("CrossStitchUnit needs at least one task.")
        if not 0.0 <= alpha_same <= 1.0:
            raise ValueError(f"CrossStitchUnit alpha_same must be in [0, 1]; got {alpha_same!r}.")
        if channels is not None and (not isinstance(channels, int) or channels < 1):
            raise ValueError(f"CrossStitchUnit channels must be an int >= 1 or None; got {channels!r}.")
        self.task_names, self.channels, self.alpha_same = names, channels, float(alpha_same)
        T = len(names)
        same = self.alpha_same if T > 1 else 1.0
        diff = (1.0 - self.alpha_same) / (T - 1) if T > 1 else 0.0
        shape = (T,) if channels is None else (T, channels)
        rows = {}
        for k, t in enumerate(names):
            row = torch.full(shape, diff)
            row[k] = same
            rows[t] = nn.Parameter(row)
        self.rows = nn.ParameterDict(rows)

    def matrix(self) -> Tensor:
        """``(T, T)``, or ``(T, T, C)`` per channel; row ``k`` mixes into column ``k``."""
        return torch.stack([self.rows[t] for t in self.task_names])

    def _check(self, h: Tensor) -> None:
        T = len(self.task_names)
        if h.ndim < 2 or h.shape[0] != T:
            raise ShapeError(
                f"CrossStitchUnit expects {T} stacked columns in dim 0; got shape {tuple(h.shape)}."
            )
        if self.channels is not None and (h.ndim < 3 or h.shape[2] != self.channels):
            raise ShapeError(
                f"CrossStitchUnit with {self.channels} channels expects (T, N, {self.channels}, ...) activations; "
                f"got {tuple(h.shape)}."
            )

    def forward(self, h: Tensor) -> Tensor:
        """``(T, N, *features) -> (T, N, *features)``, column ``k`` replaced by its mix."""
        self._check(h)
        a = self.matrix().to(h.dtype)
        if self.channels is None:
            return (a @ h.reshape(h.shape[0], -1)).reshape(h.shape)
        # (T, T, C) x (T, N, C, ...): sum over the source columns j, channel by channel
        return torch.einsum("kjc,jnc...->knc...", a, h)

    def mix_row(self, task: str, h: Tensor) -> Tensor:
        """Task ``task``'s mix only: ``(T, N, *features) -> (N, *features)``."""
        self._check(h)
        row = self.rows[task].to(h.dtype)
        if self.channels is None:
            return torch.tensordot(row, h, dims=1)
        return torch.einsum("jc,jnc...->nc...", row, h)

    def extra_repr(self) -> str:
        return f"tasks={len(self.task_names)}, channels={self.channels}, alpha_same={self.alpha_same}"


class CrossStitch(MultiTaskModel):
    """Cross-stitch network: task columns mixed after every layer by cross-stitch units.

    Args:
        columns: an :class:`ExpertMLPs` bank with one expert per task (the columns evaluated
            layer by layer with batched products), or ``{task: [layer_1, ..., layer_L]}`` with
            the same number of layers per task; layer ``l`` of every column must produce
            activations of one shape (they are mixed).
        heads: ``{task: module}`` mapping the task's mixed last activations to its output.
        stitches: one :class:`CrossStitchUnit` per column layer (default: one ``T x T`` matrix
            per layer, ``alpha_same=0.9``).
        input_layer: optional module applied to the inputs first, shared by all columns.
    """

    def __init__(
        self,
        columns: ExpertMLPs | Mapping[str, Sequence[nn.Module]],
        heads: Mapping[str, nn.Module],
        *,
        stitches: Sequence[CrossStitchUnit] | None = None,
        input_layer: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("CrossStitch needs at least one task head.")
        self.task_names = tuple(heads)
        T = len(self.task_names)
        if isinstance(columns, ExpertMLPs):
            if columns.num_experts != T:
                raise ValueError(
                    f"CrossStitch needs one column per task ({T}); the ExpertMLPs bank has {columns.num_experts}."
                )
            self.columns: nn.Module = columns
            num_layers = len(columns.hidden_dims)
        else:
            if set(columns) != set(self.task_names):
                raise ValueError(
                    f"CrossStitch columns must be keyed by the tasks {list(self.task_names)}; got {list(columns)}."
                )
            depths = {t: len(columns[t]) for t in self.task_names}
            if len(set(depths.values())) != 1 or not next(iter(depths.values())):
                raise ValueError(
                    f"CrossStitch columns need the same number (>= 1) of layers per task; got {depths}."
                )
            self.columns = nn.ModuleDict({t: nn.ModuleList(list(columns[t])) for t in self.task_names})
            num_layers = depths[self.task_names[0]]
        self.num_layers = num_layers
        if stitches is None:
            stitches = [CrossStitchUnit(self.task_names) for _ in range(num_layers)]
        if len(stitches) != num_layers:
            raise ValueError(
                f"CrossStitch needs one cross-stitch unit per column layer ({num_layers}); got {len(stitches)}."
            )
        for s in stitches:
            if s.task_names != self.task_names:
                raise ValueError(
                    f"CrossStitch units must mix the tasks {list(self.task_names)} in that order; got {list(s.task_names)}."
                )
        self.stitches = nn.ModuleList(list(stitches))
        self.heads = nn.ModuleDict(dict(heads))
        self.input_layer = input_layer

    def _layer(self, index: int, h: Tensor) -> Tensor:
        """Column layer ``index`` of every column: ``(N, ...)`` shared input or ``(T, N, ...)`` -> ``(T, N, ...)``."""
        if isinstance(self.columns, ExpertMLPs):
            return self.columns.forward_layer(index, h)
        cols = self.columns
        if index == 0:
            return torch.stack([cols[t][0](h) for t in self.task_names])
        return torch.stack([cols[t][index](h[k]) for k, t in enumerate(self.task_names)])

    def _columns(self, x: Inputs) -> Tensor:
        """The columns' last activations before the final mix, column-major ``(T, N, *features)``."""
        h = self.input_layer(x) if self.input_layer is not None else x
        h = self._layer(0, h)  # type: ignore[arg-type]
        for index in range(1, self.num_layers):
            h = self._layer(index, self.stitches[index - 1](h))
        return h

    def _encode(self, x: Inputs) -> tuple[Tensor, None]:
        """The columns' last activations before the final mix, ``(N, T, *features)``."""
        return self._columns(x).transpose(0, 1), None

    def _decode(self, rep: Tensor, ctx: None) -> Decoded:
        # each task from its own row of the last unit, so that its backward pass touches only that row
        h = rep.transpose(0, 1)
        last = self.stitches[-1]
        return {t: self.heads[t](last.mix_row(t, h)) for t in self.task_names}, {}

    def _forward(self, x: Inputs) -> Decoded:
        mixed = self.stitches[-1](self._columns(x))  # every task's mix in one product: (T, N, *features)
        return stacked_tower_outputs(self.heads, self.task_names, mixed), {}

    def stitch_matrices(self) -> list[Tensor]:
        """Every unit's mixing matrix, ``(T, T)`` or ``(T, T, C)``, in layer order."""
        return [s.matrix() for s in self.stitches]

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        """The mixing matrices (input-independent) broadcast over the batch: ``{"stitch<l>": (N, T, T[, C])}``."""
        n = _batch_size(x)
        return {f"stitch{i}": a.detach().expand(n, *a.shape) for i, a in enumerate(self.stitch_matrices())}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        return [*params_of(self.heads[task]), self.stitches[-1].rows[task]]


@MODELS.register("cross_stitch")
def cross_stitch(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    hidden_dims: Sequence[int] = (64, 32),
    tower_dims: Sequence[int] = (),
    alpha_same: float = 0.9,
    per_unit: bool = False,
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> CrossStitch:
    """Cross-stitch network (Misra et al. 2016): one MLP column per task, mixed after every layer."""
    check_model_args("cross_stitch", hidden_dims=hidden_dims, tower_dims=tower_dims, dropout=dropout)
    names = task_names(tasks)
    (layer,), width = make_input_layers(input_dim, input_layer, who="cross_stitch")
    columns = ExpertMLPs(len(names), width, hidden_dims, activation=activation, dropout=dropout)
    stitches = [
        CrossStitchUnit(names, d if per_unit else None, alpha_same=alpha_same) for d in columns.hidden_dims
    ]
    heads = {
        t.name: MLP(columns.out_features, tower_dims, t.output_dim, activation=activation, dropout=dropout)
        for t in tasks
    }
    return CrossStitch(columns, heads, stitches=stitches, input_layer=layer)
