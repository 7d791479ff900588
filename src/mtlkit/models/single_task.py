"""The single-task baseline: one independent network per task, nothing shared."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs, num_rows
from mtlkit.models._base import Decoded, MultiTaskModel, TaskRows
from mtlkit.models._blocks import MLP
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models._kernels import row_tower_outputs, tower_outputs
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, task_names

__all__ = ["SingleTask", "single_task"]


class SingleTask(MultiTaskModel):
    """Independent per-task networks (the baseline every MTL comparison needs).

    Args:
        networks: ``{task: module}``; each maps the inputs to that task's output.

    The networks share nothing (``independent_tasks``), so the trainer's early stopping judges each
    on its own task's validation metric and restores each at its own best epoch.
    """

    independent_tasks: bool = True

    def __init__(self, networks: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not networks:
            raise ValueError("SingleTask needs at least one task network.")
        self.task_names = tuple(networks)
        self.networks = nn.ModuleDict(dict(networks))

    def _forward(self, x: Inputs) -> Decoded:
        # networks that read x directly (MLPs of one shape) are batched where that pays
        return tower_outputs(self.networks, dict.fromkeys(self.task_names, x)), {}  # type: ignore[arg-type]

    def _forward_rows(self, x: Inputs, rows: TaskRows) -> Decoded:
        # each network on its own task's rows (e.g. MNIST digits and Fashion articles in one batch)
        return row_tower_outputs(self.networks, dict.fromkeys(self.task_names, x), rows, num_rows(x)), {}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        return list(self.networks[task].parameters())

    def task_state_keys(self, task: str) -> list[str]:
        """The state-dict keys (parameters and buffers) of ``task``'s network."""
        self._check_task(task)
        prefix = f"networks.{task}."
        return [k for k in self.state_dict() if k.startswith(prefix)]


@MODELS.register("single_task", aliases=("single",))
def single_task(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    hidden_dims: Sequence[int] = (64, 32),
    activation: str = "relu",
    dropout: float = 0.0,
    input_layer: InputLayerLike | None = None,
) -> SingleTask:
    """Single-task baseline: one MLP per task (each with its own input layer), no sharing."""
    check_model_args("single_task", hidden_dims=hidden_dims, dropout=dropout)
    task_names(tasks)
    layers, width = make_input_layers(input_dim, input_layer, copies=len(tasks), who="single_task")
    networks: dict[str, nn.Module] = {}
    for t, layer in zip(tasks, layers):
        mlp = MLP(width, hidden_dims, t.output_dim, activation=activation, dropout=dropout)
        networks[t.name] = mlp if layer is None else nn.Sequential(layer, mlp)
    return SingleTask(networks)
