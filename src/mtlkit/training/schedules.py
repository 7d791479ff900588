"""Training schedules: which task(s) each optimizer step trains, and which data its batch comes from.

A :class:`TaskSchedule` is composed into the :class:`~mtlkit.Trainer` (``schedule=``); it never
depends on the model or on the balancing method. Bound to the training data, a
:class:`~mtlkit.training.source.TrainSource` (:meth:`TaskSchedule.bind`), it yields, for every epoch, a sequence of
:class:`ScheduledStep` ``(batch, tasks)``; the trainer runs one optimizer step per item.

=============== ============================ ======================================================
name            one step trains              one epoch is
=============== ============================ ======================================================
``joint``       every task (one batch that   one pass over the dataset: ``ceil(N / B)`` steps
                carries every task's labels)
``mixed``       every task (one batch of     one pass over the pooled labelled samples:
                samples from every task's    ``ceil(Σ_k n_k / B)`` steps
                dataset, a per-sample flag)
``alternating`` one task (round robin, or    one pass over every task's labelled samples:
                a random order)              ``Σ_k ceil(n_k / B)`` steps, task ``k`` exactly
                                             ``ceil(n_k / B)`` of them
``sampling``    one task drawn i.i.d. with   ``steps_per_epoch`` steps (default
                ``p_k`` (uniform,            ``Σ_k ceil(n_k / B)``); task ``k`` gets
                proportional, temperature)   ``Binomial(steps, p_k)`` of them
=============== ============================ ======================================================

``n_k`` counts the rows labelled for task ``k`` (unlabelled rows never enter its batches) and
``B`` is the batch size. Random choices use generators seeded from ``(seed, epoch)`` (task
order, identical on every DDP rank) and ``(seed, task, pass)`` (each task's shuffle; each rank
reads its shard), never the global RNG; the sampling cursors and generator are checkpointed.

``EpochPlan.epoch(e, start)`` continues epoch ``e`` after its first ``start`` steps (a mid-epoch
checkpoint's position): the task order and draws are recomputed from ``(seed, e)``, the skipped
steps move the per-task positions and cursors without reading their batches, and a joint loader
with ``set_start(k)`` (:class:`~mtlkit.data.TensorBatchLoader`, the streaming loader) starts at
batch ``k`` without reading the earlier ones; other iterables are read and the batches discarded.
"""

from __future__ import annotations

import itertools
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, Literal, NamedTuple

import torch

from mtlkit.data.dataset import TensorBatchLoader
from mtlkit.distributed import mix_seed
from mtlkit.errors import CheckpointError, DataError, IncompatibleComponentsError
from mtlkit.registries import SCHEDULES
from mtlkit.tasks import Task
from mtlkit.training.source import PerTaskSources, TrainSource
from mtlkit.training.task_data import TaskStream, mixed_dataset

__all__ = [
    "Alternating",
    "EpochPlan",
    "Joint",
    "Mixed",
    "Sampling",
    "ScheduledStep",
    "TaskSchedule",
    "check_compatible",
    "compatibility_problems",
    "resolve_schedule",
    "skip_batches",
]

_ORDER_SALT = 0x5EED_0A17  # keeps the task-order generator apart from the data shuffles
_SAMPLING_SALT = 0x5EED_5A3D
_PER_TASK_WEIGHTINGS = "'equal', 'static', 'uncertainty', 'imtl_l' or 'dwa'"


class ScheduledStep(NamedTuple):
    """One optimizer step: its batch and the tasks it trains (``None``: every task)."""

    batch: Any
    tasks: tuple[str, ...] | None = None


