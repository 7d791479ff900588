"""The optimizers and learning-rate schedulers of a trainer: one for every step, or one per task."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import nn

from mtlkit.errors import CheckpointError
from mtlkit.training.scope import frozen_rows
from mtlkit.training.sparse_optim import sparse_parameters, split_optimizer

__all__ = ["OptimizerLike", "OptimizerSet", "SchedulerLike"]

OptimizerLike = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerLike = Any  # an LRScheduler / ReduceLROnPlateau, or a callable(optimizer) -> one


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))


class OptimizerSet:
    """The optimizer(s) that step a model and its loss weighting, with their LR schedulers.

    Either one optimizer (and scheduler) for every step, or, with ``per_task``, one per task,
    stepped on that task's steps only (the seeds' alternating training; ``optimizer`` and
    ``scheduler`` must then be factories). Learnable parameters of the loss weighting join every
    optimizer as a parameter group of their own (no weight decay); during a step that trains only
    some tasks, the other tasks' rows of those parameters keep their values.

    Args:
        model: the model whose parameters are optimized.
        weighting: the loss weighting (its parameters are added, and zeroed with the model's).
        task_names: the tasks, in the order of the weighting's rows.
        optimizer: an optimizer, or a factory ``params -> optimizer`` (default: Adam, lr 1e-3).
        scheduler: an LR scheduler, or a factory ``optimizer -> scheduler``.
        per_task: one optimizer (and scheduler) per task.
        interval: step the schedulers every ``"epoch"`` (:meth:`end_epoch`) or every ``"step"``.
        clip_norm: clip the model's global gradient norm to this before each step.
    """

    def __init__(
        self,
        model: nn.Module,
        weighting: nn.Module,
        task_names: Sequence[str],
        optimizer: OptimizerLike | None = None,
        scheduler: SchedulerLike | None = None,
        *,
        per_task: bool = False,
        interval: Literal["epoch", "step"] = "epoch",
        clip_norm: float | None = None,
    ) -> None:
        if interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step'; got {interval!r}.")
        if clip_norm is not None and not clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None; got {clip_norm!r}.")
        if per_task and (isinstance(optimizer, torch.optim.Optimizer) or _is_scheduler(scheduler)):
            raise TypeError(
                "per_task_optimizers=True builds one optimizer (and scheduler) per task, so optimizer= "
                "and scheduler= must be factories (e.g. lambda params: torch.optim.Adam(params, lr=1e-3)), "
                "not instances."
            )
        self.model, self.weighting, self.task_names = model, weighting, tuple(task_names)
        self.per_task, self.interval, self.clip_norm = per_task, interval, clip_norm
        keys: list[str | None] = list(self.task_names) if per_task else [None]
        self.optimizers = {k: self._build(optimizer) for k in keys}
        self.schedulers = {
            k: scheduler(o) if callable(scheduler) and not _is_scheduler(scheduler) else scheduler
            for k, o in self.optimizers.items()
        }

    def _build(self, optimizer: OptimizerLike | None) -> torch.optim.Optimizer:
        sparse = sparse_parameters(self.model)
        if sparse and self.clip_norm is not None:
            raise ValueError(
                "grad_clip_norm needs dense gradients; the model has sparse embedding tables "
                "(sparse_embeddings: true). Turn one of them off."
            )
        if sparse and not isinstance(optimizer, torch.optim.Optimizer):  # SparseAdam for the tables
            opt = split_optimizer(optimizer, self.model)
        elif optimizer is None:  # multi-tensor kernels: the same numbers, faster on CPU too
            opt = torch.optim.Adam(self.model.parameters(), lr=1e-3, foreach=True)
        elif isinstance(optimizer, torch.optim.Optimizer):
            opt = optimizer
        elif callable(optimizer):
            opt = optimizer(self.model.parameters())
            if not isinstance(opt, torch.optim.Optimizer):
                raise TypeError(
                    f"The optimizer factory must return a torch.optim.Optimizer; got {type(opt).__name__}."
                )
        else:
            raise TypeError(
                f"optimizer must be a torch optimizer or a factory; got {type(optimizer).__name__}."
            )
        known = {id(p) for g in opt.param_groups for p in g["params"]}
        extra = [p for p in self.weighting.parameters() if p.requires_grad and id(p) not in known]
        if extra:
            opt.add_param_group({"params": extra, "weight_decay": 0.0})
        return opt

    def zero_grad(self) -> None:
        """Clear every gradient the step writes (model and weighting), to ``None``."""
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        self.weighting.zero_grad(set_to_none=True)

    def step(self, trained: Sequence[str] | None = None) -> None:
        """Clip, step the optimizer of this step (per task: the one of its single task ``trained``)
        and, with ``interval="step"``, its scheduler. The weighting rows of the tasks not in
        ``trained`` keep their values."""
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        key = trained[0] if self.per_task and trained else None
        untrained = [] if trained is None else [i for i, n in enumerate(self.task_names) if n not in trained]
        with frozen_rows(self.weighting, untrained, len(self.task_names)):
            self.optimizers[key].step()
        scheduler = self.schedulers[key]
        if scheduler is not None and self.interval == "step":
            scheduler.step()

    def end_epoch(self, monitor: float) -> None:
        """Step the schedulers after an epoch (``ReduceLROnPlateau`` with the monitored value)."""
        if self.interval != "epoch":
            return
        for scheduler in self.schedulers.values():
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(monitor)
            elif scheduler is not None:
                scheduler.step()

    def learning_rates(self) -> list[float]:
        """Every parameter group's learning rate (every optimizer, in task order)."""
        return [g["lr"] for opt in self.optimizers.values() for g in opt.param_groups]

    def component_names(self) -> dict[str, str | None]:
        """Class names of the optimizer and scheduler (``None`` per task: checkpoints record them)."""
        if self.per_task:
            return {"optimizer": None, "scheduler": None}
        opt, sched = self.optimizers[None], self.schedulers[None]
        return {
            "optimizer": type(opt).__name__,
            "scheduler": type(sched).__name__ if sched is not None else None,
        }

    def state_dict(self) -> dict[str, Any]:
        """The optimizers' and schedulers' states, under the checkpoint's keys."""
        if not self.per_task:
            sched = self.schedulers[None]
            return {
                "optimizer": self.optimizers[None].state_dict(),
                "scheduler": sched.state_dict() if sched is not None else None,
                "task_optimizers": None,
                "task_schedulers": None,
            }
        return {
            "optimizer": None,
            "scheduler": None,
            "task_optimizers": {t: o.state_dict() for t, o in self.optimizers.items()},
            "task_schedulers": {
                t: s.state_dict() if s is not None else None for t, s in self.schedulers.items()
            },
        }

    def load_state_dict(self, state: Mapping[str, Any], *, source: str = "checkpoint") -> None:
        """Restore the optimizers of :meth:`state_dict` (the schedulers: :meth:`load_schedulers`)."""
        saved = state.get("task_optimizers")
        if (saved is not None) != self.per_task:
            raise CheckpointError(
                f"The {source} was written "
                + ("with per-task optimizers" if saved is not None else "with one optimizer")
                + ", but this trainer has "
                + ("per-task optimizers" if self.per_task else "one optimizer")
                + "; set per_task_optimizers as in the run that wrote it."
            )
        if not self.per_task:
            self.optimizers[None].load_state_dict(state["optimizer"])
            return
        if sorted(saved) != sorted(self.optimizers):  # type: ignore[type-var]
            raise CheckpointError(
                f"The {source} has optimizers for tasks {sorted(saved)}, but this trainer has "
                f"{sorted(self.optimizers)}."  # type: ignore[type-var]
            )
        for name, opt in self.optimizers.items():
            opt.load_state_dict(saved[name])

    def load_schedulers(self, state: Mapping[str, Any]) -> None:
        """Restore the schedulers of :meth:`state_dict` (those that were saved)."""
        saved = {None: state.get("scheduler")} if not self.per_task else (state.get("task_schedulers") or {})
        for key, scheduler in self.schedulers.items():
            if scheduler is not None and saved.get(key) is not None:
                scheduler.load_state_dict(saved[key])
