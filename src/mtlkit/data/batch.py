"""A mini-batch: inputs, per-task targets and optional per-task label masks and sample weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["Batch", "Inputs", "as_batch", "check_weights", "collate", "num_rows"]

Inputs = Tensor | dict[str, Tensor]
"""Model inputs: one feature tensor, or named tensors (e.g. categorical and numeric columns)."""


@dataclass(slots=True)
class Batch:
    """One mini-batch.

    Attributes:
        inputs: a tensor ``(N, ...)`` or a dict of tensors that all have ``N`` rows.
        targets: ``{target key: tensor}``; a task absent from the dict has no labels here.
        masks: optional ``{task: bool tensor}``; False marks a missing label.
        weights: optional per-row sample weights ``{task: (N,) float tensor}`` (>= 0); a task
            without an entry weighs every row 1. One weight column for all tasks is the same
            tensor under every task name.
        columns: optional extra per-row columns that metrics read, not the model:
            ``{column name: (N,) tensor}`` (e.g. the int64 user ids of a grouped AUC).
    """

    inputs: Inputs
    targets: dict[str, Tensor]
    masks: dict[str, Tensor] | None = field(default=None)
    weights: dict[str, Tensor] | None = field(default=None)
    columns: dict[str, Tensor] | None = field(default=None)

    def __len__(self) -> int:
        return num_rows(self.inputs)

    def to(self, device: torch.device | str, *, non_blocking: bool = False) -> Batch:
        """A copy of the batch on ``device`` (no copy for tensors already there)."""

        def mv(t: Tensor) -> Tensor:
            return t.to(device, non_blocking=non_blocking)

        inputs = (
            mv(self.inputs) if isinstance(self.inputs, Tensor) else {k: mv(v) for k, v in self.inputs.items()}
        )
        masks = None if self.masks is None else {k: mv(v) for k, v in self.masks.items()}
        weights = None if self.weights is None else _moved(self.weights, mv)
        columns = None if self.columns is None else {k: mv(v) for k, v in self.columns.items()}
        return Batch(inputs, {k: mv(v) for k, v in self.targets.items()}, masks, weights, columns)


def _moved(weights: Mapping[str, Tensor], mv: Any) -> dict[str, Tensor]:
    """``mv`` of every weight tensor, once per distinct tensor (a shared column stays shared)."""
    done: dict[int, Tensor] = {}
    return {k: done.setdefault(id(v), mv(v)) for k, v in weights.items()}


def check_weights(weights: Mapping[str, Tensor], rows: int, *, where: str = "data") -> None:
    """Sample weights: one finite, non-negative number per row; raises :class:`DataError` with the fix."""
    from mtlkit.errors import DataError

    for task, w in weights.items():
        if not isinstance(w, Tensor) or not w.is_floating_point():
            raise DataError(
                f"Sample weights of task {task!r} in {where} must be a floating tensor; got "
                f"{getattr(w, 'dtype', type(w).__name__)}."
            )
        if w.numel() != rows or (w.ndim > 1 and w.shape[0] != rows):
            raise DataError(
                f"Sample weights of task {task!r} in {where} have shape {tuple(w.shape)}; expected one weight "
                f"per row, shape ({rows},)."
            )
        bad = ~torch.isfinite(w) | (w < 0)
        if bad.any():
            i = int(bad.reshape(-1).nonzero()[0])
            raise DataError(
                f"Sample weights of task {task!r} in {where}: row {i} has the weight {w.reshape(-1)[i].item()!r}; "
                "weights must be finite and >= 0 (0 leaves the row out). Fill or drop the row."
            )


def num_rows(inputs: Inputs) -> int:
    """The number of rows (samples) of ``inputs``."""
    if isinstance(inputs, Tensor):
        return int(inputs.shape[0])
    return int(next(iter(inputs.values())).shape[0]) if inputs else 0


def as_batch(obj: Any) -> Batch:
    """Accept a :class:`Batch`, ``(inputs, targets)``, ``(inputs, targets, masks)`` or a dict with
    ``inputs``/``targets``/``masks``/``weights``/``columns`` keys, as yielded by any iterable the user passes to the trainer."""
    if isinstance(obj, Batch):
        return obj
    if isinstance(obj, Mapping) and "inputs" in obj and "targets" in obj:
        return Batch(
            obj["inputs"],
            dict(obj["targets"]),
            dict(obj["masks"]) if obj.get("masks") else None,
            dict(obj["weights"]) if obj.get("weights") else None,
            dict(obj["columns"]) if obj.get("columns") else None,
        )
    if isinstance(obj, (tuple, list)) and len(obj) in (2, 3) and isinstance(obj[1], Mapping):
        masks = dict(obj[2]) if len(obj) == 3 and obj[2] is not None else None
        return Batch(obj[0], dict(obj[1]), masks)
    raise TypeError(
        "A training batch must be an mtlkit Batch, a tuple (inputs, {task: targets}[, {task: mask}]) or a "
        f"dict with 'inputs' and 'targets'; got {type(obj).__name__}. With torch's DataLoader, pass "
        "collate_fn=mtlkit.data.collate."
    )


def collate(items: Sequence[Any] | Batch) -> Batch:
    """``collate_fn`` for ``torch.utils.data.DataLoader`` over a :class:`MultiTaskDataset`.

    With a dataset that defines ``__getitems__`` (as MultiTaskDataset does), the loader hands over
    an already-gathered :class:`Batch`, which is returned unchanged (no per-sample Python).
    """
    if isinstance(items, Batch):
        return items
    batches = [as_batch(i) for i in items]
    first = batches[0]

    def stack(xs: list[Tensor]) -> Tensor:
        return torch.stack(xs)

    if isinstance(first.inputs, Tensor):
        inputs: Inputs = stack([b.inputs for b in batches])  # type: ignore[misc]
    else:
        inputs = {k: stack([b.inputs[k] for b in batches]) for k in first.inputs}  # type: ignore[index]
    targets = {k: stack([b.targets[k] for b in batches]) for k in first.targets}
    masks = None if first.masks is None else {k: stack([b.masks[k] for b in batches]) for k in first.masks}  # type: ignore[index]
    weights = (
        None if first.weights is None else {k: stack([b.weights[k] for b in batches]) for k in first.weights}  # type: ignore[index]
    )
    columns = (
        None if first.columns is None else {k: stack([b.columns[k] for b in batches]) for k in first.columns}  # type: ignore[index]
    )
    return Batch(inputs, targets, masks, weights, columns)
