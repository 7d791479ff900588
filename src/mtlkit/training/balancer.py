"""How a step turns task losses into gradients: the :class:`Balancer` (loss weighting, optional
gradient aggregator, gradient target) and what it reuses from step to step."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from mtlkit.aggregation._base import Aggregator
from mtlkit.autograd import BackwardResult, GradientTarget, GradientWorkspace, backward
from mtlkit.data.batch import Batch
from mtlkit.distributed import GradientSync
from mtlkit.errors import IncompatibleComponentsError
from mtlkit.losses import TaskLosses, task_losses
from mtlkit.state import TrainState
from mtlkit.tasks import Task
from mtlkit.weighting._base import LossWeighting

__all__ = ["Balancer", "unwrap"]


def unwrap(model: nn.Module) -> nn.Module:
    """The model without a DistributedDataParallel wrapper."""
    return getattr(model, "module", model)


@dataclass(eq=False)
class Balancer:
    """How a step turns task losses into gradients: a loss weighting, an optional gradient
    aggregator and where gradient-level methods take the per-task gradients.

    It keeps what it reuses from step to step: the Jacobian's memory and the model's shared /
    per-task parameter lists (resolved on first use; ``requires_grad`` is still read per step).
    """

    weighting: LossWeighting
    aggregator: Aggregator | None = None
    gradient_target: GradientTarget = "parameters"
    workspace: GradientWorkspace = field(default_factory=GradientWorkspace)
    _params: tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]] | None = field(default=None, repr=False)

    @property
    def uses_gradients(self) -> bool:
        """True when the balancing needs per-task gradients (an aggregator or a gradient-based weighting)."""
        return self.aggregator is not None or self.weighting.requires_gradients

    def check(self, model: nn.Module) -> None:
        """Refuse combinations that cannot work with ``model``, saying why and what to use instead."""
        if self.gradient_target not in ("parameters", "representation"):
            raise ValueError(
                f"gradient_target must be 'parameters' or 'representation'; got {self.gradient_target!r}."
            )
        method, core = type(self.aggregator or self.weighting).__name__, unwrap(model)
        name = type(core).__name__
        if self.gradient_target == "representation" and not self.uses_gradients:
            raise IncompatibleComponentsError(
                f"gradient_target='representation' only changes gradient-level methods, and {method} works on "
                "the losses: the result would be identical to gradient_target='parameters'. Use an aggregator "
                "(e.g. 'pcgrad') or drop gradient_target."
            )
        if not self.uses_gradients:
            return
        if not hasattr(core, "shared_parameters") or not hasattr(core, "task_parameters"):
            raise IncompatibleComponentsError(
                f"{method} combines per-task gradients of shared parameters, but {name} does not say which "
                "parameters are shared (no shared_parameters()/task_parameters()). Subclass "
                "mtlkit.models.MultiTaskModel, or use a loss weighting."
            )
        if self.gradient_target == "representation":
            if getattr(core, "has_representation", False) is not True:
                raise IncompatibleComponentsError(
                    f"{name} has no single shared representation (has_representation is False), so {method} "
                    "cannot take gradients with respect to it. Use gradient_target='parameters'."
                )
        elif not any(p.requires_grad for p in core.shared_parameters()):
            raise IncompatibleComponentsError(
                f"{method} combines the gradients of shared parameters, but {name} shares none (every "
                "parameter belongs to one task). Use a loss weighting such as 'uncertainty', or a model with "
                "sharing."
            )

    def backward(
        self,
        tl: TaskLosses,
        model: nn.Module,
        representation: Tensor | None,
        aux: Mapping[str, Tensor],
        state: TrainState,
        sync: GradientSync | None,
    ) -> BackwardResult:
        """:func:`mtlkit.backward` with this balancing."""
        shared = own = None
        if self.uses_gradients:
            if self._params is None:
                core = unwrap(model)
                names = self.weighting.task_names
                self._params = (
                    list(core.shared_parameters()),
                    {t: list(core.task_parameters(t)) for t in names},
                )
            shared, own = self._params
        return backward(
            tl,
            weighting=self.weighting,
            aggregator=self.aggregator,
            model=model if self.uses_gradients else None,
            shared_params=shared,
            task_params=own,
            representation=representation,
            aux=aux or None,
            state=state,
            workspace=self.workspace if self.uses_gradients else None,
            sync=sync,
        )

    def gradients_are_global(self, model: nn.Module, *, has_aux: bool) -> bool:
        """True when the model's gradients are the same on every rank after :meth:`backward`: DDP
        averaged them (loss level), or the per-task gradients were reduced before aggregation
        (gradient level on the parameters, with no auxiliary loss adding a rank's own gradient)."""
        if self.uses_gradients:
            return self.gradient_target == "parameters" and not has_aux
        return unwrap(model) is not model

    def after_step(
        self,
        model: nn.Module,
        batch: Batch,
        tasks: Sequence[Task],
        present: Tensor,
        state: TrainState,
        sync: GradientSync | None,
    ) -> None:
        """The weighting's post-step hook (FAMO: the losses on the same batch after the update)."""
        new_losses = None
        if self.weighting.requires_post_step_losses:
            with torch.no_grad():
                preds = unwrap(model)(batch.inputs)
                after = task_losses(tasks, preds, batch.targets, batch.masks, batch.weights)
                new_losses = (
                    after.losses if sync is None else sync.global_losses(after.losses, after.counts).losses
                )
        self.weighting.after_step(new_losses, present=present, state=state)
