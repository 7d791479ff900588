"""Train / validation / test splits with their task definitions (what dataset builders return)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.data.schema import InputSpec
from mtlkit.tasks import Task

__all__ = ["DataSplits", "SplitData"]

SplitData = MultiTaskDataset | Mapping[str, MultiTaskDataset]
"""One split: a dataset, or per-task datasets ``{task name: dataset holding that task's targets}``
(trained with a per-task schedule: ``mixed``, ``alternating`` or ``sampling``)."""


@dataclass(frozen=True)
class DataSplits:
    """The data of one experiment.

    Attributes:
        train: training data: one dataset, or per-task datasets ``{task: dataset}``.
        val: validation data (early stopping, model selection), or None.
        test: held-out data for the final metrics, or None. With per-task datasets each task
            is evaluated on its own dataset.
        tasks: the task definitions.
        input_spec: what one sample's inputs look like (see :mod:`mtlkit.data.schema`): a
            feature width, a tensor shape such as ``(C, H, W)``, or a tabular
            :class:`~mtlkit.data.schema.FeatureSchema`.
        info: facts about the data (source, label correlation...).
        preprocessor: the fitted transform from raw records to model inputs (e.g. a
            :class:`~mtlkit.data.preprocessing.TabularPreprocessor`), saved with trained models
            so that prediction reuses it; None when the data needs none.
    """

    train: SplitData
    val: SplitData | None
    test: SplitData | None
    tasks: tuple[Task, ...]
    input_spec: InputSpec | None
    info: dict[str, Any] = field(default_factory=dict)
    preprocessor: Any = None

    @property
    def input_dim(self) -> int | None:
        """The feature width for flat vector inputs, else None."""
        return self.input_spec if isinstance(self.input_spec, int) else None
