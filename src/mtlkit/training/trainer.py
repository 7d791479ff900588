"""Joint multi-task training: fit, evaluate, predict, checkpoint and resume."""

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
from mtlkit.errors import (
    CheckpointError,
    DataError,
    IncompatibleComponentsError,
    MtlkitError,
    ShapeError,
    UnknownComponentError,
)
from mtlkit.losses import TaskLosses, split_aux, task_losses
from mtlkit.metrics.collection import MultiTaskMetrics
from mtlkit.models._base import MultiTaskModel
from mtlkit.state import TrainState
from mtlkit.tasks import Task, task_names
from mtlkit.training.checkpoint import load_checkpoint, save_checkpoint
from mtlkit.training.early_stopping import EarlyStopping, resolve_monitor
from mtlkit.training.progress import ProgressDisplay
from mtlkit.weighting._base import LossWeighting
from mtlkit.weighting.basic import EqualWeighting

__all__ = ["Trainer", "TrainingDivergedError"]

OptimizerLike = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerLike = Any  # an LRScheduler / ReduceLROnPlateau, or a callable(optimizer) -> one
DataLike = MultiTaskDataset | Iterable[Any]


class TrainingDivergedError(MtlkitError, FloatingPointError):
    """A task loss became NaN or infinite during training."""


class StepOutput(NamedTuple):
    """What :meth:`Trainer.train_step` did: the backward result, the task losses, auxiliary losses."""

    result: BackwardResult
    losses: TaskLosses
    aux: dict[str, Tensor]


