"""Multi-task training: fit (any training schedule), evaluate, predict, checkpoint and resume.

The :class:`Trainer` composes small parts that each own their state: the
:class:`~mtlkit.training.step.Balancer` (loss weighting, aggregator, gradient target), the
:class:`~mtlkit.training.optimizers.OptimizerSet`, the schedule, the
:class:`~mtlkit.training.early_stopping.EarlyStopper` and, per epoch,
:class:`~mtlkit.training.epoch.EpochStats` with its divergence guard. Every step of every
schedule is :func:`~mtlkit.training.step.train_step`.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from torch import Tensor, nn

from mtlkit.aggregation._base import Aggregator
from mtlkit.autograd import GradientTarget
from mtlkit.data.batch import Batch, Inputs
from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.distributed import world
from mtlkit.errors import DataError, UnknownComponentError
from mtlkit.state import TrainState
from mtlkit.tasks import Task, task_names
from mtlkit.training import evaluation
from mtlkit.training.balancer import Balancer, unwrap
from mtlkit.training.checkpoint import Checkpointer, as_checkpointer
from mtlkit.training.divergence import TrainingDivergedError
from mtlkit.training.early_stopping import EarlyStopper, EarlyStopping, check_monitor, monitored
from mtlkit.training.epoch import EpochStats, epoch_line
from mtlkit.training.loggers import EpochLogger, TensorBoardLogger
from mtlkit.training.optimizers import OptimizerLike, OptimizerSet, SchedulerLike
from mtlkit.training.per_task_stopping import PerTaskEarlyStopper, task_monitored
from mtlkit.training.progress import ProgressDisplay
from mtlkit.training.schedules import EpochPlan, TaskSchedule, check_compatible, resolve_schedule
from mtlkit.training.source import TrainSource, as_source
from mtlkit.training.sparse_optim import sparse_parameters
from mtlkit.training.step import StepStats, prepare_batch, train_step, trained_subset
from mtlkit.training.task_data import PerTaskData
from mtlkit.training.trainer_state import load_trainer_state, trainer_state
from mtlkit.weighting._base import LossWeighting
from mtlkit.weighting.basic import EqualWeighting

__all__ = ["Trainer", "TrainingDivergedError"]

DataLike = MultiTaskDataset | PerTaskData | Iterable[Any]


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    """Trains a multi-task model: a weighted sum of task losses, under any training schedule.

    Under torch.distributed every step equals a single-process step on the global batch, and
    rank 0 writes the checkpoints (README, "Distributed training").

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
            (``forward_parts(x, representation=True)``: the shared-bottom output, the expert
            outputs of MoE models).
        device: where to train; default CUDA when available, otherwise CPU.
        seed: seeds the shuffling of datasets passed to :meth:`fit`, the schedule's task draws and
            the generator handed to stochastic balancing methods. Seed model initialisation
            yourself (``torch.manual_seed``) before building the model.
        grad_clip_norm: clip the global gradient norm to this value (off by default).
        progress: show a live progress bar (default: when stderr is a terminal).
        log_epochs: print a one-line summary after every epoch.
        log_dir: write TensorBoard events here (:class:`~mtlkit.training.TensorBoardLogger`;
            needs ``pip install 'mtlkit[tensorboard]'``).
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
        missing = sorted({t.output_key for t in self.tasks} - set(model_tasks or ())) if model_tasks else []
        if missing:
            raise UnknownComponentError("model output", missing[0], model_tasks)
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        weighting = (weighting if weighting is not None else EqualWeighting(self.tasks)).to(self.device)
        if weighting.task_names != self.task_names:
            raise ValueError(
                f"The loss weighting was built for tasks {list(weighting.task_names)}, but the trainer "
                f"has {list(self.task_names)}; build it with the same tasks in the same order."
            )
        aggregator = aggregator.to(self.device) if aggregator is not None else None
        self.balancer = Balancer(weighting, aggregator, gradient_target)
        self.balancer.check(self.model)
        if aggregator is not None and sparse_parameters(self.model):
            raise ValueError(
                f"The aggregator {type(aggregator).__name__} combines dense per-task gradients; the model has sparse "
                "embedding tables (sparse_embeddings: true). Use a loss weighting, or dense tables."
            )
        self.schedule = resolve_schedule(schedule)
        check_compatible(
            self.schedule, weighting=weighting, aggregator=aggregator, per_task_optimizers=per_task_optimizers
        )
        self.optimizers = OptimizerSet(
            self.model,
            weighting,
            self.task_names,
            optimizer,
            scheduler,
            per_task=per_task_optimizers,
            interval=scheduler_interval,
            clip_norm=grad_clip_norm,
        )
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.console = console or Console(stderr=True)
        self.progress, self.log_epochs = progress, log_epochs
        self.logger = logger if logger is not None or log_dir is None else TensorBoardLogger(Path(log_dir))
        # independent task networks (the single-task baseline) stop and are restored per task
        self.stopper: EarlyStopper | PerTaskEarlyStopper = (
            PerTaskEarlyStopper(self._task_snapshot, self.task_names)
            if getattr(unwrap(self.model), "independent_tasks", False)
            else EarlyStopper(self._snapshot)
        )
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self.epoch_losses: list[tuple[float, ...]] = []  # every epoch's mean task losses (DWA reads them)
        self._open: dict[str, Any] | None = None  # the epoch in progress (for mid-epoch checkpoints)
        self._resume_position: dict[str, Any] | None = None  # where a loaded mid-epoch checkpoint stopped

    # ------------------------------------------------------------------ parts
    weighting = property(lambda self: self.balancer.weighting, doc="The loss weighting.")
    aggregator = property(lambda self: self.balancer.aggregator, doc="The gradient aggregator, or None.")
    gradient_target = property(
        lambda self: self.balancer.gradient_target, doc="Where per-task gradients are taken."
    )
    uses_gradients = property(lambda self: self.balancer.uses_gradients, doc="Per-task gradients are needed.")
    optimizer = property(
        lambda self: self.optimizers.optimizers.get(None), doc="The optimizer (None: per task)."
    )
    scheduler = property(lambda self: self.optimizers.schedulers.get(None), doc="The LR scheduler, if any.")
    task_optimizers = property(
        lambda self: self.optimizers.optimizers if self.optimizers.per_task else None,
        doc="``{task: optimizer}`` with per-task optimizers, else None.",
    )

    # ------------------------------------------------------------------ training
    def fit(
        self,
        train: DataLike | TrainSource,
        val: DataLike | None = None,
        *,
        epochs: int,
        batch_size: int = 256,
        early_stopping: EarlyStopping | None = None,
        checkpoint: str | os.PathLike[str] | None = None,
        resume: str | os.PathLike[str] | None = None,
        extra_state: Mapping[str, Any] | None = None,
        checkpoint_every: int | None = None,
    ) -> list[dict[str, Any]]:
        """Train for ``epochs`` epochs (in total, counting those of a resumed checkpoint).

        Args:
            train: a :class:`MultiTaskDataset` (batched and shuffled here), a dict
                ``{task name: MultiTaskDataset}`` of per-task datasets (schedules ``mixed``,
                ``alternating``, ``sampling``), any iterable of batches (a
                :class:`TensorBatchLoader`, a torch ``DataLoader`` with
                ``collate_fn=mtlkit.data.collate``...; schedule ``joint``) or a
                :class:`~mtlkit.training.source.TrainSource` (a stream), or a dict ``{task name:
                TrainSource}`` of per-task streams (schedules ``alternating``, ``sampling``). The
                schedule decides how it is batched and what an epoch is.
            val: validation data (a dataset, per-task datasets or batches), evaluated after
                every epoch.
            epochs: total number of epochs.
            batch_size: batch size when ``train``/``val`` are datasets.
            early_stopping: stop on a monitored metric and restore the best weights.
            checkpoint: write a checkpoint here after every epoch (everything needed to resume).
            resume: a checkpoint to continue from. A checkpoint written in the middle of an epoch
                (``checkpoint_every``) continues that epoch from its next step: the remaining
                batches, task draws and random numbers are those of the uninterrupted run, so the
                final parameters and history are the same (a checkpoint loaded with
                :meth:`load_checkpoint` or :meth:`load_state_dict` before ``fit`` does the same).
            extra_state: stored in every checkpoint under ``"extra"`` (e.g. the run's config).
            checkpoint_every: also write the checkpoint every this many optimizer steps (counted
                over the whole run: steps ``N, 2N, ...``) inside an epoch, besides the one written
                at the end of every epoch; it records the position in the epoch (``None``: only
                at the end of epochs). Needs ``checkpoint``. Under torch.distributed rank 0 writes.

        Returns:
            The history: one dict per epoch with ``train`` losses, ``val`` metrics, ``weights``,
            ``lr`` and ``seconds``.
        """
        if not isinstance(epochs, int) or epochs < 1:
            raise ValueError(f"epochs must be an int >= 1; got {epochs!r}.")
        if checkpoint_every is not None:
            if (
                isinstance(checkpoint_every, bool)
                or not isinstance(checkpoint_every, int)
                or checkpoint_every < 1
            ):
                raise ValueError(
                    f"checkpoint_every must be an int >= 1 (optimizer steps between checkpoints) or None; "
                    f"got {checkpoint_every!r}."
                )
            if checkpoint is None:
                raise ValueError("checkpoint_every needs checkpoint=<file or Checkpointer> to write to.")
        if early_stopping is not None:
            check_monitor(early_stopping.monitor, self.tasks, has_val=val is not None)
        if resume is not None:
            self.load_checkpoint(resume)
        self.stopper.start(early_stopping)
        num_replicas, rank = world()
        # evaluation-only tasks (Task(train=False)) never get a step or a batch of their own
        trained = [t for t in self.tasks if t.train] or list(self.tasks)
        source = as_source(train, exclude=[t.name for t in self.tasks if t not in trained])
        plan = self.schedule.bind(
            source, trained, batch_size=batch_size, seed=self.seed, num_replicas=num_replicas, rank=rank
        )
        val_loader = evaluation.loader(val, self.tasks, batch_size) if val is not None else None
        if self.logger is not None:
            self.logger.watch(val_loader)
        display = ProgressDisplay(self.progress, self.console)

        def save_mid_epoch() -> None:
            self.save_checkpoint(checkpoint, extra=extra_state)  # type: ignore[arg-type]

        mid_epoch = save_mid_epoch if checkpoint_every is not None and rank == 0 else None
        try:
            while self.epoch < epochs and not self.stopper.stopped:
                position = self._resume_position
                before = float(position.get("seconds", 0.0)) if position is not None else 0.0
                started = time.perf_counter() - before  # a resumed epoch counts its time before the stop
                record = {
                    "epoch": self.epoch + 1,
                    **self._train_epoch(plan, epochs, display, every=checkpoint_every, save=mid_epoch),
                }
                if val_loader is not None:
                    record["val"] = self._evaluate(val_loader)
                record["seconds"] = time.perf_counter() - started
                self.epoch += 1
                stop = self._after_epoch(record, early_stopping)
                self.history.append(record)
                self._log_epoch(record, epochs)
                if checkpoint is not None and rank == 0:  # under torch.distributed, rank 0 writes
                    self.save_checkpoint(checkpoint, extra=extra_state)
                if stop:
                    break
        finally:
            display.close()
            if self.logger is not None:
                self.logger.flush()
        best = self.stopper.best_state()
        if best is not None:
            model = unwrap(self.model)
            state = model.state_dict()
            state.update(best["state"])  # per task: each task's keys at its own best epoch
            model.load_state_dict(state)
            self.weighting.load_state_dict(best["weighting"])
        return self.history

    def _snapshot(self, with_model: bool) -> dict[str, Any]:
        """Copies of the current weights, for early stopping's best epoch."""
        return {
            "state": _cpu_state(unwrap(self.model)) if with_model else None,
            "weighting": _cpu_state(self.weighting),
        }

    def _task_snapshot(self, task: str, with_model: bool) -> dict[str, Any]:
        """Copies of one task's weights (its network's state-dict keys), for per-task early stopping."""
        model = unwrap(self.model)
        keys = set(model.task_state_keys(task))
        return {
            "state": (
                {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k in keys}
                if with_model
                else None
            ),
            "weighting": _cpu_state(self.weighting),
        }

    def _train_epoch(
        self,
        plan: EpochPlan,
        epochs: int,
        display: ProgressDisplay,
        *,
        every: int | None = None,
        save: Any = None,
    ) -> dict[str, Any]:
        """One epoch of ``plan``: the record's ``train``, ``weights``, ``lr`` (and ``aux``, ``steps``).

        Continues the epoch of a loaded mid-epoch checkpoint from its position; ``save()`` writes
        the checkpoint every ``every`` optimizer steps (not after the epoch's last step: the
        end-of-epoch checkpoint follows)."""
        self.model.train()
        self.weighting.train()
        stats = EpochStats(self.task_names, self.device, epoch=self.epoch, first_step=self.step)
        position, self._resume_position = self._resume_position, None
        if position is not None and int(position["epoch"]) == self.epoch:
            stats.load_state_dict(position["stats"])
        start = stats.steps
        started = time.perf_counter() - (float(position.get("seconds", 0.0)) if position is not None else 0.0)
        # the schedule's state at the start of the epoch: a mid-epoch checkpoint replays the epoch from it
        self._open = {
            "schedule": copy.deepcopy(self.schedule.state_dict()),
            "stats": stats,
            "started": started,
        }
        display.start_epoch(self.epoch, epochs, plan.steps_per_epoch)
        display.update(start)
        refresh = max(1, (plan.steps_per_epoch or 50) // 20)
        try:
            for item in plan.epoch(self.epoch, start):
                batch = prepare_batch(item.batch, self.tasks, self.device, validate=plan.validate)
                step = self.train_step(batch, tasks=item.tasks)
                stats.add(step, item.tasks)
                if self.logger is not None:
                    self.logger.log_step(self.step, step.result)
                if stats.steps % refresh == 0:
                    display.update(refresh, self.task_names, stats.means())
                last = stats.steps == plan.steps_per_epoch  # the end-of-epoch checkpoint follows
                if save is not None and every is not None and self.step % every == 0 and not last:
                    stats.means()  # a diverged loss raises here: the checkpoint on disk stays the last good one
                    save()
        finally:
            self._open = None
        if stats.steps == 0:
            raise DataError("The training data yielded no batches; check its size and batch_size.")
        means = stats.means()
        stats.check_labels(self.tasks)
        display.update(stats.steps % refresh, self.task_names, means)
        self.epoch_losses.append(tuple(means))
        summary = stats.summary(means, steps_per_task=self.schedule.one_task_per_step)
        return {**summary, "lr": self.optimizers.learning_rates()}

    def train_step(
        self, batch: Batch, *, epoch: int | None = None, tasks: Sequence[str] | None = None
    ) -> StepStats:
        """One optimisation step on ``batch`` (already on the trainer's device): see
        :func:`~mtlkit.training.step.train_step`. ``fit`` calls this for every step of the
        schedule; call it yourself to drive training.

        Args:
            batch: the batch.
            epoch: the epoch reported to the balancing method (default: the trainer's).
            tasks: train only these tasks (a one-task-per-step schedule gives one): the other
                tasks' labels are ignored, parameters that only they reach get no gradient and
                are not stepped, and their rows of the weighting's parameters keep their values.
                With per-task optimizers it must name exactly one task, whose optimizer steps.
        """
        trained = trained_subset(self.task_names, tasks, one_task=self.optimizers.per_task)
        state = TrainState(
            step=self.step,
            epoch=self.epoch if epoch is None else epoch,
            epoch_losses=tuple(self.epoch_losses),
            generator=self.generator,
        )
        out = train_step(
            self.model, batch, self.tasks, self.balancer, self.optimizers, state, trained=trained
        )
        self.step += 1
        return out

    def _after_epoch(self, record: dict[str, Any], early_stopping: EarlyStopping | None) -> bool:
        """Record the monitored value, step the epoch schedulers; True when early stopping stops."""
        name, value, higher = monitored(
            record, self.tasks, early_stopping, self.history[0] if self.history else None
        )
        record["monitor"] = {"name": name, "value": value}
        self.optimizers.end_epoch(value)
        if isinstance(self.stopper, PerTaskEarlyStopper):
            values = task_monitored(record, self.tasks, early_stopping)
            record["monitor"]["tasks"] = {t: v for t, (v, _) in values.items()}
            return self.stopper.update_tasks(values, epoch=record["epoch"])
        return self.stopper.update(value, higher=higher, epoch=record["epoch"])

    def _log_epoch(self, record: dict[str, Any], epochs: int) -> None:
        if self.logger is not None:
            self.logger.log_epoch(record, unwrap(self.model))
        if self.log_epochs:
            self.console.print(epoch_line(record, epochs))

    # ------------------------------------------------------------------ evaluation
    def _evaluate(self, loader: Iterable[Any]) -> dict[str, dict[str, float]]:
        return evaluation.evaluate(self.model, self.tasks, loader, self.device)

    def evaluate(self, data: DataLike, *, batch_size: int = 1024) -> dict[str, dict[str, float]]:
        """Per-task metrics ``{task: {metric: value}}`` on ``data`` (always includes ``loss``).

        With per-task datasets ``{task: dataset}`` each task is evaluated on its own dataset
        (its labelled rows) only, and only the tasks in the dict are reported. Under
        torch.distributed each rank evaluates its shard and the metrics are reduced.
        """
        return self._evaluate(evaluation.loader(data, self.tasks, batch_size))

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
        return evaluation.predict(
            self.model, self.tasks, data, self.device, batch_size=batch_size, activate=activate
        )

    # ------------------------------------------------------------------ checkpoints
    def position(self) -> dict[str, Any] | None:
        """Where training stands inside the epoch in progress, for a mid-epoch checkpoint; ``None``
        between epochs. ``{"epoch": 0-based epoch, "steps": steps done in it, "stats": the epoch's
        running sums, "schedule": the schedule's state at the start of the epoch, "seconds":
        time spent in it so far}``."""
        if self._open is None:
            return None
        stats: EpochStats = self._open["stats"]
        return {
            "epoch": self.epoch,
            "steps": stats.steps,
            "stats": stats.state_dict(),
            "schedule": copy.deepcopy(self._open["schedule"]),
            "seconds": time.perf_counter() - self._open["started"],
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume training exactly (see :func:`~mtlkit.training.trainer_state.trainer_state`)."""
        return trainer_state(self)

    def load_state_dict(self, state: Mapping[str, Any], *, source: str = "checkpoint") -> None:
        """Restore :meth:`state_dict` output; raises :class:`~mtlkit.errors.CheckpointError` on a mismatch."""
        load_trainer_state(self, state, source=source)

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


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