class EpochPlan:
    """A schedule bound to training data: the steps of each epoch.

    ``epoch_fn(epoch, start)`` yields the steps of ``epoch`` from step ``start`` on (the steps
    before ``start`` are skipped without reading their batches where the data allows, and the
    schedule's state advances as if they had been taken). A function of the epoch alone
    (``skips=False``) is iterated from the start and the first ``start`` steps discarded.

    Attributes:
        steps_per_epoch: optimizer steps per epoch (``None`` for an iterable without length).
        validate: the batches come from a user iterable and must be checked one by one.
        sizes: ``{task: labelled samples}`` for per-task schedules, else ``None``.
    """

    def __init__(
        self,
        epoch_fn: Callable[..., Iterator[ScheduledStep]],
        steps_per_epoch: int | None,
        *,
        validate: bool = False,
        sizes: dict[str, int] | None = None,
        skips: bool = False,
    ) -> None:
        self._epoch_fn = epoch_fn
        self._skips = skips
        self.steps_per_epoch = steps_per_epoch
        self.validate = validate
        self.sizes = sizes

    def epoch(self, epoch: int, start: int = 0) -> Iterator[ScheduledStep]:
        """The steps of epoch ``epoch`` (0-based), from its step ``start`` (0-based) on.

        ``start > 0`` continues an epoch interrupted after ``start`` steps (exact mid-epoch
        resume): the remaining steps are those the uninterrupted epoch takes, in the same order,
        and the schedule's state (e.g. the sampling cursors) ends the epoch as it would have.
        The schedule's state must be the one it had at the start of the epoch.
        """
        if not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an int >= 0; got {start!r}.")
        if self._skips:
            return self._epoch_fn(epoch, start)
        return itertools.islice(self._epoch_fn(epoch), start, None)


def skip_batches(loader: Any, start: int) -> Iterator[Any]:
    """Iterate ``loader`` from its batch ``start``: through ``loader.set_start(start)`` when it
    has one (the data before it is not read), else by drawing and discarding the first batches."""
    if hasattr(loader, "set_start"):  # told even when 0: the epoch starts at its first batch
        loader.set_start(start)
        return iter(loader)
    return itertools.islice(iter(loader), start, None)


