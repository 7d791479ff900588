"""Train / validation / test splits with their task definitions (what dataset builders return)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.tasks import Task

__all__ = ["DataSplits"]


@dataclass(frozen=True)
class DataSplits:
    """The data of one experiment.

    Attributes:
        train: training data.
        val: validation data (early stopping, model selection), or None.
        test: held-out data for the final metrics, or None.
        tasks: the task definitions.
        input_dim: width of the feature vector (for tensor inputs), or None for named inputs.
        info: facts about the data (source, label correlation...).
    """

    train: MultiTaskDataset
    val: MultiTaskDataset | None
    test: MultiTaskDataset | None
    tasks: tuple[Task, ...]
    input_dim: int | None
    info: dict[str, Any] = field(default_factory=dict)
