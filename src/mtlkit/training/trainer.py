"""Multi-task training: fit (any training schedule), evaluate, predict, checkpoint and resume."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from rich.console import Console
from torch import Tensor, nn

from mtlkit.aggregation._base import Aggregator
from mtlkit.autograd import BackwardResult, GradientTarget, GradientWorkspace, backward
from mtlkit.data.batch import Batch, Inputs, as_batch
from mtlkit.data.dataset import MultiTaskDataset, TensorBatchLoader
from mtlkit.distributed import GradientSync, world
from mtlkit.errors import (
    CheckpointError,
    DataError,
    IncompatibleComponentsError,
    UnknownComponentError,
)
from mtlkit.losses import TaskLosses, check_epoch_labels, check_outputs, task_losses
from mtlkit.metrics.collection import MultiTaskMetrics
from mtlkit.models._base import forward_parts
from mtlkit.state import TrainState
from mtlkit.tasks import Task, task_names
from mtlkit.training.checkpoint import Checkpointer, as_checkpointer, component_mismatch, state_mismatch
from mtlkit.training.divergence import DivergenceGuard, TrainingDivergedError
from mtlkit.training.early_stopping import EarlyStopping, resolve_monitor
from mtlkit.training.loggers import EpochLogger, TensorBoardLogger
from mtlkit.training.progress import ProgressDisplay
from mtlkit.training.schedules import EpochPlan, TaskSchedule, check_compatible, resolve_schedule
from mtlkit.training.scope import detach_untrained, frozen_rows
from mtlkit.training.task_data import PerTaskData, PerTaskLoader, batch_loader, is_per_task, restrict
from mtlkit.weighting._base import LossWeighting
from mtlkit.weighting.basic import EqualWeighting

__all__ = ["Trainer", "TrainingDivergedError"]

OptimizerLike = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerLike = Any  # an LRScheduler / ReduceLROnPlateau, or a callable(optimizer) -> one
DataLike = MultiTaskDataset | PerTaskData | Iterable[Any]


class StepOutput(NamedTuple):
    """What :meth:`Trainer.train_step` did: the backward result, the task losses, auxiliary losses."""

    result: BackwardResult
    losses: TaskLosses
    aux: dict[str, Tensor]


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    """Trains a multi-task model: a weighted sum of task losses, under any training schedule.

    Under torch.distributed (e.g. ``torchrun``) every step equals a single-process step on the
    global batch: datasets are sharded by rank, the task losses and per-task gradients are
    reduced across ranks before weighting and aggregation (:class:`mtlkit.distributed.GradientSync`),
    metrics are reduced over the ranks' shards, and rank 0 writes the checkpoints.

    Args:
        model: a :class:`~mtlkit.models.MultiTaskModel` (any ``nn.Module`` returning
            ``{task: output}`` works; models without ``shared_parameters`` cannot use
            gradient-level methods), optionally wrapped in DistributedDataParallel.
        tasks: the tasks, in the order of the loss vector.
        optimizer: a torch optimizer over ``model.parameters()``, or a factory
            ``params -> optimizer`` (default: Adam, lr 1e-3). Learnable parameters of the loss
            weighting are added as their own parameter group (no weight decay).
        scheduler: an LR scheduler, or a factory ``optimizer -> scheduler``.
            ``ReduceLROnPlateau`` is stepped with the early-stopping monitor (or ``mean/loss``).
        scheduler_interval: step the scheduler every ``"epoch"`` or every optimizer ``"step"``.
        weighting: a :class:`~mtlkit.weighting.LossWeighting` (default: equal weights).
        aggregator: a :class:`~mtlkit.aggregation.Aggregator` that combines the per-task gradients
            of the weighted losses (MGDA, PCGrad...); ``None`` backpropagates the weighted sum.
        gradient_target: where gradient-level methods take the per-task gradients: the model's
            ``"parameters"`` (shared parameters, default) or its shared ``"representation"``
            (``model.encode``: the shared-bottom output, the expert outputs of MoE models).
        device: where to train; default CUDA when available, otherwise CPU.
        seed: seeds the shuffling of datasets passed to :meth:`fit`, the schedule's task draws and
            the generator handed to stochastic balancing methods. Seed model initialisation
            yourself (``torch.manual_seed``) before building the model.
        grad_clip_norm: clip the global gradient norm to this value (off by default).
        progress: show a live progress bar (default: when stderr is a terminal).
        log_epochs: print a one-line summary after every epoch.
        log_dir: write TensorBoard events here (losses, weights, metrics, learning rate, gate
            histograms; see :class:`~mtlkit.training.TensorBoardLogger`; needs
            ``pip install 'mtlkit[tensorboard]'``).
        logger: an :class:`~mtlkit.training.EpochLogger` to call instead (overrides ``log_dir``).
        console: rich console for the epoch lines and the progress bar.
        schedule: which task(s) each step trains and where its batch comes from: a
            :class:`~mtlkit.training.TaskSchedule` or a registry name (``"joint"`` (default),
            ``"mixed"``, ``"alternating"``, ``"sampling"``; see :mod:`mtlkit.training.schedules`).
        per_task_optimizers: give every task its own optimizer (``optimizer`` must then be a
            factory), stepped on that task's steps only (the seeds' alternating training: the
            shared parameters are stepped by each task's optimizer in turn). Needs a schedule
            with one task per step.

    Example:
        >>> import torch, mtlkit
        >>> data = mtlkit.data.synthetic_correlation(512, 0.5, dim=8)
        >>> model = mtlkit.models.mmoe(8, data.tasks, num_experts=2)
        >>> trainer = mtlkit.Trainer(model, data.tasks, progress=False)
        >>> history = trainer.fit(data, epochs=1, batch_size=128)
        >>> sorted(trainer.evaluate(data))
        ['y1', 'y2']
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Sequence[Task],
        *,
        optimizer: OptimizerLike | None = None,
        scheduler: SchedulerLike | None = None,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        weighting: LossWeighting | None = None,
        aggregator: Aggregator | None = None,
        gradient_target: GradientTarget = "parameters",
        device: torch.device | str | None = None,
        seed: int = 0,
        grad_clip_norm: float | None = None,
        progress: bool | None = None,
        log_epochs: bool = False,
        log_dir: str | os.PathLike[str] | None = None,
        console: Console | None = None,
        schedule: TaskSchedule | str | None = None,
        per_task_optimizers: bool = False,
        logger: EpochLogger | None = None,
    ) -> None:
        self.tasks = tuple(tasks)
        self.task_names = task_names(self.tasks)
        model_tasks = getattr(model, "task_names", None)
        if model_tasks is not None:
            outputs = {t.output_key for t in self.tasks}
            missing = sorted(outputs - set(model_tasks))
            if missing:
                raise UnknownComponentError("model output", missing[0], model_tasks)
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        self.weighting = (weighting if weighting is not None else EqualWeighting(self.tasks)).to(self.device)
        if self.weighting.task_names != self.task_names:
            raise ValueError(
                f"The loss weighting was built for tasks {list(self.weighting.task_names)}, but the trainer "
                f"has {list(self.task_names)}; build it with the same tasks in the same order."
            )
        self.aggregator = aggregator.to(self.device) if aggregator is not None else None
        self.gradient_target = gradient_target
        self._check_gradient_setup()
        self.schedule = resolve_schedule(schedule)
        check_compatible(
            self.schedule,
            weighting=self.weighting,
            aggregator=self.aggregator,
            per_task_optimizers=per_task_optimizers,
        )
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step'; got {scheduler_interval!r}.")
        self.scheduler_interval = scheduler_interval
        # one optimizer (and scheduler) for every step, or one per task (task_optimizers)
        self.task_optimizers: dict[str, torch.optim.Optimizer] | None = None
        self.task_schedulers: dict[str, Any] | None = None
        if per_task_optimizers:
            if isinstance(optimizer, torch.optim.Optimizer) or _is_scheduler(scheduler):
                raise TypeError(
                    "per_task_optimizers=True builds one optimizer (and scheduler) per task, so optimizer= "
                    "and scheduler= must be factories (e.g. lambda params: torch.optim.Adam(params, lr=1e-3)), "
                    "not instances."
                )
            self.optimizer = None  # type: ignore[assignment]
            self.scheduler = None
            self.task_optimizers = {t: self._make_optimizer(optimizer) for t in self.task_names}
            self.task_schedulers = {t: _make_scheduler(scheduler, o) for t, o in self.task_optimizers.items()}
        else:
            self.optimizer = self._make_optimizer(optimizer)
            self.scheduler = _make_scheduler(scheduler, self.optimizer)
        if grad_clip_norm is not None and not grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None; got {grad_clip_norm!r}.")
        self.grad_clip_norm = grad_clip_norm
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.console = console or Console(stderr=True)
        self.progress = progress
        self.log_epochs = log_epochs
        self.log_dir = Path(log_dir) if log_dir is not None else None
        if logger is None and self.log_dir is not None:
            logger = TensorBoardLogger(self.log_dir)
        self._logger = logger
        # training progress
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._epoch_losses: list[tuple[float, ...]] = []
        self._best: dict[str, Any] | None = None  # early-stopping state
        self._last_aux: dict[str, float] = {}
        self._last_steps: dict[str, int] = {}
        # gradient-level methods: the Jacobian's memory, reused every step, and the model's
        # shared / per-task parameter lists, resolved once (``requires_grad`` is still read per step)
        self._workspace = GradientWorkspace()
        self._param_groups: tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]] | None = None

    # ------------------------------------------------------------------ setup helpers
    @property
    def _core(self) -> nn.Module:
        """The model without a DistributedDataParallel wrapper."""
        return getattr(self.model, "module", self.model)

    @property
    def uses_gradients(self) -> bool:
        """True when the balancing needs per-task gradients (an aggregator or a gradient-based weighting)."""
        return self.aggregator is not None or self.weighting.requires_gradients

    @property
    def _has_encoder(self) -> bool:
        # MultiTaskModel (wrappers answer for their base)
        return getattr(self._core, "has_representation", False) is True

    def _check_gradient_setup(self) -> None:
        """Refuse combinations that cannot work, saying why and what to use instead."""
        if self.gradient_target not in ("parameters", "representation"):
            raise ValueError(
                f"gradient_target must be 'parameters' or 'representation'; got {self.gradient_target!r}."
            )
        method = type(self.aggregator or self.weighting).__name__
        core = self._core
        name = type(core).__name__
        if self.gradient_target == "representation" and not self.uses_gradients:
            raise IncompatibleComponentsError(
                f"gradient_target='representation' only changes gradient-level methods, and {method} works on the "
                "losses: the result would be identical to gradient_target='parameters'. Use an aggregator "
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
            if not self._has_encoder:
                raise IncompatibleComponentsError(
                    f"{name} has no single shared representation (has_representation is False), so {method} "
                    "cannot take gradients with respect to it. Use gradient_target='parameters'."
                )
        elif not any(p.requires_grad for p in core.shared_parameters()):
            raise IncompatibleComponentsError(
                f"{method} combines the gradients of shared parameters, but {name} shares none (every parameter "
                "belongs to one task). Use a loss weighting such as 'uncertainty', or a model with sharing."
            )

    def _make_optimizer(self, optimizer: OptimizerLike | None) -> torch.optim.Optimizer:
        if optimizer is None:
            # multi-tensor kernels: the same numbers, faster on CPU too
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
        extra = [p for p in self.weighting.parameters() if p.requires_grad]
        if extra:
            known = {id(p) for g in opt.param_groups for p in g["params"]}
            extra = [p for p in extra if id(p) not in known]
            if extra:
                opt.add_param_group({"params": extra, "weight_decay": 0.0})
        return opt

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.task_optimizers.values()) if self.task_optimizers is not None else [self.optimizer]

    def _schedulers(self) -> list[Any]:
        found = list(self.task_schedulers.values()) if self.task_schedulers is not None else [self.scheduler]
        return [s for s in found if s is not None]

    # ------------------------------------------------------------------ data helpers
    def _loader(self, data: DataLike, batch_size: int, shuffle: bool, shard: bool = True) -> Iterable[Any]:
        """An evaluation loader: under torch.distributed (and ``shard``) each rank reads its
        unpadded shard of a dataset (metrics are reduced over the ranks)."""
        if is_per_task(data):  # each task's labelled rows with only its targets, in order
            return PerTaskLoader(data, self.tasks, batch_size)  # type: ignore[arg-type]
        num_replicas, rank = world() if shard else (1, 0)
        return batch_loader(
            data,  # type: ignore[arg-type]
            self.tasks,
            batch_size,
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=num_replicas,
            rank=rank,
            pad=False,
        )

    def tasks_with_targets(self, data: MultiTaskDataset) -> list[Task]:
        """The trainer's tasks that ``data`` has labels for (all of them, unless it holds only some tasks)."""
        present = [t for t in self.tasks if t.target_key in data.targets]
        if not present:
            raise DataError(
                f"The dataset has targets {list(data.targets)} but the tasks are {list(self.task_names)}; "
                "no task has labels. Check Task(target=...)."
            )
        return present

    def _prepare(self, raw: Any, *, validate: bool) -> Batch:
        batch = as_batch(raw)
        if validate:
            for task in self.tasks:
                t = batch.targets.get(task.target_key)
                if t is not None and t.device.type == "cpu":
                    mask = batch.masks.get(task.name) if batch.masks else None
                    task.check_targets(t, mask, where="a batch")
        return batch.to(self.device, non_blocking=True)

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train: DataLike,
        val: DataLike | None = None,
        *,
        epochs: int,
        batch_size: int = 256,
        early_stopping: EarlyStopping | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
        extra_state: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` epochs (in total, counting those of a resumed checkpoint).

        Args:
            train: a :class:`MultiTaskDataset` (batched and shuffled here), a dict
                ``{task name: MultiTaskDataset}`` of per-task datasets (schedules ``mixed``,
                ``alternating``, ``sampling``) or any iterable of batches (a
                :class:`TensorBatchLoader`, a torch ``DataLoader`` with
                ``collate_fn=mtlkit.data.collate``...; schedule ``joint``). The schedule decides
                how it is batched and what an epoch is.
            val: validation data (a dataset, per-task datasets or batches), evaluated after
                every epoch.
            epochs: total number of epochs.
            batch_size: batch size when ``train``/``val`` are datasets.
            early_stopping: stop on a monitored metric and restore the best weights.
            checkpoint: write a checkpoint here after every epoch (everything needed to resume).
            resume: a checkpoint to continue from.
            extra_state: stored in every checkpoint under ``"extra"`` (e.g. the run's config).

        Returns:
            The history: one dict per epoch with ``train`` losses, ``val`` metrics, ``weights``,
            ``lr`` and ``seconds``.
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1; got {epochs!r}.")
        if early_stopping is not None:
            self._check_monitor(early_stopping.monitor, has_val=val is not None)
        if resume is not None:
            self.load_checkpoint(resume)
        num_replicas, rank = world()
        # evaluation-only tasks (Task(train=False)) never get a step or a batch of their own
        trained = [t for t in self.tasks if t.train] or list(self.tasks)
        if is_per_task(train) and len(trained) < len(self.tasks):  # their datasets serve evaluation only
            keep = {t.name for t in trained}
            train = {k: v for k, v in train.items() if k in keep}  # type: ignore[union-attr]
        plan = self.schedule.bind(
            train, trained, batch_size=batch_size, seed=self.seed, num_replicas=num_replicas, rank=rank
        )
        val_loader = self._loader(val, batch_size, shuffle=False) if val is not None else None
        if self._logger is not None:
            self._logger.watch(val_loader)
        display = ProgressDisplay(self.progress, self.console)
        try:
            while self.epoch < epochs and not self._stopped_early(early_stopping):
                epoch = self.epoch
                started = time.perf_counter()
                train_losses, weights = self._train_epoch(plan, epoch, epochs, display)
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "train": dict(zip(self.task_names, train_losses)),
                    "weights": dict(zip(self.task_names, weights)),
                    "lr": [g["lr"] for opt in self._optimizers() for g in opt.param_groups],
                }
                if self._last_aux:
                    record["aux"] = dict(self._last_aux)
                if val_loader is not None:
                    record["val"] = self._evaluate_loader(val_loader)
                if self.schedule.one_task_per_step:
                    record["steps"] = dict(self._last_steps)
                record["seconds"] = time.perf_counter() - started
                self.epoch = epoch + 1
                stop = self._after_epoch(record, early_stopping)
                self.history.append(record)
                self._log_epoch(record, epochs)
                if checkpoint is not None and rank == 0:  # under torch.distributed, rank 0 writes
                    self.save_checkpoint(checkpoint, extra=extra_state)
                if stop:
                    break
        finally:
            display.close()
            if self._logger is not None:
                self._logger.flush()
        if (
            early_stopping is not None
            and early_stopping.restore_best
            and self._best
            and self._best.get("state")
        ):
            self._core.load_state_dict(self._best["state"])
            self.weighting.load_state_dict(self._best["weighting"])
        return self.history

    def _stopped_early(self, early_stopping: EarlyStopping | None) -> bool:
        """True when a resumed checkpoint was written by a run that early stopping had ended."""
        best = self._best
        return (
            early_stopping is not None and best is not None and best["bad_epochs"] > early_stopping.patience
        )

    def _check_monitor(self, monitor: str, *, has_val: bool) -> None:
        directions = MultiTaskMetrics(self.tasks).directions()
        if not has_val:  # only the training losses exist
            directions = {t: {"loss": False} for t in directions}
        try:
            resolve_monitor(monitor, {t: dict.fromkeys(ms, 0.0) for t, ms in directions.items()}, directions)
        except KeyError as exc:
            hint = "" if has_val else " (without validation data only training losses can be monitored)"
            raise ValueError(f"EarlyStopping: {exc.args[0]}{hint}") from None

    def _train_epoch(
        self, plan: EpochPlan, epoch: int, epochs: int, display: ProgressDisplay
    ) -> tuple[list[float], list[float]]:
        self.model.train()
        self.weighting.train()
        T = len(self.tasks)
        sums = torch.zeros(2, T, dtype=torch.float64, device=self.device)
        weight_sum = torch.zeros(2, T, dtype=torch.float64, device=self.device)  # sum, steps with labels
        aux_sums: dict[str, Tensor] = {}
        steps_per_task = dict.fromkeys(self.task_names, 0)
        n_batches = 0
        total = plan.steps_per_epoch
        display.start_epoch(epoch, epochs, total)
        refresh = max(1, (total or 50) // 20)
        guard, epoch_start = DivergenceGuard(self.task_names, self.device), self.step
        for item in plan.epoch(epoch):
            batch = self._prepare(item.batch, validate=plan.validate)
            step = self.train_step(batch, epoch=epoch, tasks=item.tasks)
            guard.update(step.result.losses, self.step - 1)  # no host sync; read back with the means
            for name in item.tasks or ():
                steps_per_task[name] += 1
            for k, v in step.aux.items():
                aux_sums[k] = aux_sums.get(k, 0.0) + v.detach().double()
            result, tl = step.result, step.losses
            n_batches += 1
            counts = (tl.counts if result.counts is None else result.counts).detach().double()
            sums[0] += result.losses.double() * counts
            sums[1] += counts
            present = (counts > 0).double()
            weight_sum[0] += result.weights.double() * present
            weight_sum[1] += present
            if self._logger is not None:
                self._logger.log_step(self.step, result)
            if n_batches % refresh == 0:
                guard.check(epoch=epoch, epoch_start=epoch_start)
                means = self._check_finite(sums, epoch)
                display.update(refresh, self.task_names, means)
        if n_batches == 0:
            raise DataError("The training data yielded no batches; check its size and batch_size.")
        guard.check(epoch=epoch, epoch_start=epoch_start)
        means = self._check_finite(sums, epoch)
        check_epoch_labels(self.tasks, sums[1].tolist(), epoch=epoch, steps=steps_per_task)
        display.update(n_batches % refresh, self.task_names, means)
        self._epoch_losses.append(tuple(means))
        self._last_aux = {k: float(v / n_batches) for k, v in aux_sums.items()}
        self._last_steps = steps_per_task
        # mean weight over the steps where the task had labels (NaN: none this epoch)
        weights = torch.where(weight_sum[1] > 0, weight_sum[0] / weight_sum[1].clamp_min(1), math.nan)
        return means, weights.tolist()

    def _after_step(
        self, batch: Batch, present: Tensor, state: TrainState, sync: GradientSync | None
    ) -> None:
        new_losses = None
        if self.weighting.requires_post_step_losses:  # e.g. FAMO: the losses after the update, same batch
            with torch.no_grad():
                preds = self._core(batch.inputs)
                after = task_losses(self.tasks, preds, batch.targets, batch.masks)
                new_losses = (
                    after.losses if sync is None else sync.global_losses(after.losses, after.counts).losses
                )
        self.weighting.after_step(new_losses, present=present, state=state)

    def train_step(
        self, batch: Batch, *, epoch: int | None = None, tasks: Sequence[str] | None = None
    ) -> StepOutput:
        """One optimisation step on ``batch`` (already on the trainer's device).

        Forward, masked task losses, :func:`mtlkit.backward` with the weighting / aggregator,
        optional gradient clipping, optimizer (and per-step scheduler) step, the weighting's
        post-step hook. ``fit`` calls this for every step of the schedule; call it yourself to
        drive training.

        Args:
            batch: the batch.
            epoch: the epoch reported to the balancing method (default: the trainer's).
            tasks: train only these tasks (a one-task-per-step schedule gives one): the other
                tasks' labels are ignored, parameters that only they reach get no gradient and
                are not stepped, and their rows of the weighting's parameters keep their values.
                With per-task optimizers it must name exactly one task, whose optimizer steps.
        """
        trained = self._trained_tasks(tasks)
        if trained is not None:
            batch = restrict(batch, [t for t in self.tasks if t.name in trained])
        state = TrainState(
            step=self.step,
            epoch=self.epoch if epoch is None else epoch,
            epoch_losses=tuple(self._epoch_losses),
            generator=self.generator,
        )
        # gradient-level methods: bypass a DDP wrapper (its hooks expect one plain backward;
        # backward(sync=) reduces instead) and take the representation path, whose per-task graphs
        # are apart, so per-task backward passes are cheaper (same outputs)
        model = self._core if self.uses_gradients else self.model
        preds, aux, rep = forward_parts(model, batch.inputs, representation=self.uses_gradients)
        if self.gradient_target != "representation":
            rep = None
        check_outputs(self.tasks, preds, self._core)
        tl = task_losses(self.tasks, preds, batch.targets, batch.masks)
        if trained is not None:
            tl = detach_untrained(tl, [name in trained for name in self.task_names])
        for opt in self._optimizers():
            opt.zero_grad(set_to_none=True)
        self.weighting.zero_grad(set_to_none=True)
        shared, own = self._gradient_params() if self.uses_gradients else (None, None)
        sync = GradientSync.active()
        result = backward(
            tl,
            weighting=self.weighting,
            aggregator=self.aggregator,
            model=self.model if self.uses_gradients else None,
            shared_params=shared,
            task_params=own,
            representation=rep,
            aux=aux or None,
            state=state,
            workspace=self._workspace if self.uses_gradients else None,
            sync=sync,
        )
        if sync is not None:
            self._sync_gradients(sync, model_done=self._model_gradients_reduced(bool(aux)))
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        if self.task_optimizers is not None and self.task_schedulers is not None:
            assert trained is not None  # _trained_tasks gives exactly one task here
            (name,) = trained
            optimizer, scheduler = self.task_optimizers[name], self.task_schedulers[name]
        else:
            optimizer, scheduler = self.optimizer, self.scheduler
        untrained = [] if trained is None else [i for i, n in enumerate(self.task_names) if n not in trained]
        with frozen_rows(self.weighting, untrained, len(self.task_names)):
            optimizer.step()
        if scheduler is not None and self.scheduler_interval == "step":
            scheduler.step()
        self._after_step(batch, tl.present if result.counts is None else result.counts > 0, state, sync)
        self.step += 1
        return StepOutput(result, tl, aux)

    def _trained_tasks(self, tasks: Sequence[str] | None) -> tuple[str, ...] | None:
        """The step's task subset (None: every task), checked."""
        trained = self.task_names if tasks is None else tuple(dict.fromkeys(tasks))
        if not trained:
            raise ValueError("train_step(tasks=...) must name at least one task.")
        unknown = [t for t in trained if t not in self.task_names]
        if unknown:
            raise UnknownComponentError("task", unknown[0], self.task_names)
        if self.task_optimizers is not None:
            if len(trained) != 1:
                raise ValueError(
                    "With per-task optimizers every step trains one task (whose optimizer steps): pass "
                    f"tasks=('<name>',) to train_step (fit does this through the schedule); got {list(trained)}."
                )
            return trained
        return None if set(trained) == set(self.task_names) else trained

    def _gradient_params(self) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
        """The model's shared parameters and each task's own ones, resolved on first use."""
        if self._param_groups is None:
            core = self._core
            own = {t: list(core.task_parameters(t)) for t in self.task_names}
            self._param_groups = (list(core.shared_parameters()), own)
        return self._param_groups

    def _model_gradients_reduced(self, has_aux: bool) -> bool:
        """True when the model's gradients are already the same on every rank after ``backward``:
        DDP averaged them (loss level), or the per-task gradients were reduced before aggregation
        (gradient level on the parameters, with no auxiliary loss adding a rank's own gradient)."""
        if self.uses_gradients:
            return self.gradient_target == "parameters" and not has_aux
        return self._core is not self.model

    def _sync_gradients(self, sync: GradientSync, *, model_done: bool) -> None:
        """Average over the ranks the model gradients that are not global yet (see
        :meth:`_model_gradients_reduced`). The loss weighting's gradients need nothing: every
        rank computed them from the same global losses."""
        if model_done:
            return
        params = [p for p in self._core.parameters() if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        # one flag per parameter: a gradient that no rank has stays None, as in a single process
        # (an optimizer skips those; with zeros Adam would still move them by its momentum)
        has = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
        flat = sync.sum_(torch.cat([*(g.reshape(-1) for g in grads), has]))
        anywhere = flat[-len(params) :].tolist()
        flat = flat[: -len(params)].div_(sync.world_size)
        for p, g, n in zip(params, flat.split([g.numel() for g in grads]), anywhere):
            p.grad = g.view_as(p).clone() if n > 0 else None

    def _check_finite(self, sums: Tensor, epoch: int) -> list[float]:
        means = (sums[0] / sums[1].clamp_min(1)).tolist()
        for name, value, n in zip(self.task_names, means, sums[1].tolist()):
            if not math.isfinite(value):
                raise TrainingDivergedError(
                    f"Training diverged: the loss of task {name!r} became {value} in epoch {epoch + 1} "
                    f"(step {self.step}). Lower the learning rate, set grad_clip_norm, or check the inputs for "
                    "NaN/inf values."
                )
            if n == 0:
                means[self.task_names.index(name)] = math.nan
        return means

    def _after_epoch(self, record: dict[str, Any], early_stopping: EarlyStopping | None) -> bool:
        metrics = record.get("val") or {t: {"loss": v} for t, v in record["train"].items()}
        directions = MultiTaskMetrics(self.tasks).directions() if "val" in record else None
        monitor = early_stopping.monitor if early_stopping is not None else "mean/loss"
        try:
            value, higher = resolve_monitor(monitor, metrics, directions)
        except KeyError as exc:
            raise ValueError(str(exc.args[0])) from None
        if early_stopping is not None and early_stopping.mode != "auto":
            higher = early_stopping.mode == "max"
        record["monitor"] = {"name": monitor, "value": value}
        if self.scheduler_interval == "epoch":
            for scheduler in self._schedulers():
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    scheduler.step(value)
                else:
                    scheduler.step()
        if early_stopping is None:
            return False
        best = self._best
        delta = early_stopping.min_delta
        improved = best is None or (
            math.isfinite(value)
            and (
                not math.isfinite(best["value"])
                or (value > best["value"] + delta if higher else value < best["value"] - delta)
            )
        )
        if improved:
            self._best = {
                "value": value,
                "epoch": record["epoch"],
                "bad_epochs": 0,
                "state": _cpu_state(self._core) if early_stopping.restore_best else None,
                "weighting": _cpu_state(self.weighting),
            }
            return False
        assert best is not None
        best["bad_epochs"] += 1
        return best["bad_epochs"] > early_stopping.patience

    def _log_epoch(self, record: dict[str, Any], epochs: int) -> None:
        if self._logger is not None:
            self._logger.log_epoch(record, self._core)
        if self.log_epochs:
            train = " ".join(f"{t}={v:.4f}" for t, v in record["train"].items())
            if "steps" in record:
                train += " (steps " + " ".join(f"{t}={n}" for t, n in record["steps"].items()) + ")"
            mon = record["monitor"]
            self.console.print(
                f"epoch {record['epoch']}/{epochs}  train loss {train}  |  {mon['name']}={mon['value']:.4f}"
                f"  ({record['seconds']:.1f}s)"
            )

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def _evaluate_loader(self, loader: Iterable[Any]) -> dict[str, dict[str, float]]:
        self.model.eval()
        metrics = MultiTaskMetrics(self.tasks)
        validate = not isinstance(loader, (TensorBatchLoader, PerTaskLoader))
        for raw in loader:
            batch = self._prepare(raw, validate=validate)
            metrics.update(self.model(batch.inputs), batch.targets, batch.masks)
        result = metrics.compute()
        if isinstance(loader, PerTaskLoader):  # only the tasks that have a dataset
            result = {t: m for t, m in result.items() if t in loader.task_names}
        return result

    def evaluate(self, data: DataLike, *, batch_size: int = 1024) -> dict[str, dict[str, float]]:
        """Per-task metrics ``{task: {metric: value}}`` on ``data`` (always includes ``loss``).

        With per-task datasets ``{task: dataset}`` each task is evaluated on its own dataset
        (its labelled rows) only, and only the tasks in the dict are reported.
        """
        return self._evaluate_loader(self._loader(data, batch_size, shuffle=False))

    @torch.no_grad()
    def predict(
        self, data: DataLike | Inputs, *, batch_size: int = 1024, activate: bool = True
    ) -> dict[str, Tensor]:
        """Predictions for every model output, on the CPU.

        Args:
            data: raw inputs (a tensor or a dict of tensors), a dataset, an iterable of batches,
                or per-task datasets ``{task: dataset}``: then each task's output is predicted on
                its own dataset, one row per dataset row (outputs that are not a task are left out).
            activate: apply each task's activation (probabilities for classification). Outputs
                that are not a task (e.g. ESMM's pCVR) are returned as the model gives them.
        """
        if is_per_task(data):
            by_name = {t.name: t for t in self.tasks}
            unknown = [k for k in data if k not in by_name]  # type: ignore[union-attr]
            if unknown:
                raise UnknownComponentError("task", str(unknown[0]), self.task_names)
            out = {}
            for name, dataset in data.items():  # type: ignore[union-attr]
                key = by_name[name].output_key
                out[key] = self.predict(dataset, batch_size=batch_size, activate=activate)[key]
            return out
        self.model.eval()
        if isinstance(data, (Tensor, Mapping)) and not isinstance(data, MultiTaskDataset):
            n = data.shape[0] if isinstance(data, Tensor) else len(next(iter(data.values())))
            chunks: Iterable[Inputs] = (
                data[i : i + batch_size]
                if isinstance(data, Tensor)
                else {k: v[i : i + batch_size] for k, v in data.items()}
                for i in range(0, n, batch_size)
            )
        else:
            chunks = (as_batch(b).inputs for b in self._loader(data, batch_size, shuffle=False, shard=False))
        by_output = {t.output_key: t for t in self.tasks}
        parts: dict[str, list[Tensor]] = {}
        for inputs in chunks:
            inputs = (
                inputs.to(self.device)
                if isinstance(inputs, Tensor)
                else {k: v.to(self.device) for k, v in inputs.items()}
            )
            preds = self.model(inputs)
            for key, out in preds.items():
                task = by_output.get(key)
                value = task.activate(out.float()) if (activate and task is not None) else out
                parts.setdefault(key, []).append(value.cpu())
        return {k: torch.cat(v) for k, v in parts.items()}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training exactly."""
        return {
            "task_names": list(self.task_names),
            "components": self._components(),
            "model": self._core.state_dict(),  # without a DDP wrapper's "module." prefix
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "task_optimizers": None
            if self.task_optimizers is None
            else {t: o.state_dict() for t, o in self.task_optimizers.items()},
            "task_schedulers": None
            if self.task_schedulers is None
            else {t: s.state_dict() if s is not None else None for t, s in self.task_schedulers.items()},
            "schedule": self.schedule.state_dict(),
            "weighting": self.weighting.state_dict(),
            "aggregator": self.aggregator.state_dict() if self.aggregator is not None else None,
            "epoch": self.epoch,
            "step": self.step,
            "seed": self.seed,
            "history": self.history,
            "epoch_losses": [list(x) for x in self._epoch_losses],
            "best": self._best,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "trainer": self.generator.get_state(),
            },
        }

    def load_state_dict(self, state: Mapping[str, Any], *, source: str = "checkpoint") -> None:
        """Restore :meth:`state_dict` output; raises :class:`CheckpointError` on a mismatch."""
        names = list(state.get("task_names", []))
        if names != list(self.task_names):
            raise CheckpointError(
                f"The {source} was written for tasks {names}, but this trainer has {list(self.task_names)}."
            )
        components = self._components()
        saved_model = (state.get("components") or {}).get("model")
        if saved_model is not None and saved_model != components["model"]:
            raise CheckpointError(
                f"The {source} does not fit this model: it holds the weights of a {saved_model}, and this "
                f"model is a {components['model']}. Build the same architecture as the run that wrote it."
            )
        diff = component_mismatch(state.get("components") or {}, components)
        if diff:
            raise CheckpointError(
                f"The {source} was written by a different setup: {diff}. Use the same model, optimizer, "
                "scheduler, loss weighting and aggregator as the run that wrote it (see its config.yaml)."
            )
        mismatch = state_mismatch(state["model"], self._core.state_dict())
        if mismatch:
            raise CheckpointError(
                f"The {source} does not fit this model ({type(self._core).__name__}): {mismatch}. "
                "Build the model with the same architecture and sizes as the run that wrote it."
            )
        self._core.load_state_dict(state["model"])
        try:
            self.weighting.load_state_dict(state["weighting"])
            if self.aggregator is not None and state.get("aggregator") is not None:
                self.aggregator.load_state_dict(state["aggregator"])
            self._load_optimizers(state, source)
        except CheckpointError:
            raise
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"The {source}'s optimizer or loss-weighting state does not fit this trainer ({exc}). "
                "Use the same optimizer and weighting as the run that wrote it."
            ) from None
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        for name, scheduler in (self.task_schedulers or {}).items():
            saved = (state.get("task_schedulers") or {}).get(name)
            if scheduler is not None and saved is not None:
                scheduler.load_state_dict(saved)
        if state.get("schedule") is not None:
            self.schedule.load_state_dict(state["schedule"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.seed = int(state.get("seed", self.seed))  # the data order of the resumed run
        self.history = list(state.get("history", []))
        self._epoch_losses = [tuple(x) for x in state.get("epoch_losses", [])]
        self._best = state.get("best")
        rng = state.get("rng") or {}
        if "torch" in rng:
            torch.set_rng_state(rng["torch"])
        if rng.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        if "trainer" in rng:
            self.generator.set_state(rng["trainer"])

    def _load_optimizers(self, state: Mapping[str, Any], source: str) -> None:
        saved = state.get("task_optimizers")
        if (saved is not None) != (self.task_optimizers is not None):
            raise CheckpointError(
                f"The {source} was written "
                + ("with per-task optimizers" if saved is not None else "with one optimizer")
                + ", but this trainer has "
                + ("per-task optimizers" if self.task_optimizers is not None else "one optimizer")
                + "; set per_task_optimizers as in the run that wrote it."
            )
        if self.task_optimizers is None:
            self.optimizer.load_state_dict(state["optimizer"])
            return
        if sorted(saved) != sorted(self.task_optimizers):
            raise CheckpointError(
                f"The {source} has optimizers for tasks {sorted(saved)}, but this trainer has "
                f"{sorted(self.task_optimizers)}."
            )
        for name, opt in self.task_optimizers.items():
            opt.load_state_dict(saved[name])

    def _components(self) -> dict[str, str | None]:
        """Class names of what a checkpoint's state belongs to (checked when loading)."""

        def name(obj: Any) -> str | None:
            return type(obj).__name__ if obj is not None else None

        return {
            "model": name(self._core),
            "optimizer": name(self.optimizer),
            "scheduler": name(self.scheduler),
            "weighting": name(self.weighting),
            "aggregator": name(self.aggregator),
        }

    def save_checkpoint(
        self, path: str | os.PathLike[str] | Checkpointer, *, extra: Mapping[str, Any] | None = None
    ) -> Path:
        """Write :meth:`state_dict` (plus ``extra``) atomically, to a file or a :class:`Checkpointer`."""
        payload = self.state_dict()
        if extra is not None:
            payload["extra"] = dict(extra)
        return as_checkpointer(path).save(payload)

    def load_checkpoint(self, path: str | os.PathLike[str] | Checkpointer) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save_checkpoint`; returns its raw contents."""
        checkpointer = as_checkpointer(path)
        data = checkpointer.load()
        self.load_state_dict(data, source=f"checkpoint {str(checkpointer.path)!r}")
        return data


def _make_scheduler(scheduler: SchedulerLike | None, optimizer: torch.optim.Optimizer) -> Any:
    return scheduler(optimizer) if callable(scheduler) and not _is_scheduler(scheduler) else scheduler


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))
