"""Evaluation and prediction over a dataset, batches or per-task datasets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.data.batch import Inputs, as_batch
from mtlkit.data.dataset import MultiTaskDataset, TensorBatchLoader
from mtlkit.distributed import world
from mtlkit.errors import UnknownComponentError
from mtlkit.metrics.collection import MultiTaskMetrics
from mtlkit.tasks import Task
from mtlkit.training.step import prepare_batch
from mtlkit.training.task_data import PerTaskLoader, batch_loader, is_per_task

__all__ = ["evaluate", "loader", "predict"]


def loader(data: Any, tasks: Sequence[Task], batch_size: int, *, shard: bool = True) -> Iterable[Any]:
    """Evaluation batches, in order: per-task datasets give each task's labelled rows with only its
    targets; under torch.distributed (and ``shard``) each rank reads its unpadded shard of a
    dataset (metrics are reduced over the ranks)."""
    if is_per_task(data):
        return PerTaskLoader(data, tasks, batch_size)
    num_replicas, rank = world() if shard else (1, 0)
    if hasattr(data, "eval_loader"):  # a stream (mtlkit.data.streaming.TabularStream)
        return data.eval_loader(tasks, batch_size, num_replicas=num_replicas, rank=rank)
    return batch_loader(
        data, tasks, batch_size, shuffle=False, seed=0, num_replicas=num_replicas, rank=rank, pad=False
    )


@torch.no_grad()
def evaluate(
    model: nn.Module, tasks: Sequence[Task], batches: Iterable[Any], device: torch.device
) -> dict[str, dict[str, float]]:
    """Per-task metrics ``{task: {metric: value}}`` of ``model`` on ``batches`` (see :func:`loader`)."""
    model.eval()
    metrics = MultiTaskMetrics(tasks)
    validate = not isinstance(batches, (TensorBatchLoader, PerTaskLoader))
    for raw in batches:
        batch = prepare_batch(raw, tasks, device, validate=validate)
        metrics.update(model(batch.inputs), batch.targets, batch.masks, batch.weights, batch.columns)
    result = metrics.compute()
    if isinstance(batches, PerTaskLoader):  # only the tasks that have a dataset
        result = {t: m for t, m in result.items() if t in batches.task_names}
    return result


@torch.no_grad()
def predict(
    model: nn.Module,
    tasks: Sequence[Task],
    data: Any,
    device: torch.device,
    *,
    batch_size: int = 1024,
    activate: bool = True,
) -> dict[str, Tensor]:
    """Predictions for every model output, on the CPU (see :meth:`mtlkit.Trainer.predict`)."""
    if is_per_task(data):
        by_name = {t.name: t for t in tasks}
        unknown = [k for k in data if k not in by_name]
        if unknown:
            raise UnknownComponentError("task", str(unknown[0]), tuple(by_name))
        out = {}
        for name, dataset in data.items():
            key = by_name[name].output_key
            out[key] = predict(model, tasks, dataset, device, batch_size=batch_size, activate=activate)[key]
        return out
    model.eval()
    chunks: Iterable[Inputs]
    if hasattr(data, "chunks"):  # a stream: its inputs in file order, never held whole
        chunks = (inputs for inputs, _ in data.chunks(batch_size))
    elif isinstance(data, (Tensor, Mapping)) and not isinstance(data, MultiTaskDataset):
        n = data.shape[0] if isinstance(data, Tensor) else len(next(iter(data.values())))
        chunks = (
            data[i : i + batch_size]
            if isinstance(data, Tensor)
            else {k: v[i : i + batch_size] for k, v in data.items()}
            for i in range(0, n, batch_size)
        )
    else:
        chunks = (as_batch(b).inputs for b in loader(data, tasks, batch_size, shard=False))
    by_output = {t.output_key: t for t in tasks}
    parts: dict[str, list[Tensor]] = {}
    for inputs in chunks:
        inputs = (
            inputs.to(device) if isinstance(inputs, Tensor) else {k: v.to(device) for k, v in inputs.items()}
        )
        preds = model(inputs)
        for key, value in preds.items():
            task = by_output.get(key)
            value = task.activate(value.float()) if (activate and task is not None) else value
            parts.setdefault(key, []).append(value.cpu())
    return {k: torch.cat(v) for k, v in parts.items()}
