"""Hard parameter sharing: a shared bottom and one tower per task."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.models._base import Decoded, MultiTaskModel, TaskRows
from mtlkit.models._blocks import MLP
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models._kernels import row_tower_outputs, tower_outputs
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["SharedBottom", "shared_bottom"]


class SharedBottom(MultiTaskModel):
    """``y_k = h_k(f(x))``: shared bottom ``f``, task towers ``h_k`` (Caruana 1997).

    Args:
        bottom: shared module; its output feeds every tower.
        towers: ``{task: module}``.
        input_layer: optional shared backbone applied before the bottom (e.g. embeddings).
    """

    def __init__(
        self, bottom: nn.Module, towers: Mapping[str, nn.Module], *, input_layer: nn.Module | None = None
    ) -> None:
        super().__init__()
        if not towers:
            raise ValueError("SharedBottom needs at least one tower.")
        self.task_names = tuple(towers)
        self.input_layer = input_layer
        self.bottom = bottom
        self.towers = nn.ModuleDict(dict(towers))

    def _encode(self, x: Inputs) -> tuple[Tensor, None]:
        return self.bottom(self.input_layer(x) if self.input_layer is not None else x), None

    def _decode(self, rep: Tensor, ctx: None) -> Decoded:
        # tower by tower: each task's backward pass (gradient-level methods) touches only its tower
        return {t: self.towers[t](rep) for t in self.task_names}, {}

    def _forward(self, x: Inputs) -> Decoded:
        rep = self._encode(x)[0]
        return tower_outputs(self.towers, dict.fromkeys(self.task_names, rep)), {}

    def _forward_rows(self, x: Inputs, rows: TaskRows) -> Decoded:
        # the shared layers on every row, each tower on its own task's rows
        rep = self._encode(x)[0]
        return row_tower_outputs(self.towers, dict.fromkeys(self.task_names, rep), rows, rep.shape[0]), {}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        return list(self.towers[task].parameters())


@MODELS.register("shared_bottom", aliases=("hard_sharing",))
def shared_bottom(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    bottom_dims: Sequence[int] = (64,),
    tower_dims: Sequence[int] = (32,),
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> SharedBottom:
    """Shared-bottom (hard parameter sharing): one shared MLP, one MLP tower per task.

    ``bottom_dims=[]`` shares only the input layer: the towers read the backbone's output directly
    (e.g. one CNN with a head per task, as in seed 000's MNIST + Fashion-MNIST network).
    """
    check_model_args("shared_bottom", bottom_dims=bottom_dims, tower_dims=tower_dims, dropout=dropout)
    task_names(tasks)
    (layer,), width = make_input_layers(input_dim, input_layer, who="shared_bottom")
    bottom: nn.Module = (
        MLP(width, bottom_dims, activation=activation, dropout=dropout) if len(bottom_dims) else nn.Identity()
    )
    bottom_width = bottom.out_features if isinstance(bottom, MLP) else width
    towers = {
        t.name: MLP(bottom_width, tower_dims, t.output_dim, activation=activation, dropout=dropout)
        for t in tasks
    }
    return SharedBottom(bottom, towers, input_layer=layer)
