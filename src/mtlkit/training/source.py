"""Training data as the schedules see it: one source type, made once where ``fit`` starts.

``fit`` accepts a :class:`~mtlkit.data.MultiTaskDataset`, any iterable of batches, or per-task
datasets ``{task: dataset}``; :func:`as_source` wraps each in a :class:`DataSource`, and the
schedules (:mod:`mtlkit.training.schedules`) take nothing else. A new kind of training data
(e.g. a stream too large for memory) implements :class:`TrainSource` and every schedule that
can use it works unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.distributed import mix_seed
from mtlkit.errors import DataError, did_you_mean
from mtlkit.tasks import Task
from mtlkit.training.task_data import (
    LoaderTaskStream,
    PerTaskData,
    TaskStream,
    batch_loader,
    is_per_task,
    per_task_sources,
)

__all__ = ["DataSource", "PerTaskSources", "TrainSource", "as_source"]


class TrainSource(ABC):
    """Where a fit's training batches come from.

    Two shapes exist. *Joint* data gives batches that may carry any task's labels (one dataset,
    or an iterable of batches): :meth:`loader`. *Per-task* data gives each task its own labelled
    rows (:meth:`task_datasets`); one jointly labelled dataset can give both. A schedule asks for
    the shape it trains on and the source refuses, saying why, when it cannot give it.

    Attributes:
        per_task_names: the tasks of per-task data (``None`` for joint data).
    """

    per_task_names: tuple[str, ...] | None = None

    @abstractmethod
    def loader(
        self, tasks: Sequence[Task], batch_size: int, *, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> Iterable[Any]:
        """Joint training batches (shuffled per epoch from ``(seed, epoch)`` when the source can
        shuffle: a loader with ``set_epoch``), this rank's shard under torch.distributed."""

    @abstractmethod
    def task_datasets(self, tasks: Sequence[Task], *, schedule: str) -> dict[str, MultiTaskDataset]:
        """``{task: dataset holding its labels}`` in task order, every task present, validated;
        raises :class:`~mtlkit.errors.DataError` naming ``schedule`` when the data cannot give it."""

    def task_streams(
        self,
        tasks: Sequence[Task],
        *,
        schedule: str,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> dict[str, TaskStream | LoaderTaskStream]:
        """``{task: its batches, pass by pass}`` for the one-task-per-step schedules: by default a
        :class:`~mtlkit.training.task_data.TaskStream` over each of :meth:`task_datasets`."""
        sources = self.task_datasets(tasks, schedule=schedule)
        index = {t.name: i for i, t in enumerate(tasks)}
        by_name = {t.name: t for t in tasks}
        return {
            name: TaskStream(
                ds,
                by_name[name],
                batch_size=batch_size,
                seed=seed,
                salt=index[name],
                num_replicas=num_replicas,
                rank=rank,
            )
            for name, ds in sources.items()
        }


class DataSource(TrainSource):
    """A :class:`TrainSource` over in-memory data: a dataset, an iterable of batches, or per-task datasets."""

    def __init__(self, data: MultiTaskDataset | PerTaskData | Iterable[Any]) -> None:
        self.data = data
        self.per_task_names = tuple(data) if is_per_task(data) else None  # type: ignore[arg-type]

    def loader(
        self, tasks: Sequence[Task], batch_size: int, *, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> Iterable[Any]:
        return batch_loader(
            self.data,  # type: ignore[arg-type]
            tasks,
            batch_size,
            shuffle=True,
            seed=seed,
            num_replicas=num_replicas,
            rank=rank,
        )

    def task_datasets(self, tasks: Sequence[Task], *, schedule: str) -> dict[str, MultiTaskDataset]:
        if not isinstance(self.data, MultiTaskDataset) and self.per_task_names is None:
            raise DataError(
                f"Schedule {schedule!r} draws each task's batches from that task's labelled samples, so it "
                "needs a MultiTaskDataset or a dict {task name: MultiTaskDataset} of per-task datasets; got "
                f"{type(self.data).__name__}. Use schedule 'joint' for an iterable of batches."
            )
        return per_task_sources(self.data, tasks)  # type: ignore[arg-type]


class PerTaskSources(TrainSource):
    """Per-task training sources ``{task: TrainSource}``, e.g. each task's own
    :class:`~mtlkit.data.streaming.TabularStream` (data larger than memory), for the
    one-task-per-step schedules ('alternating', 'sampling').

    A task's pass ``p`` is its source's joint loader (seed mixed with the task's index) at epoch
    ``p``, its batches restricted to that task's labels; rows of the source without the task's
    label stay in the batches and are masked out. A task's size (``n_k`` of the schedules) is its
    source's row count. Mid-epoch resume starts each task's loader at its batch
    (``set_start``) without reading the batches before it.
    """

    def __init__(self, sources: Mapping[str, TrainSource]) -> None:
        self.sources = dict(sources)
        self.per_task_names = tuple(self.sources)

    def loader(
        self, tasks: Sequence[Task], batch_size: int, *, seed: int, num_replicas: int = 1, rank: int = 0
    ) -> Iterable[Any]:
        raise DataError(self._only_per_task("joint"))

    def task_datasets(self, tasks: Sequence[Task], *, schedule: str) -> dict[str, MultiTaskDataset]:
        raise DataError(self._only_per_task(schedule))

    def _only_per_task(self, schedule: str) -> str:
        return (
            f"Schedule {schedule!r} needs one dataset (or one stream) for every task, but got a source per task "
            f"for {list(self.sources)}, which trains with schedule 'alternating' or 'sampling' (one task's batch "
            "per step); for 'joint' or 'mixed' give one stream or one dataset holding every task's labels."
        )

    def task_streams(
        self,
        tasks: Sequence[Task],
        *,
        schedule: str,
        batch_size: int,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> dict[str, TaskStream | LoaderTaskStream]:
        by_name = {t.name: t for t in tasks}
        for key in self.sources:
            if key not in by_name:
                raise DataError(
                    f"The per-task sources name an unknown task {key!r}.{did_you_mean(str(key), by_name)} "
                    f"Tasks: {', '.join(by_name)}."
                )
        missing = [n for n in by_name if n not in self.sources]
        if missing:
            raise DataError(
                f"Every task needs a source, but the per-task sources have none for {missing}; "
                f"got sources for {list(self.sources)}."
            )
        out: dict[str, TaskStream | LoaderTaskStream] = {}
        for i, task in enumerate(tasks):
            src = self.sources[task.name]
            loader = src.loader(
                [task], batch_size, seed=mix_seed(seed, i), num_replicas=num_replicas, rank=rank
            )
            if not hasattr(src, "__len__"):
                raise TypeError(
                    f"The source of task {task.name!r} ({type(src).__name__}) has no length (its rows), which the "
                    "per-task schedules need; give a TabularStream."
                )
            out[task.name] = LoaderTaskStream(loader, task, num_samples=len(src))  # type: ignore[arg-type]
        return out


def _is_per_task_sources(data: Any) -> bool:
    return isinstance(data, Mapping) and bool(data) and all(isinstance(v, TrainSource) for v in data.values())


def as_source(
    data: TrainSource | MultiTaskDataset | PerTaskData | Mapping[str, TrainSource] | Iterable[Any],
    *,
    exclude: Iterable[str] = (),
) -> TrainSource:
    """``data`` as a :class:`TrainSource`, leaving out the per-task datasets (or sources) of the
    tasks in ``exclude`` (evaluation-only tasks: they never get a training batch)."""
    if isinstance(data, TrainSource):
        return data
    drop = set(exclude)
    if _is_per_task_sources(data):
        return PerTaskSources({k: v for k, v in data.items() if k not in drop})  # type: ignore[union-attr]
    if drop and is_per_task(data):
        data = {k: v for k, v in data.items() if k not in drop}  # type: ignore[union-attr]
    return DataSource(data)