class TaskSchedule(ABC):
    """Decides, per step, which task(s) the step trains and where its batch comes from.

    Class attributes:
        name: the registry name (used in messages and checkpoints).
        one_task_per_step: every step trains a single task. Balancing methods that need every
            task in the same step (gradient aggregators, GradNorm, FAMO, RLW, GLS) are refused
            with such a schedule; per-task optimizers require one.

    A schedule instance keeps its sampling state (checkpointed through
    :meth:`state_dict`); give every trainer its own instance.
    """

    name: ClassVar[str] = "schedule"
    one_task_per_step: ClassVar[bool] = False

    @abstractmethod
    def bind(
        self,
        data: TrainSource,
        tasks: Sequence[Task],
        *,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> EpochPlan:
        """Validate ``data`` for this schedule and return its :class:`EpochPlan` (``data``: see
        :func:`~mtlkit.training.source.as_source` to wrap a dataset, batches or per-task datasets)."""

    def state_dict(self) -> dict[str, Any]:
        """The schedule's state (sampling cursors, generator), for checkpoints."""
        return {"name": self.name}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`state_dict` output; raises :class:`CheckpointError` for another schedule."""
        name = state.get("name", self.name)
        if name != self.name:
            raise CheckpointError(
                f"The checkpoint was written with schedule {name!r}, but this trainer uses {self.name!r}; "
                f"resume with schedule={name!r} (the run would not continue exactly otherwise)."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _per_task_streams(
    schedule: str,
    data: TrainSource,
    tasks: Sequence[Task],
    batch_size: int,
    seed: int,
    num_replicas: int,
    rank: int,
) -> dict[str, TaskStream]:
    return data.task_streams(
        tasks, schedule=schedule, batch_size=batch_size, seed=seed, num_replicas=num_replicas, rank=rank
    )


def _joint_plan(
    data: TrainSource, tasks: Sequence[Task], batch_size: int, seed: int, num_replicas: int = 1, rank: int = 0
) -> EpochPlan:
    loader = data.loader(tasks, batch_size, seed=seed, num_replicas=num_replicas, rank=rank)

    def epoch(e: int, start: int = 0) -> Iterator[ScheduledStep]:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(e)
        elif hasattr(getattr(loader, "sampler", None), "set_epoch"):
            loader.sampler.set_epoch(e)  # type: ignore[attr-defined]
        for raw in skip_batches(loader, start):
            yield ScheduledStep(raw)

    steps = len(loader) if hasattr(loader, "__len__") else None  # type: ignore[arg-type]
    # a dataset's loader, and a loader marked ``prevalidated`` (a stream's: its labels are checked
    # when encoded), need no per-batch target check
    checked = isinstance(loader, TensorBatchLoader) or getattr(loader, "prevalidated", False) is True
    return EpochPlan(epoch, steps, validate=not checked, skips=True)


class Joint(TaskSchedule):
    """Joint training: one batch per step carries every task's labels; the step trains all tasks.

    Missing labels are masked (a task without labels in a batch contributes nothing). An epoch
    is one pass over the data. Takes a :class:`MultiTaskDataset` (shuffled per epoch from
    ``(seed, epoch)``) or any iterable of batches, used as it is.
    """

    name = "joint"

    def bind(
        self,
        data: TrainSource,
        tasks: Sequence[Task],
        *,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> EpochPlan:
        if isinstance(data, PerTaskSources):
            data.loader(tasks, batch_size, seed=seed)  # refuses, saying which schedules it trains with
        if data.per_task_names is not None:
            raise DataError(
                f"Schedule 'joint' trains on one dataset whose batches carry every task's labels, but got "
                f"per-task datasets for {list(data.per_task_names)}. Use schedule 'mixed' (each batch pools "
                "samples of every task, flagged by task), 'alternating' or 'sampling' (one task's batch per step)."
            )
        return _joint_plan(data, tasks, batch_size, seed, num_replicas, rank)


class Mixed(TaskSchedule):
    """Mixed batches with a per-sample task flag (seed 000: MNIST + Fashion-MNIST routing).

    Per-task datasets are pooled into one dataset (:func:`~mtlkit.training.mixed_dataset`) in
    which each sample is labelled for its own task only: the label mask is the task flag, so
    each task's loss averages over its own samples of the batch. The pool is shuffled every
    epoch and an epoch is one pass over it (each labelled sample once); a task's expected share
    of a batch is ``n_k / Σ n_j``. Every step trains every task present in its batch, so any
    balancing method works. A single dataset is used as it is (it already is mixed when each
    sample carries one task's label). Needs the same inputs for every task.
    """

    name = "mixed"

    def bind(
        self,
        data: TrainSource,
        tasks: Sequence[Task],
        *,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> EpochPlan:
        if data.per_task_names is None:
            return _joint_plan(data, tasks, batch_size, seed, num_replicas, rank)
        pool = mixed_dataset(data.task_datasets(tasks, schedule=self.name), tasks)
        loader = TensorBatchLoader(
            pool, batch_size, shuffle=True, seed=seed, num_replicas=num_replicas, rank=rank
        )

        def epoch(e: int, start: int = 0) -> Iterator[ScheduledStep]:
            loader.set_epoch(e)
            for batch in skip_batches(loader, start):
                yield ScheduledStep(batch)

        return EpochPlan(epoch, len(loader), sizes=dict(pool.info["mixed_from"]), skips=True)


class Alternating(TaskSchedule):
    """Alternating training: each step trains one task on a batch of that task's data.

    An epoch is one pass over every task's labelled samples (each task's data shuffled per pass
    from ``(seed, task, epoch)``), so task ``k`` gets exactly ``ceil(n_k / B)`` steps and an
    epoch has ``Σ_k ceil(n_k / B)``. ``order="round_robin"`` cycles through the tasks that still
    have batches left in this epoch (A, B, A, B, ..., then the larger task alone);
    ``order="random"`` takes those same steps in a random order drawn from ``(seed, epoch)``.
    A jointly labelled dataset is split into per-task views (the rows labelled for each task).
    With per-task optimizers (``Trainer(per_task_optimizers=True)``) each step uses its task's
    optimizer, as in the seeds' ``Y1_op`` / ``Y2_op``.

    Args:
        order: ``"round_robin"`` or ``"random"``.
    """

    name = "alternating"
    one_task_per_step = True

    def __init__(self, order: Literal["round_robin", "random"] = "round_robin") -> None:
        if order not in ("round_robin", "random"):
            raise ValueError(f"alternating order must be 'round_robin' or 'random'; got {order!r}.")
        self.order = order

    def task_order(self, counts: Sequence[int], epoch: int, seed: int) -> list[int]:
        """Task index of every step of ``epoch``, given each task's number of batches."""
        if self.order == "round_robin":
            return [k for r in range(max(counts, default=0)) for k, c in enumerate(counts) if r < c]
        steps = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.long))
        g = torch.Generator().manual_seed(mix_seed(seed, epoch, _ORDER_SALT))
        return steps[torch.randperm(steps.numel(), generator=g)].tolist()

    def bind(
        self,
        data: TrainSource,
        tasks: Sequence[Task],
        *,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> EpochPlan:
        streams = _per_task_streams(self.name, data, tasks, batch_size, seed, num_replicas, rank)
        names = list(streams)
        counts = [len(s) for s in streams.values()]

        def epoch(e: int, start: int = 0) -> Iterator[ScheduledStep]:
            position = dict.fromkeys(names, 0)
            for step, k in enumerate(self.task_order(counts, e, seed)):
                name = names[k]
                i = position[name]
                position[name] = i + 1
                if step >= start:  # the skipped steps of a resumed epoch only move the positions
                    yield ScheduledStep(streams[name].batch(e, i), (name,))

        return EpochPlan(epoch, sum(counts), sizes={n: s.num_samples for n, s in streams.items()}, skips=True)

    def __repr__(self) -> str:
        return f"Alternating(order={self.order!r})"


class Sampling(TaskSchedule):
    """Task sampling: each step trains one task drawn at random, on the next batch of its data.

    Task ``k`` is drawn i.i.d. with probability ``p_k``:

    - ``"uniform"``: ``p_k = 1 / K`` whatever the dataset sizes (seed 004: "tasks are sampled
      uniformly, regardless of data quantities");
    - ``"proportional"``: ``p_k = n_k / Σ_j n_j``;
    - ``"temperature"``: ``p_k ∝ n_k^(1/T)`` (``T = 1``: proportional; ``T → ∞``: uniform).

    Each task reads its data as an endless stream of shuffled passes (pass ``p`` shuffled from
    ``(seed, task, p)``), continuing across epochs where it stopped, so a small dataset is
    repeated and a large one is eventually covered. An epoch is ``steps_per_epoch`` steps
    (default ``Σ_k ceil(n_k / B)``, the length of an alternating epoch). The draws of epoch ``e``
    come from a generator seeded with ``(seed, e)``, identical on every DDP rank.

    Args:
        strategy: ``"uniform"``, ``"proportional"`` or ``"temperature"``.
        temperature: ``T > 0``, required by (and only for) ``"temperature"``.
        steps_per_epoch: optimizer steps per epoch (``None``: ``Σ_k ceil(n_k / B)``).
    """

    name = "sampling"
    one_task_per_step = True

    def __init__(
        self,
        strategy: Literal["uniform", "proportional", "temperature"] = "uniform",
        *,
        temperature: float | None = None,
        steps_per_epoch: int | None = None,
    ) -> None:
        if strategy not in ("uniform", "proportional", "temperature"):
            raise ValueError(
                f"sampling strategy must be 'uniform', 'proportional' or 'temperature'; got {strategy!r}."
            )
        if strategy == "temperature":
            if temperature is None:
                raise ValueError(
                    "sampling strategy 'temperature' needs temperature=T > 0 (p_k ∝ n_k^(1/T); T=1 is "
                    "proportional, larger T is closer to uniform), e.g. temperature=2."
                )
            if not (math.isfinite(temperature) and temperature > 0):
                raise ValueError(f"sampling temperature must be finite and > 0; got {temperature!r}.")
        elif temperature is not None:
            raise ValueError(
                f"temperature only applies to strategy 'temperature' (got strategy {strategy!r}); remove it "
                "or set strategy='temperature'."
            )
        if steps_per_epoch is not None and (not isinstance(steps_per_epoch, int) or steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be an int >= 1 or None; got {steps_per_epoch!r}.")
        self.strategy = strategy
        self.temperature = temperature
        self.steps_per_epoch = steps_per_epoch
        self._cursors: dict[str, list[int]] = {}  # task -> [pass, batch index]
        self._generator = torch.Generator()

    def probabilities(self, sizes: Sequence[int]) -> list[float]:
        """``p_k`` for datasets of ``sizes`` samples."""
        if not sizes or any(n < 1 for n in sizes):
            raise ValueError(f"sampling needs at least one task and sizes >= 1; got {list(sizes)}.")
        if self.strategy == "uniform":
            return [1.0 / len(sizes)] * len(sizes)
        power = 1.0 if self.strategy == "proportional" else 1.0 / float(self.temperature)  # type: ignore[arg-type]
        logs = [power * math.log(n) for n in sizes]
        top = max(logs)
        w = [math.exp(v - top) for v in logs]
        total = sum(w)
        return [x / total for x in w]

    def bind(
        self,
        data: TrainSource,
        tasks: Sequence[Task],
        *,
        batch_size: int,
        seed: int = 0,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> EpochPlan:
        streams = _per_task_streams(self.name, data, tasks, batch_size, seed, num_replicas, rank)
        names = list(streams)
        sizes = [s.num_samples for s in streams.values()]
        probs = torch.tensor(self.probabilities(sizes), dtype=torch.float64)
        steps = self.steps_per_epoch or sum(len(s) for s in streams.values())
        for name in names:
            self._cursors.setdefault(name, [0, 0])

        def epoch(e: int, start: int = 0) -> Iterator[ScheduledStep]:
            self._generator.manual_seed(mix_seed(seed, e, _SAMPLING_SALT))
            draws = torch.multinomial(probs, steps, replacement=True, generator=self._generator)
            for step, k in enumerate(draws.tolist()):
                name = names[k]
                stream, cursor = streams[name], self._cursors[name]
                if cursor[1] >= len(stream):  # e.g. resumed with other data
                    cursor[0], cursor[1] = cursor[0] + 1, 0
                # the skipped steps of a resumed epoch only move the cursors
                batch = stream.batch(cursor[0], cursor[1]) if step >= start else None
                cursor[1] += 1
                if cursor[1] == len(stream):
                    cursor[0], cursor[1] = cursor[0] + 1, 0
                if batch is not None:
                    yield ScheduledStep(batch, (name,))

        return EpochPlan(epoch, steps, sizes=dict(zip(names, sizes)), skips=True)

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cursors": {k: list(v) for k, v in self._cursors.items()},
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._cursors = {str(k): [int(v[0]), int(v[1])] for k, v in (state.get("cursors") or {}).items()}
        if state.get("generator") is not None:
            self._generator.set_state(state["generator"])

    def __repr__(self) -> str:
        extra = f", temperature={self.temperature}" if self.temperature is not None else ""
        return f"Sampling(strategy={self.strategy!r}{extra}, steps_per_epoch={self.steps_per_epoch})"


# ---------------------------------------------------------------------------------------------- refusals
def _name(obj: Any) -> str:
    return obj.__name__ if isinstance(obj, type) else type(obj).__name__


def compatibility_problems(
    schedule: TaskSchedule | type[TaskSchedule],
    *,
    weighting: Any = None,
    aggregator: Any = None,
    per_task_optimizers: bool = False,
) -> list[str]:
    """Why ``schedule`` cannot be combined with the other components (empty when it can).

    ``weighting`` and ``aggregator`` may be instances or classes.
    """
    problems = []
    sname = schedule.name
    if (
        schedule.one_task_per_step
        and aggregator is not None
        and getattr(aggregator, "requires_all_tasks", True)
    ):
        problems.append(
            f"Gradient aggregator {_name(aggregator)} combines the gradients of all tasks within one step, "
            f"but schedule {sname!r} trains one task per step, so each step has a single gradient and "
            f"nothing to combine. Use schedule 'joint' or 'mixed' (every task in every step) with an "
            f"aggregator, or keep {sname!r} with a loss weighting such as {_PER_TASK_WEIGHTINGS}."
        )
    if (
        schedule.one_task_per_step
        and weighting is not None
        and (
            getattr(weighting, "requires_all_tasks", False) or getattr(weighting, "requires_gradients", False)
        )
    ):
        why = (
            "it compares every task's gradient in the same step"
            if getattr(weighting, "requires_gradients", False)
            else "with a single task its weight is always 1, so it would silently become equal weighting"
        )
        problems.append(
            f"Loss weighting {_name(weighting)} weighs the tasks against each other within one step ({why}), "
            f"but schedule {sname!r} trains one task per step. Use schedule 'joint' or 'mixed' with "
            f"{_name(weighting)}, or with {sname!r} a weighting that treats tasks separately: "
            f"{_PER_TASK_WEIGHTINGS}."
        )
    if per_task_optimizers and not schedule.one_task_per_step:
        problems.append(
            f"Per-task optimizers step the shared parameters once for each task's own loss (the seeds' "
            f"alternating training), but schedule {sname!r} trains every task in every step. Use schedule "
            f"'alternating' or 'sampling' with per_task_optimizers, or one optimizer with {sname!r}."
        )
    return problems


def check_compatible(
    schedule: TaskSchedule,
    *,
    weighting: Any = None,
    aggregator: Any = None,
    per_task_optimizers: bool = False,
) -> None:
    """Raise :class:`IncompatibleComponentsError` (saying why and what to use) for a refused combination."""
    problems = compatibility_problems(
        schedule, weighting=weighting, aggregator=aggregator, per_task_optimizers=per_task_optimizers
    )
    if problems:
        raise IncompatibleComponentsError(problems[0])


def resolve_schedule(schedule: TaskSchedule | str | None) -> TaskSchedule:
    """A schedule instance from an instance, a registry name (default parameters) or ``None`` (joint)."""
    if schedule is None:
        return Joint()
    if isinstance(schedule, str):
        built = SCHEDULES.build(schedule)
        assert isinstance(built, TaskSchedule)
        return built
    if not isinstance(schedule, TaskSchedule):
        raise TypeError(
            f"schedule must be a TaskSchedule or a name ({', '.join(SCHEDULES.names())}); got "
            f"{type(schedule).__name__}."
        )
    return schedule


# ---------------------------------------------------------------------------------------------- registry
@SCHEDULES.register("joint")
def joint() -> Joint:
    """Joint training: every batch carries every task's labels (missing ones masked)."""
    return Joint()


@SCHEDULES.register("mixed")
def mixed() -> Mixed:
    """Mixed batches pooling per-task datasets, with a per-sample task flag (seed 000)."""
    return Mixed()


@SCHEDULES.register("alternating", aliases=("alternate",))
def alternating(*, order: Literal["round_robin", "random"] = "round_robin") -> Alternating:
    """Alternating training: one task per step, round robin or random order, one pass per epoch."""
    return Alternating(order)


@SCHEDULES.register("sampling", aliases=("task_sampling",))
def sampling(
    *,
    strategy: Literal["uniform", "proportional", "temperature"] = "uniform",
    temperature: float | None = None,
    steps_per_epoch: int | None = None,
) -> Sampling:
    """Task sampling: one task per step drawn uniformly, by size or with a temperature."""
    return Sampling(strategy, temperature=temperature, steps_per_epoch=steps_per_epoch)
