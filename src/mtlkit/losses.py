"""Per-task losses of a batch, as one vector ordered like the tasks."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from mtlkit.errors import DataError, ShapeError, did_you_mean
from mtlkit.tasks import Task

__all__ = [
    "TaskLosses",
    "UnlabelledTaskWarning",
    "check_epoch_labels",
    "check_keys",
    "check_outputs",
    "task_losses",
]


class TaskLosses(NamedTuple):
    """``losses [T]`` (differentiable), ``counts [T]`` (labelled elements per task) and ``items``,
    the same losses as separate scalars.

    Pass the whole ``TaskLosses`` to :func:`mtlkit.backward`: gradient-level methods then take
    each task's gradient from its own scalar, so a task's backward pass never walks through the
    other tasks' graphs (differentiating ``losses[k]`` of the stacked vector would).
    """

    losses: Tensor
    counts: Tensor
    items: tuple[Tensor, ...] = ()

    @property
    def present(self) -> Tensor:
        """``[T]`` bool: the task had at least one label in the batch."""
        return self.counts > 0


def task_losses(
    tasks: Sequence[Task],
    outputs: Mapping[str, Tensor],
    targets: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None = None,
    weights: Mapping[str, Tensor] | None = None,
) -> TaskLosses:
    """Masked mean loss of every task on one batch.

    ``weights``: optional per-row sample weights ``{task name: (N,) tensor}``; a task's loss is
    then ``Σ w·l / Σ w`` over its labelled elements and its count ``Σ w`` (see
    :meth:`~mtlkit.Task.compute_loss`), so the distributed reductions weigh ranks by weight sums.

    A task whose targets are absent from ``targets`` (e.g. a batch from another task's
    dataset), and an evaluation-only task (``Task(train=False)``), gets loss 0 and count 0, so
    weightings and aggregators treat it as absent from the batch. No host synchronisation
    happens here.

    Target and mask keys are checked on every call (a few list look-ups, under 1 % of this
    function's time; see :func:`check_keys`): a label mask of no task, and targets of no task
    while a trained task has none, are refused rather than silently ignored. Model outputs that
    are no task are checked by :func:`check_outputs` (with the model, which may declare them).

    Raises:
        ShapeError: a model output is missing or has the wrong shape for its task.
        DataError: a target or mask key names no task (see :func:`check_keys`).
    """
    check_keys(tasks, targets, masks, weights)
    losses, counts = [], []
    ref: Tensor | None = None
    for task in tasks:
        if task.output_key not in outputs:
            raise ShapeError(
                f"Model output is missing task {task.output_key!r} (got keys: "
                f"{', '.join(map(repr, sorted(outputs)))}). Check Task(output=...) or the model's tasks."
            )
        pred = outputs[task.output_key]
        ref = pred if ref is None else ref
        if task.target_key not in targets or not task.train:
            zero = pred.sum() * 0.0  # keeps the graph (and device/dtype) without touching labels
            losses.append(zero)
            counts.append(torch.zeros((), dtype=zero.dtype, device=zero.device))
            continue
        mask = masks.get(task.name) if masks else None
        weight = weights.get(task.name) if weights else None
        loss, count = task.compute_loss(pred, targets[task.target_key], mask, weight)
        losses.append(loss)
        counts.append(count.to(loss.dtype))
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in losses))
    items = tuple(t.to(dtype) for t in losses)
    return TaskLosses(torch.stack(items), torch.stack([c.to(dtype) for c in counts]), items)


def _listing(keys: Iterable[str]) -> str:
    return ", ".join(map(repr, keys))


def _hints(unknown: Sequence[str], known: Sequence[str]) -> str:
    """`` Did you mean 'x' for 'y'?`` for every unknown key with a close known one."""
    out = []
    for key in unknown:
        hint = did_you_mean(key, known)
        if hint:
            out.append(hint.removesuffix("?") + f" for {key!r}?")
    return "".join(out)


def check_outputs(tasks: Sequence[Task], outputs: Mapping[str, Tensor], model: object | None = None) -> None:
    """Refuse model outputs that belong to none of ``tasks`` (they would never be trained).

    An output belongs to a task when it is the task's ``Task(output=...)`` (default its name).
    (Auxiliary losses are not outputs: models return them apart, see
    :meth:`~mtlkit.models.MultiTaskModel.forward_parts`.) A model that
    declares its tasks (``model.task_names``, as every :class:`~mtlkit.models.MultiTaskModel`
    does) may return outputs besides them, e.g. an ESMM-shaped model's pCVR, learnt through
    pCTCVR: only its declared tasks must be among ``tasks``. For a model without ``task_names``
    (or ``model=None``) every output must belong to a task. An output that is evaluated but not
    trained is declared as ``Task(..., train=False)``. The :class:`~mtlkit.Trainer` calls this on
    every step (a few list look-ups).

    Raises:
        ShapeError: naming the outputs, the tasks' outputs and the close match.
    """
    declared = getattr(model, "task_names", None) if model is not None else None
    out_keys = [t.output_key for t in tasks]
    extra = [
        k
        for k in outputs
        if k not in out_keys and (declared is None or k in declared)
    ]
    if extra:
        raise ShapeError(
            f"The model returns output(s) {_listing(extra)} that belong to no task, so they would never be "
            f"trained.{_hints(extra, out_keys)} Task outputs: {_listing(out_keys)}. Add a Task for each "
            "model output (Task(name=..., train=False) for one that is only evaluated), set "
            "Task(output=...), or return auxiliary losses apart (MultiTaskModel._forward/_decode)."
        )


def check_keys(
    tasks: Sequence[Task],
    targets: Mapping[str, Tensor],
    masks: Mapping[str, Tensor] | None = None,
    weights: Mapping[str, Tensor] | None = None,
) -> None:
    """Refuse target and mask keys of one batch that no task reads, where ignoring them would
    hide a mistake:

    - a label mask (or sample-weight) key that is no task name;
    - a target key that is no task's target key (``Task(target=...)``, default its name) while a
      trained task has no targets in the batch: that task would never be trained. When every
      trained task has its targets, other target keys are extra columns (e.g. the ground truth
      of synthetic data) and are ignored.

    Raises:
        DataError: an unknown mask key, or unknown target keys while a trained task lacks targets.
    """
    for what, keyed in (("Label masks", masks), ("Sample weights", weights)):
        if keyed:
            names = [t.name for t in tasks]
            bad = [k for k in keyed if k not in names]
            if bad:
                raise DataError(
                    f"{what} are keyed by task name; {_listing(bad)} is no task.{_hints(bad, names)} "
                    f"Tasks: {_listing(names)}."
                )
    target_keys = [t.target_key for t in tasks]
    unknown = [k for k in targets if k not in target_keys]
    if unknown:
        unlabelled = [t.name for t in tasks if t.train and t.target_key not in targets]
        if unlabelled:
            raise DataError(
                f"Targets {_listing(unknown)} belong to no task, and the trained task(s) {_listing(unlabelled)} "
                f"have no targets in the batch, so they would never be trained.{_hints(unknown, target_keys)} "
                f"Task target keys: {_listing(target_keys)}. Rename the targets, or set Task(target=...)."
            )


class UnlabelledTaskWarning(UserWarning):
    """A trained task got no label in an epoch of training (it was not trained in that epoch)."""


def check_epoch_labels(
    tasks: Sequence[Task],
    counts: Sequence[float],
    *,
    epoch: int,
    steps: Mapping[str, int] | None = None,
) -> None:
    """After an epoch of training: every trained task received at least one label.

    Args:
        tasks: the trainer's tasks; evaluation-only tasks (``train=False``) are skipped.
        counts: labelled elements each task received over the epoch, in task order.
        epoch: the epoch (0-based).
        steps: the steps each task was drawn for by a schedule with one task per step (all zero,
            or ``None``, when every step trains every task).

    Raises:
        DataError: a trained task received no label although the epoch went over its data (a
            whole pass: ``joint``, ``mixed``, ``alternating``, or a task the schedule drew):
            the data has no label for it, so it can never be trained.

    Warns:
        UnlabelledTaskWarning: a ``sampling`` schedule drew no step for a task in this epoch
            (its training loss for the epoch is NaN in the history).
    """
    drawn = steps is not None and any(steps.values())
    for task, n in zip(tasks, counts):
        if not task.train or n > 0:
            continue
        if drawn and steps is not None and steps.get(task.name, 0) == 0:
            warnings.warn(
                f"Task {task.name!r} was not drawn for any step of epoch {epoch + 1}, so it was not trained "
                "in this epoch (its training loss is NaN in the history). Use more steps per epoch or a "
                "sampling strategy that gives it a larger share.",
                UnlabelledTaskWarning,
                stacklevel=2,
            )
            continue
        missing = "all missing (NaN, or -1 for class indices), or all of weight 0"
        raise DataError(
            f"Task {task.name!r} received no label in epoch {epoch + 1} of training: its targets (key "
            f"{task.target_key!r}) were absent from every batch or {missing}, so it can never be "
            "trained. Check the training data's labels and Task(target=...), or make the task "
            "evaluation-only with Task(train=False)."
        )
