"""One training step, the same for every schedule: forward, masked task losses, backward, optimizer step.

:func:`train_step` is a function of its inputs only: the model, the batch, the tasks, the
:class:`~mtlkit.training.balancer.Balancer` (how losses become gradients), the
:class:`~mtlkit.training.optimizers.OptimizerSet` and the :class:`~mtlkit.state.TrainState`. The :class:`~mtlkit.Trainer` calls it for every step
of every schedule; a hand-written loop can too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from mtlkit.autograd import BackwardResult
from mtlkit.data.batch import Batch, Inputs, as_batch, check_weights
from mtlkit.distributed import GradientSync
from mtlkit.errors import ShapeError, UnknownComponentError
from mtlkit.losses import TaskLosses, check_outputs, task_losses
from mtlkit.models._base import ForwardParts, MultiTaskModel, forward_parts
from mtlkit.state import TrainState
from mtlkit.tasks import Task
from mtlkit.training.balancer import Balancer, unwrap
from mtlkit.training.optimizers import OptimizerSet
from mtlkit.training.scope import detach_untrained
from mtlkit.training.task_data import restrict

__all__ = ["StepStats", "forward", "label_rows", "prepare_batch", "train_step", "trained_subset"]


class StepStats(NamedTuple):
    """What one step did: the backward result, the task losses, the auxiliary losses."""

    result: BackwardResult
    losses: TaskLosses
    aux: dict[str, Tensor]


def label_rows(batch: Batch, tasks: Sequence[Task]) -> dict[str, Tensor]:
    """``{task: indices of its labelled rows}`` for the tasks whose label mask leaves rows out
    (e.g. MNIST digits and Fashion articles pooled in one batch): a model that
    :attr:`~mtlkit.models.MultiTaskModel.accepts_rows` then runs those tasks' own layers on their
    rows only. Tasks without a mask are absent (every row).

    Only for masks on the CPU: on an accelerator, finding the rows would synchronise with the host
    every step (the trainer's steps otherwise never do), for arithmetic that is cheap there; the
    result is then ``{}`` (every task on every row)."""
    if not batch.masks or any(m.device.type != "cpu" for m in batch.masks.values()):
        return {}
    out: dict[str, Tensor] = {}
    for task in tasks:
        mask = batch.masks.get(task.name)
        target = batch.targets.get(task.target_key)
        if mask is None or target is None or not task.train:
            continue
        if target.ndim == 0:
            continue
        try:
            valid = task.valid_mask(target.reshape(target.shape[0], -1).squeeze(1), mask)
        except (ShapeError, RuntimeError):
            continue  # malformed: the loss names the problem
        if valid.ndim > 1:
            valid = valid.reshape(valid.shape[0], -1).any(dim=1)
        idx = valid.nonzero().reshape(-1)
        if idx.numel() < valid.shape[0]:
            out[task.name] = idx
    return out


def forward(
    model: nn.Module, inputs: Inputs, balancer: Balancer, *, rows: Mapping[str, Tensor] | None = None
) -> ForwardParts:
    """The model's outputs, auxiliary losses and (``gradient_target="representation"``) shared
    representation: the one place where a step calls the model.

    Gradient-level methods bypass a DDP wrapper (its hooks expect one plain backward; the
    reduction of :func:`mtlkit.backward` replaces them) and take the representation path, whose
    tasks' graphs are apart, so the per-task backward passes are cheaper (same outputs).
    """
    gradient_level = balancer.uses_gradients
    parts = forward_parts(
        unwrap(model) if gradient_level else model,
        inputs,
        representation=gradient_level,
        rows=None if gradient_level else rows,
    )
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
        if batch.weights:
            check_weights({k: w for k, w in batch.weights.items() if w.device.type == "cpu"}, len(batch), where="a batch")
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
    core = unwrap(model)
    rows = label_rows(batch, tasks) if isinstance(core, MultiTaskModel) and core.accepts_rows else None
    preds, aux, representation = forward(model, batch.inputs, balancer, rows=rows)
    check_outputs(tasks, preds, unwrap(model))
    tl = task_losses(tasks, preds, batch.targets, batch.masks, batch.weights)
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
