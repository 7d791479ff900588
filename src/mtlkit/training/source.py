"""Training data as the schedules see it: one source type, made once where ``fit`` starts.

``fit`` accepts a :class:`~mtlkit.data.MultiTaskDataset`, any iterable of batches, or per-task
datasets ``{task: dataset}``; :func:`as_source` wraps each in a :class:`DataSource`, and the
schedules (:mod:`mtlkit.training.schedules`) take nothing else. A new kind of training data
(e.g. a stream too large for memory) implements :class:`TrainSource` and every schedule that
can use it works unchanged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from typing import Any

from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.errors import DataError
from mtlkit.tasks import Task
from mtlkit.training.task_data import PerTaskData, batch_loader, is_per_task, per_task_sources

__all__ = ["DataSource", "TrainSource", "as_source"]


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


def as_source(
    data: TrainSource | MultiTaskDataset | PerTaskData | Iterable[Any], *, exclude: Iterable[str] = ()
) -> TrainSource:
    """``data`` as a :class:`TrainSource`, leaving out the per-task datasets of the tasks in
    ``exclude`` (evaluation-only tasks: they never get a training batch)."""
    if isinstance(data, TrainSource):
        return data
    drop = set(exclude)
    if drop and is_per_task(data):
        data = {k: v for k, v in data.items() if k not in drop}  # type: ignore[union-attr]
    return DataSource(data)