def default_device() -> torch.device:
    """CUDA when available, else CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class Trainer:
    """Trains a multi-task model by joint training (a weighted sum of task losses).

    Args:
        model: a :class:`~mtlkit.models.MultiTaskModel` (any ``nn.Module`` returning
            ``{task: output}`` works; models without ``shared_parameters`` cannot use
            gradient-level methods).
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
        seed: seeds the shuffling of datasets passed to :meth:`fit` and the generator handed
            to stochastic balancing methods. Seed model initialisation yourself
            (``torch.manual_seed``) before building the model.
        grad_clip_norm: clip the global gradient norm to this value (off by default).
        progress: show a live progress bar (default: when stderr is a terminal).
        log_epochs: print a one-line summary after every epoch.
        log_dir: write TensorBoard scalars here (needs ``pip install 'mtlkit[tensorboard]'``).
        console: rich console for the epoch lines and the progress bar.

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
        self.optimizer = self._make_optimizer(optimizer)
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step'; got {scheduler_interval!r}.")
        self.scheduler = (
            scheduler(self.optimizer) if callable(scheduler) and not _is_scheduler(scheduler) else scheduler
        )
        self.scheduler_interval = scheduler_interval
        if grad_clip_norm is not None and not grad_clip_norm > 0:
            raise ValueError(f"grad_clip_norm must be > 0 or None; got {grad_clip_norm!r}.")
        self.grad_clip_norm = grad_clip_norm
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.console = console or Console(stderr=True)
        self.progress = progress
        self.log_epochs = log_epochs
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self._writer: Any = None
        # training progress
        self.epoch = 0  # epochs completed
        self.step = 0
        self.history: list[dict[str, Any]] = []
        self._epoch_losses: list[tuple[float, ...]] = []
        self._best: dict[str, Any] | None = None  # early-stopping state
        self._last_aux: dict[str, float] = {}
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
        return getattr(type(self._core), "encode", None) is not MultiTaskModel.encode and hasattr(
            self._core, "decode"
        )

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
                    f"{name} has no single shared representation (no encode()/decode()), so {method} cannot take "
                    "gradients with respect to it. Use gradient_target='parameters'."
                )
        elif not any(p.requires_grad for p in core.shared_parameters()):
            raise IncompatibleComponentsError(
                f"{method} combines the gradients of shared parameters, but {name} shares none (every parameter "
                "belongs to one task). Use a loss weighting such as 'uncertainty', or a model with sharing."
            )

    def _make_optimizer(self, optimizer: OptimizerLike | None) -> torch.optim.Optimizer:
        if optimizer is None:
            opt = torch.optim.Adam(self.model.parameters(), lr=1e-3)
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

    def _writer_or_none(self) -> Any:
        if self.log_dir is None:
            return None
        if self._writer is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # pragma: no cover - depends on the environment
                raise ImportError(
                    "TensorBoard logging needs the tensorboard package: pip install 'mtlkit[tensorboard]'"
                ) from None
            self._writer = SummaryWriter(str(self.log_dir))
        return self._writer

    # ------------------------------------------------------------------ data helpers
    def _loader(self, data: DataLike, batch_size: int, shuffle: bool) -> Iterable[Any]:
        if isinstance(data, MultiTaskDataset):
            data.validate(self.tasks_with_targets(data))
            return TensorBatchLoader(data, batch_size, shuffle=shuffle, seed=self.seed)
        if isinstance(data, TensorBatchLoader):
            data.dataset.validate(self.tasks_with_targets(data.dataset))
            return data
        if isinstance(data, (Tensor, Mapping)):
            raise TypeError(
                "Pass a MultiTaskDataset or an iterable of batches (e.g. a DataLoader); for raw inputs "
                "use trainer.predict(inputs)."
            )
        return data

    def tasks_with_targets(self, data: MultiTaskDataset) -> list[Task]:
        """The trainer's tasks that ``data`` has labels for (all of them, unless it is a per-task dataset)."""
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
            train: a :class:`MultiTaskDataset` (batched and shuffled here) or any iterable of
                batches (a :class:`TensorBatchLoader`, a torch ``DataLoader`` with
                ``collate_fn=mtlkit.data.collate``...).
            val: validation data, evaluated after every epoch.
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
        train_loader = self._loader(train, batch_size, shuffle=True)
        val_loader = self._loader(val, batch_size, shuffle=False) if val is not None else None
        validate_batches = not isinstance(train_loader, TensorBatchLoader)
        display = ProgressDisplay(self.progress, self.console)
        try:
            while self.epoch < epochs:
                epoch = self.epoch
                if hasattr(train_loader, "set_epoch"):
                    train_loader.set_epoch(epoch)
                elif hasattr(getattr(train_loader, "sampler", None), "set_epoch"):
                    train_loader.sampler.set_epoch(epoch)  # type: ignore[attr-defined]
                started = time.perf_counter()
                train_losses, weights = self._train_epoch(
                    train_loader, epoch, epochs, display, validate_batches
                )
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "train": dict(zip(self.task_names, train_losses)),
                    "weights": dict(zip(self.task_names, weights)),
                    "lr": [g["lr"] for g in self.optimizer.param_groups],
                }
                if self._last_aux:
                    record["aux"] = dict(self._last_aux)
                if val_loader is not None:
                    record["val"] = self._evaluate_loader(val_loader)
                record["seconds"] = time.perf_counter() - started
                self.epoch = epoch + 1
                stop = self._after_epoch(record, early_stopping)
                self.history.append(record)
                self._log_epoch(record, epochs)
                if checkpoint is not None:
                    self.save_checkpoint(checkpoint, extra=extra_state)
                if stop:
                    break
        finally:
            display.close()
            if self._writer is not None:
                self._writer.flush()
        if (
            early_stopping is not None
            and early_stopping.restore_best
            and self._best
            and self._best.get("state")
        ):
            self._core.load_state_dict(self._best["state"])
            self.weighting.load_state_dict(self._best["weighting"])
        return self.history

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
        self, loader: Iterable[Any], epoch: int, epochs: int, display: ProgressDisplay, validate: bool
    ) -> tuple[list[float], list[float]]:
        self.model.train()
        self.weighting.train()
        T = len(self.tasks)
        sums = torch.zeros(2, T, dtype=torch.float64, device=self.device)
        weight_sum = torch.zeros(T, dtype=torch.float64, device=self.device)
        aux_sums: dict[str, Tensor] = {}
        n_batches = 0
        total = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
        display.start_epoch(epoch, epochs, total)
        refresh = max(1, (total or 50) // 20)
        for raw in loader:
            batch = self._prepare(raw, validate=validate)
            step = self.train_step(batch, epoch=epoch)
            for k, v in step.aux.items():
                aux_sums[k] = aux_sums.get(k, 0.0) + v.detach().double()
            result, tl = step.result, step.losses
            n_batches += 1
            counts = tl.counts.detach().double()
            sums[0] += result.losses.double() * counts
            sums[1] += counts
            weight_sum += result.weights.double()
            if n_batches % refresh == 0:
                means = self._check_finite(sums, epoch)
                display.update(refresh, self.task_names, means)
                writer = self._writer_or_none()
                if writer is not None:
                    writer.add_scalar("train/total_loss", float(result.total), self.step)
        if n_batches == 0:
            raise DataError("The training data yielded no batches; check its size and batch_size.")
        means = self._check_finite(sums, epoch)
        display.update(n_batches % refresh, self.task_names, means)
        self._epoch_losses.append(tuple(means))
        self._last_aux = {k: float(v / n_batches) for k, v in aux_sums.items()}
        return means, (weight_sum / n_batches).tolist()

    def _after_step(self, batch: Batch, present: Tensor, state: TrainState) -> None:
        new_losses = None
        if self.weighting.requires_post_step_losses:  # e.g. FAMO: the losses after the update, same batch
            with torch.no_grad():
                preds, _ = split_aux(self.model(batch.inputs))
                new_losses = task_losses(self.tasks, preds, batch.targets, batch.masks).losses
        self.weighting.after_step(new_losses, present=present, state=state)

    def train_step(self, batch: Batch, *, epoch: int | None = None) -> StepOutput:
        """One optimisation step on ``batch`` (already on the trainer's device).

        Forward, masked task losses, :func:`mtlkit.backward` with the weighting / aggregator,
        optional gradient clipping, optimizer (and per-step scheduler) step, the weighting's
        post-step hook. ``fit`` calls this for every batch; call it yourself to drive training.
        """
        state = TrainState(
            step=self.step,
            epoch=self.epoch if epoch is None else epoch,
            epoch_losses=tuple(self._epoch_losses),
            generator=self.generator,
        )
        rep = None
        if self.gradient_target == "representation":
            rep = self._core.encode(batch.inputs)
            outputs = self._core.decode(rep, batch.inputs)
        elif self.uses_gradients and self._has_encoder:
            # same outputs; decode keeps the tasks' graphs apart, so per-task backward passes are cheaper
            outputs = self._core.decode(self._core.encode(batch.inputs), batch.inputs)
        elif self.uses_gradients:
            # bypass a DDP wrapper: its hooks expect one plain backward; gradients are averaged below
            outputs = self._core(batch.inputs)
        else:
            outputs = self.model(batch.inputs)
        if not isinstance(outputs, Mapping):
            raise ShapeError(f"The model must return a dict {{task: output}}; got {type(outputs).__name__}.")
        preds, aux = split_aux(outputs)
        tl = task_losses(self.tasks, preds, batch.targets, batch.masks)
        self.optimizer.zero_grad(set_to_none=True)
        self.weighting.zero_grad(set_to_none=True)
        shared, own = self._gradient_params() if self.uses_gradients else (None, None)
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
        )
        self._sync_gradients()
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        if self.scheduler is not None and self.scheduler_interval == "step":
            self.scheduler.step()
        self._after_step(batch, tl.present, state)
        self.step += 1
        return StepOutput(result, tl, aux)

    def _gradient_params(self) -> tuple[list[nn.Parameter], dict[str, list[nn.Parameter]]]:
        """The model's shared parameters and each task's own ones, resolved on first use."""
        if self._param_groups is None:
            core = self._core
            own = {t: list(core.task_parameters(t)) for t in self.task_names}
            self._param_groups = (list(core.shared_parameters()), own)
        return self._param_groups

    def _sync_gradients(self) -> None:
        """Under torch.distributed, average the gradients DDP does not: the loss weighting's own
        parameters always, and the model's when a gradient-level method wrote them (each rank
        aggregates its own batch's per-task gradients; the results are averaged, as DDP would)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        params = [p for p in self.weighting.parameters() if p.requires_grad]
        if self.uses_gradients or self._core is self.model:  # DDP did not average the model's gradients
            params += [p for p in self._core.parameters() if p.requires_grad]
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for p, g in zip(params, flat.split([g.numel() for g in grads])):
            p.grad = g.view_as(p).clone()

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
        if self.scheduler is not None and self.scheduler_interval == "epoch":
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value)
            else:
                self.scheduler.step()
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
        writer = self._writer_or_none()
        if writer is not None:
            e = record["epoch"]
            for t, v in record["train"].items():
                writer.add_scalar(f"train_loss/{t}", v, e)
            for t, v in record["weights"].items():
                writer.add_scalar(f"weight/{t}", v, e)
            for t, ms in record.get("val", {}).items():
                for m, v in ms.items():
                    writer.add_scalar(f"val/{t}/{m}", v, e)
            writer.add_scalar("lr", record["lr"][0], e)
        if self.log_epochs:
            train = " ".join(f"{t}={v:.4f}" for t, v in record["train"].items())
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
        validate = not isinstance(loader, TensorBatchLoader)
        for raw in loader:
            batch = self._prepare(raw, validate=validate)
            metrics.update(split_aux(self.model(batch.inputs))[0], batch.targets, batch.masks)
        return metrics.compute()

    def evaluate(self, data: DataLike, *, batch_size: int = 1024) -> dict[str, dict[str, float]]:
        """Per-task metrics ``{task: {metric: value}}`` on ``data`` (always includes ``loss``)."""
        return self._evaluate_loader(self._loader(data, batch_size, shuffle=False))

    @torch.no_grad()
    def predict(
        self, data: DataLike | Inputs, *, batch_size: int = 1024, activate: bool = True
    ) -> dict[str, Tensor]:
        """Predictions for every model output, on the CPU.

        Args:
            data: raw inputs (a tensor or a dict of tensors), a dataset or an iterable of batches.
            activate: apply each task's activation (probabilities for classification). Outputs
                that are not a task (e.g. ESMM's pCVR) are returned as the model gives them.
        """
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
            chunks = (as_batch(b).inputs for b in self._loader(data, batch_size, shuffle=False))
        by_output = {t.output_key: t for t in self.tasks}
        parts: dict[str, list[Tensor]] = {}
        for inputs in chunks:
            inputs = (
                inputs.to(self.device)
                if isinstance(inputs, Tensor)
                else {k: v.to(self.device) for k, v in inputs.items()}
            )
            preds, _ = split_aux(self.model(inputs))
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
            "model": self._core.state_dict(),  # without a DDP wrapper's "module." prefix
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
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
        try:
            self._core.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"The {source} does not fit this model: {str(exc).splitlines()[0]} "
                "Build the model with the same architecture and sizes as the run that wrote it."
            ) from None
        try:
            self.weighting.load_state_dict(state["weighting"])
            if self.aggregator is not None and state.get("aggregator") is not None:
                self.aggregator.load_state_dict(state["aggregator"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as exc:
            raise CheckpointError(
                f"The {source}'s optimizer or loss-weighting state does not fit this trainer ({exc}). "
                "Use the same optimizer and weighting as the run that wrote it."
            ) from None
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
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

    def save_checkpoint(
        self, path: str | os.PathLike[str], *, extra: Mapping[str, Any] | None = None
    ) -> Path:
        """Write :meth:`state_dict` (plus ``extra``) to ``path`` atomically."""
        payload = self.state_dict()
        if extra is not None:
            payload["extra"] = dict(extra)
        return save_checkpoint(payload, path)

    def load_checkpoint(self, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Restore a checkpoint written by :meth:`save_checkpoint`; returns its raw contents."""
        data = load_checkpoint(path)
        self.load_state_dict(data, source=f"checkpoint {str(path)!r}")
        return data


def _cpu_state(module: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _is_scheduler(obj: Any) -> bool:
    return isinstance(obj, (torch.optim.lr_scheduler.LRScheduler, torch.optim.lr_scheduler.ReduceLROnPlateau))
