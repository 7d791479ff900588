"""One training step, the same for every schedule: forward, masked task losses, backward, optimizer step.

:func:`train_step` is a function of its inputs only: the model, the batch, the tasks, the
:class:`Balancer` (how losses become gradients), the :class:`~mtlkit.training.optimizers.OptimizerSet`
and the :class:`~mtlkit.state.TrainState`. The :class:`~mtlkit.Trainer` calls it for every step
of every schedule; a hand-written loop can too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mtlkit.aggregation._base import Aggregator
from mtlkit.autograd import BackwardResult, GradientTarget, GradientWorkspace, backward
from mtlkit.data.batch import Batch, Inputs, as_batch
from mtlkit.distributed import GradientSync
from mtlkit.errors import IncompatibleComponentsError, UnknownComponentError
from mtlkit.losses import TaskLosses, task_losses
from mtlkit.models._base import ForwardParts, forward_parts
from mtlkit.state import TrainState
from mtlkit.tasks import Task
from mtlkit.training.optimizers import OptimizerSet
from mtlkit.training.scope import detach_untrained
from mtlkit.training.task_data import restrict
from mtlkit.weighting._base import LossWeighting

__all__ = ["Balancer", "StepStats", "forward", "prepare_batch", "train_step", "trained_subset", "unwrap"]


class StepStats(NamedTuple):
    """What one step did: the backward result, the task losses, the auxiliary losses."""

    result: BackwardResult
    losses: TaskLosses
    aux: dict[str, Tensor]


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
        sync: Any,
    ) -> None:
        """The weighting's post-step hook (FAMO: the losses on the same batch after the update)."""
        new_losses = None
        if self.weighting.requires_post_step_losses:
            with torch.no_grad():
                preds = unwrap(model)(batch.inputs)
                after = task_losses(tasks, preds, batch.targets, batch.masks)
                new_losses = (
                    after.losses if sync is None else sync.global_losses(after.losses, after.counts).losses
                )
        self.weighting.after_step(new_losses, present=present, state=state)


def forward(model: nn.Module, inputs: Inputs, balancer: Balancer) -> ForwardParts:
    """The model's outputs, auxiliary losses and (``gradient_target="representation"``) shared
    representation: the one place where a step calls the model.

    Gradient-level methods bypass a DDP wrapper (its hooks expect one plain backward; the
    reduction of :func:`mtlkit.backward` replaces them) and take the representation path, whose
    tasks' graphs are apart, so the per-task backward passes are cheaper (same outputs).
    """
    gradient_level = balancer.uses_gradients
    parts = forward_parts(unwrap(model) if gradient_level else model, inputs, representation=gradient_level)
    return parts if balancer.gradient_target == "representation" else parts._replace(representation=None)


def trained_subset(
    task_names: Sequence[str], tasks: Sequence[str] | None, *, one_task: bool = False
) -> tuple[str, ...] | None:
    """The task subset a step trains (``None``: every task), checked; ``one_task``: per-task
    optimizers, whose steps must name exactly one task."""
    trained = tuple(task_names) if tasks is None else tuple(dict.fromkeys(tasks))
    if not trained:
        raise ValueError("train_step(tasks=...) must name at least one task.")
    unknown = [t for t in trained if t not in task_names]
    if unknown:
        raise UnknownComponentError("task", unknown[0], tuple(task_names))
    if one_task:
        if len(trained) != 1:
            raise ValueError(
                "With per-task optimizers every step trains one task (whose optimizer steps): pass "
                f"tasks=('<name>',) to train_step (fit does this through the schedule); got {list(trained)}."
            )
        return trained
    return None if set(trained) == set(task_names) else trained


def prepare_batch(raw: Any, tasks: Sequence[Task], device: torch.device, *, validate: bool) -> Batch:
    """``raw`` (a :class:`Batch` or a tuple) on ``device``; ``validate``: check the targets of a
    batch from a user's iterable first (a dataset's are checked once, when it is built)."""
    batch = as_batch(raw)
    if validate:
        for task in tasks:
            t = batch.targets.get(task.target_key)
            if t is not None and t.device.type == "cpu":
                mask = batch.masks.get(task.name) if batch.masks else None
                task.check_targets(t, mask, where="a batch")
    return batch.to(device, non_blocking=True)


def train_step(
    model: nn.Module,
    batch: Batch,
    tasks: Sequence[Task],
    balancer: Balancer,
    optimizers: OptimizerSet,
    state: TrainState,
    *,
    trained: Sequence[str] | None = None,
) -> StepStats:
    """One optimisation step on ``batch`` (already on the model's device).

    Forward, masked task losses, :func:`mtlkit.backward` (under torch.distributed with the exact
    reduction across ranks), optimizer step, the weighting's post-step hook. ``trained``: train
    only these tasks (see :func:`trained_subset`): the others' labels are ignored, parameters that
    only they reach get no gradient, and their rows of the weighting's parameters keep their values.
    """
    if trained is not None:
        batch = restrict(batch, [t for t in tasks if t.name in trained])
    preds, aux, representation = forward(model, batch.inputs, balancer)
    tl = task_losses(tasks, preds, batch.targets, batch.masks)
    if trained is not None:
        tl = detach_untrained(tl, [t.name in trained for t in tasks])
    optimizers.zero_grad()
    sync = GradientSync.active()
    result = balancer.backward(tl, model, representation, aux, state, sync)
    if sync is not None and not balancer.gradients_are_global(model, has_aux=bool(aux)):
        sync.average_gradients(unwrap(model).parameters())  # the weighting's: same global losses everywhere
    optimizers.step(trained)
    present = tl.present if result.counts is None else result.counts > 0
    balancer.after_step(model, batch, tasks, present, state, sync)
    return StepStats(result, tl, aux)
