"""One epoch's running statistics: mean task losses, mean weights, auxiliary losses, steps per task."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from mtlkit.errors import CheckpointError
from mtlkit.losses import check_epoch_labels
from mtlkit.tasks import Task
from mtlkit.training.divergence import DivergenceGuard
from mtlkit.training.step import StepStats

__all__ = ["EpochStats", "epoch_line"]


class EpochStats:
    """Sums over one epoch's steps, kept where the losses live (no host synchronisation per step).

    :meth:`means` reads them back (the trainer does at progress refreshes and at the end of the
    epoch) and raises :class:`~mtlkit.training.TrainingDivergedError` (through the
    :class:`DivergenceGuard`) if a loss was not finite at some step.

    Args:
        task_names: the tasks, in the order of the loss vector.
        device: where the losses live.
        epoch: the epoch (0-based), for the divergence message.
        first_step: the global step at which the epoch starts.
    """

    def __init__(
        self, task_names: Sequence[str], device: torch.device, *, epoch: int, first_step: int
    ) -> None:
        self.task_names = tuple(task_names)
        T = len(self.task_names)
        self.epoch, self.first_step, self.steps = epoch, first_step, 0
        self.guard = DivergenceGuard(self.task_names, device)
        self._losses = torch.zeros(2, T, dtype=torch.float64, device=device)  # sum of L * n, sum of n
        self._weights = torch.zeros(2, T, dtype=torch.float64, device=device)  # sum, steps with labels
        self._aux: dict[str, Tensor] = {}
        self._per_task = dict.fromkeys(self.task_names, 0)

    def add(self, stats: StepStats, trained: Sequence[str] | None) -> None:
        """Add one step (the global step ``first_step + steps``) that trained ``trained`` (``None``: all)."""
        result = stats.result
        self.guard.update(result.losses, self.first_step + self.steps)
        self.steps += 1
        for name in trained or ():
            self._per_task[name] += 1
        for k, v in stats.aux.items():
            self._aux[k] = self._aux.get(k, 0.0) + v.detach().double()
        counts = (stats.losses.counts if result.counts is None else result.counts).detach().double()
        self._losses[0] += result.losses.double() * counts
        self._losses[1] += counts
        present = (counts > 0).double()
        self._weights[0] += result.weights.double() * present
        self._weights[1] += present

    def means(self) -> list[float]:
        """Each task's mean loss so far over its labelled elements (NaN: none); raises if a loss diverged."""
        self.guard.check(epoch=self.epoch, epoch_start=self.first_step)
        n = self._losses[1]
        means = (self._losses[0] / torch.where(n > 0, n, torch.ones_like(n))).tolist()
        return [m if n > 0 else math.nan for m, n in zip(means, self._losses[1].tolist())]

    def state_dict(self) -> dict[str, Any]:
        """The sums so far (CPU copies), for a checkpoint written in the middle of the epoch."""
        return {
            "epoch": self.epoch,
            "first_step": self.first_step,
            "steps": self.steps,
            "losses": self._losses.detach().cpu().clone(),
            "weights": self._weights.detach().cpu().clone(),
            "aux": {k: v.detach().cpu().clone() for k, v in self._aux.items()},
            "per_task": dict(self._per_task),
            "guard": self.guard.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output (the epoch continues from where it was written).

        Raises:
            CheckpointError: ``state`` was written for another number of tasks.
        """
        losses, weights = state["losses"], state["weights"]
        if losses.shape != self._losses.shape or weights.shape != self._weights.shape:
            raise CheckpointError(
                f"The checkpoint's epoch statistics hold {losses.shape[-1]} tasks, but this trainer has "
                f"{len(self.task_names)}; resume with the tasks of the run that wrote it."
            )
        device = self._losses.device
        self.epoch, self.first_step, self.steps = (
            int(state["epoch"]),
            int(state["first_step"]),
            int(state["steps"]),
        )
        self._losses = losses.to(device, torch.float64).clone()
        self._weights = weights.to(device, torch.float64).clone()
        self._aux = {str(k): v.to(device, torch.float64).clone() for k, v in (state.get("aux") or {}).items()}
        per_task = state.get("per_task") or {}
        self._per_task = {n: int(per_task.get(n, 0)) for n in self.task_names}
        if state.get("guard") is not None:
            self.guard.load_state_dict(state["guard"])

    def check_labels(self, tasks: Sequence[Task]) -> None:
        """Every trained task received a label this epoch (:func:`~mtlkit.losses.check_epoch_labels`)."""
        check_epoch_labels(tasks, self._losses[1].tolist(), epoch=self.epoch, steps=self._per_task)

    def summary(self, means: list[float], *, steps_per_task: bool) -> dict[str, Any]:
        """The epoch's record entries: ``train`` (``means``), ``weights`` (mean over the steps where
        the task had labels, NaN: none), ``aux`` (when the model has auxiliary losses) and, for
        one-task-per-step schedules, ``steps`` per task."""
        w = self._weights
        weights = torch.where(w[1] > 0, w[0] / w[1].clamp_min(1), math.nan).tolist()
        record: dict[str, Any] = {
            "train": dict(zip(self.task_names, means)),
            "weights": dict(zip(self.task_names, weights)),
        }
        if self._aux:
            record["aux"] = {k: float(v / self.steps) for k, v in self._aux.items()}
        if steps_per_task:
            record["steps"] = dict(self._per_task)
        return record


def epoch_line(record: dict[str, Any], epochs: int) -> str:
    """The one-line summary of an epoch's record (``Trainer(log_epochs=True)``)."""
    train = " ".join(f"{t}={v:.4f}" for t, v in record["train"].items())
    if "steps" in record:
        train += " (steps " + " ".join(f"{t}={n}" for t, n in record["steps"].items()) + ")"
    mon = record["monitor"]
    return (
        f"epoch {record['epoch']}/{epochs}  train loss {train}  |  {mon['name']}={mon['value']:.4f}"
        f"  ({record['seconds']:.1f}s)"
    )
