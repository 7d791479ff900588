"""Tasks are data: a name, a kind, a loss and metrics. No subclassing.

A :class:`Task` knows how to turn a model output and a target (with missing labels)
into a masked loss, how to turn logits into predictions, and which metrics to compute.

Missing labels: NaN targets (binary, multilabel, regression), ``-1`` class indices
(multiclass), or an explicit boolean mask. Unlabelled samples contribute nothing to the
loss or the metrics; a batch without any label for a task yields a loss of exactly 0 with
a zero gradient (never NaN).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from mtlkit.errors import DataError, ShapeError
from mtlkit.task_loss import NamedLoss, named_loss
from mtlkit.transforms import TargetTransform, target_transform

__all__ = ["LossFn", "MetricFactory", "Task", "TaskKind", "task_names"]

LossFn = Callable[[Tensor, Tensor], Tensor]
"""A per-element loss ``loss(pred, target) -> Tensor`` (``reduction='none'``)."""

MetricFactory = Callable[[], Metric]
"""A zero-argument callable that returns a fresh torchmetrics ``Metric``."""

_EPS = 1e-7
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


class TaskKind(StrEnum):
    """What a task predicts; decides the default loss, metrics and activation."""

    BINARY = "binary"
    MULTICLASS = "multiclass"
    MULTILABEL = "multilabel"
    REGRESSION = "regression"

    @property
    def is_classification(self) -> bool:
        return self is not TaskKind.REGRESSION


@dataclass(frozen=True, slots=True, kw_only=True)
class Task:
    """One prediction task of a multi-task model.

    Args:
        name: unique task name; also the default model-output and target key.
        kind: ``"binary"``, ``"multiclass"``, ``"multilabel"`` or ``"regression"``.
        num_classes: number of classes (multiclass, >= 2) or labels (multilabel, >= 1).
        num_outputs: output dimension of a regression task (default 1).
        loss: a built-in loss by name (``"focal"``) or ``{"name": "huber", "delta": 1.0}`` (see
            :mod:`mtlkit.task_loss`: bce, focal, cross_entropy, mse, huber, poisson, tweedie), or
            a per-element loss ``loss(pred, target)`` with ``reduction='none'``
            semantics, returning shape ``(N,)`` or the target's shape. Defaults: BCE with
            logits (binary), cross-entropy with ``label_smoothing`` (multiclass), per-label
            BCE with logits (multilabel), squared error (regression). Missing labels are
            masked out by mtlkit before averaging, so custom losses need no masking.
            ``poisson``/``tweedie`` use a log link: the model outputs the log of the mean and
            :meth:`activate` returns ``exp`` of it.
        label_smoothing: label smoothing of the default multiclass cross-entropy, in [0, 1).
        metrics: ``{name: factory}`` of torchmetrics metrics; ``None`` uses the defaults of the
            kind (binary: auc, accuracy, logloss; multiclass: accuracy, f1_macro; multilabel:
            f1_micro, f1_macro, map; regression: mse, mae). A ``loss`` entry is always reported.
        output: key of this task in the model's output dict (default: ``name``).
        target: key of this task in a batch's targets (default: ``name``).
        logits: binary and multilabel tasks: the model outputs logits (default). ``False``
            means it outputs probabilities (e.g. ESMM's ``pCTCVR = pCTR * pCVR``): the default
            loss is then BCE on probabilities clamped to ``[1e-7, 1 - 1e-7]`` and no sigmoid is
            applied at prediction.
        train: the task's loss is part of the training objective (default). ``False`` makes an
            evaluation-only task: it gets metrics (and predictions) but never a loss, so it counts
            as a task without labels in every batch (e.g. ESMM's pCVR, which is learnt only through
            ``pCTCVR`` but evaluated on its own).
        pos_weight: binary/multilabel BCE: the weight of the positive labels (as torch's
            ``BCEWithLogitsLoss(pos_weight=...)``; the mean stays over the labelled rows).
        class_weights: multiclass cross-entropy: one weight per class (as torch's
            ``CrossEntropyLoss(weight=...)``: the mean is over the class weights of the labelled rows).
        transform: regression: ``"log1p"`` or a fitted ``standardise``
            (:class:`~mtlkit.transforms.TargetTransform`): the loss sees the transformed labels,
            :meth:`activate` inverts the model's output, so predictions and metrics are on the
            labels' scale.

    Sample weights: :meth:`compute_loss` takes per-row weights ``w`` and returns the weighted
    mean ``Σ w·l / Σ w`` over the labelled elements, with ``Σ w`` as its count (the label count
    when there are no weights), which the distributed reductions weigh the ranks' losses by.
        auxiliary: an auxiliary task, trained (with its weight) only to help the main tasks: it is
            left out of Δm, of the default early-stopping monitor's ``mean/<metric>`` (the mean
            over main tasks) and of the main comparison table (reported in a separate block).

    Example:
        >>> Task(name="ctr", kind="binary").output_dim
        1
    """

    name: str
    kind: TaskKind | str
    num_classes: int | None = None
    num_outputs: int = 1
    loss: LossFn | NamedLoss | str | Mapping[str, object] | None = None
    label_smoothing: float = 0.0
    metrics: Mapping[str, MetricFactory] | None = None
    output: str | None = None
    target: str | None = None
    logits: bool = True
    train: bool = True
    pos_weight: float | None = None
    class_weights: tuple[float, ...] | None = None
    transform: TargetTransform | str | Mapping[str, object] | None = None
    auxiliary: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"Task name must be a non-empty identifier (letters, digits, '_' or '-'); got {self.name!r}."
            )
        try:
            kind = TaskKind(self.kind)
        except ValueError:
            allowed = ", ".join(repr(k.value) for k in TaskKind)
            raise ValueError(
                f"Task {self.name!r}: kind must be one of {allowed}; got {self.kind!r}."
            ) from None
        object.__setattr__(self, "kind", kind)
        if kind in (TaskKind.MULTICLASS, TaskKind.MULTILABEL):
            least = 2 if kind is TaskKind.MULTICLASS else 1
            if (
                not isinstance(self.num_classes, int)
                or isinstance(self.num_classes, bool)
                or (self.num_classes < least)
            ):
                raise ValueError(
                    f"Task {self.name!r} ({kind.value}) needs num_classes, an int >= {least}; "
                    f"got {self.num_classes!r}."
                )
        elif self.num_classes is not None:
            raise ValueError(
                f"Task {self.name!r} ({kind.value}) takes no num_classes; got {self.num_classes!r}. "
                + ("Use num_outputs for a multi-output regression." if kind is TaskKind.REGRESSION else "")
            )
        if not isinstance(self.num_outputs, int) or self.num_outputs < 1:
            raise ValueError(
                f"Task {self.name!r}: num_outputs must be an int >= 1; got {self.num_outputs!r}."
            )
        if self.num_outputs != 1 and kind is not TaskKind.REGRESSION:
            raise ValueError(f"Task {self.name!r}: num_outputs applies to regression tasks only.")
        if not (0.0 <= self.label_smoothing < 1.0):
            raise ValueError(
                f"Task {self.name!r}: label_smoothing must be in [0, 1); got {self.label_smoothing!r}."
            )
        if self.label_smoothing and kind is not TaskKind.MULTICLASS:
            raise ValueError(
                f"Task {self.name!r}: label_smoothing applies to multiclass tasks only; got kind {kind.value!r}."
            )
        if not self.logits and kind not in (TaskKind.BINARY, TaskKind.MULTILABEL):
            raise ValueError(f"Task {self.name!r}: logits=False applies to binary and multilabel tasks only.")
        if not isinstance(self.train, bool):
            raise ValueError(f"Task {self.name!r}: train must be True or False; got {self.train!r}.")
        if not isinstance(self.auxiliary, bool):
            raise ValueError(f"Task {self.name!r}: auxiliary must be True or False; got {self.auxiliary!r}.")
        self._set_loss(kind)

    def _set_loss(self, kind: TaskKind) -> None:
        """Resolve a named loss, the class/positive weights and the transform (checked)."""
        name = self.name
        loss = self.loss
        if isinstance(loss, (str, Mapping)):
            loss = named_loss(loss, task=name, kind=kind.value)
        elif isinstance(loss, NamedLoss):
            loss = named_loss(loss.to_dict(), task=name, kind=kind.value)
        elif loss is not None and not callable(loss):
            raise ValueError(
                f"Task {name!r}: loss must be a name, {{name: ..., <parameters>}} or callable(pred, target); "
                f"got {loss!r}."
            )
        if self.pos_weight is not None:
            pw = self.pos_weight
            if kind not in (TaskKind.BINARY, TaskKind.MULTILABEL):
                raise ValueError(f"Task {name!r}: pos_weight applies to binary and multilabel tasks only.")
            if isinstance(pw, bool) or not isinstance(pw, (int, float)) or not (0 < pw < float("inf")):
                raise ValueError(f"Task {name!r}: pos_weight must be a finite number > 0; got {pw!r}.")
            object.__setattr__(self, "pos_weight", float(pw))
            if loss is None:
                loss = named_loss("bce", task=name, kind=kind.value)
            if not (isinstance(loss, NamedLoss) and loss.name == "bce"):
                raise ValueError(
                    f"Task {name!r}: pos_weight applies to the bce loss only"
                    + (" (focal weighs the positives with alpha)." if isinstance(loss, NamedLoss) else ".")
                )
        if self.class_weights is not None:
            cw = self.class_weights
            if kind is not TaskKind.MULTICLASS:
                raise ValueError(f"Task {name!r}: class_weights apply to multiclass tasks only.")
            try:
                values = tuple(float(v) for v in cw)  # type: ignore[union-attr]
            except (TypeError, ValueError):
                raise ValueError(f"Task {name!r}: class_weights must be a list of numbers; got {cw!r}.") from None
            if len(values) != self.num_classes:
                raise ValueError(
                    f"Task {name!r}: class_weights needs one weight per class ({self.num_classes}); got {len(values)}."
                )
            if any(not (0 <= v < float("inf")) for v in values) or not any(v > 0 for v in values):
                raise ValueError(
                    f"Task {name!r}: class_weights must be finite and >= 0, at least one > 0; got {list(values)}."
                )
            object.__setattr__(self, "class_weights", values)
            if loss is None:
                loss = named_loss("cross_entropy", task=name, kind=kind.value)
            if not isinstance(loss, NamedLoss):
                raise ValueError(f"Task {name!r}: class_weights apply to the cross_entropy loss only.")
        if isinstance(loss, NamedLoss) and loss.name == "cross_entropy" and self.label_smoothing:
            given = loss.params.get("label_smoothing", 0.0)
            if given and given != self.label_smoothing:
                raise ValueError(f"Task {name!r}: label_smoothing is given twice (task and loss); give it once.")
            loss = NamedLoss("cross_entropy", {**loss.params, "label_smoothing": self.label_smoothing})
        object.__setattr__(self, "loss", loss)
        if self.transform is not None:
            if kind is not TaskKind.REGRESSION:
                raise ValueError(f"Task {name!r}: transform applies to regression tasks only; got kind {kind.value!r}.")
            tf = target_transform(self.transform, task=name)  # type: ignore[arg-type]
            if tf.name == "standardise" and self.link == "log":
                raise ValueError(
                    f"Task {name!r}: the {loss.name} loss (log link) needs non-negative labels; "  # type: ignore[union-attr]
                    "standardised labels are negative. Use transform: log1p or none."
                )
            object.__setattr__(self, "transform", tf)

    @property
    def link(self) -> str:
        """``"log"`` for the poisson/tweedie losses (the model outputs the log of the mean), else ``"identity"``."""
        return self.loss.link if isinstance(self.loss, NamedLoss) else "identity"

    # ------------------------------------------------------------------ shapes
    @property
    def output_key(self) -> str:
        """Key of this task's prediction in the model output dict."""
        return self.output or self.name

    @property
    def target_key(self) -> str:
        """Key of this task's labels in a batch's targets."""
        return self.target or self.name

    @property
    def output_dim(self) -> int:
        """Width of the model head for this task."""
        if self.kind is TaskKind.BINARY:
            return 1
        if self.kind is TaskKind.REGRESSION:
            return self.num_outputs
        assert self.num_classes is not None  # guaranteed by __post_init__
        return self.num_classes

    @property
    def _per_sample(self) -> bool:
        """True when one target value per sample (binary, multiclass, scalar regression)."""
        return self.kind in (TaskKind.BINARY, TaskKind.MULTICLASS) or (
            self.kind is TaskKind.REGRESSION and self.num_outputs == 1
        )

    def _shapes(self, pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        """Bring ``pred``/``target`` to canonical shapes or raise a ShapeError naming the task."""
        if pred.ndim == 0 or target.ndim == 0:
            raise ShapeError(
                f"Task {self.name!r} expects batched predictions and targets; got pred shape "
                f"{tuple(pred.shape)} and target shape {tuple(target.shape)}."
            )
        n = pred.shape[0]
        if target.shape[0] != n:
            raise ShapeError(
                f"Task {self.name!r}: predictions and targets disagree on batch size "
                f"({n} vs {target.shape[0]})."
            )
        if self._per_sample and self.kind is not TaskKind.MULTICLASS:
            if pred.numel() != n or target.numel() != n:
                raise ShapeError(
                    f"Task {self.name!r} ({self.kind.value}) expects one output and one target per sample, "
                    f"shape (N,) or (N, 1); got pred {tuple(pred.shape)}, target {tuple(target.shape)}."
                )
            return pred.reshape(n), target.reshape(n)
        if self.kind is TaskKind.MULTICLASS:
            if pred.shape != (n, self.output_dim) or target.numel() != n:
                raise ShapeError(
                    f"Task {self.name!r} (multiclass, {self.num_classes} classes) expects logits of shape "
                    f"(N, {self.num_classes}) and class indices of shape (N,); got pred "
                    f"{tuple(pred.shape)}, target {tuple(target.shape)}."
                )
            return pred, target.reshape(n)
        want = (n, self.output_dim)
        if pred.shape != want or target.shape != want:
            raise ShapeError(
                f"Task {self.name!r} ({self.kind.value}) expects predictions and targets of shape "
                f"(N, {self.output_dim}); got pred {tuple(pred.shape)}, target {tuple(target.shape)}."
            )
        return pred, target

    # ------------------------------------------------------------------ labels
    def valid_mask(self, target: Tensor, mask: Tensor | None = None) -> Tensor:
        """Boolean tensor, True where a label is present (shape of the canonical target)."""
        if self.kind is TaskKind.MULTICLASS:
            valid = target >= 0
        elif target.is_floating_point():
            valid = ~torch.isnan(target)
        else:
            valid = torch.ones_like(target, dtype=torch.bool)
        if mask is not None:
            mask = mask.to(device=valid.device, dtype=torch.bool)
            if mask.numel() == valid.shape[0] and valid.ndim == 2 and mask.numel() != valid.numel():
                mask = mask.reshape(-1, 1)  # per-sample mask over per-element labels
            elif mask.numel() == valid.numel():
                mask = mask.reshape(valid.shape)
            else:
                raise ShapeError(
                    f"Task {self.name!r}: label mask of shape {tuple(mask.shape)} does not match targets "
                    f"of shape {tuple(valid.shape)}; use shape (N,) or the target's shape."
                )
            valid = valid & mask
        return valid

    def compute_loss(
        self, pred: Tensor, target: Tensor, mask: Tensor | None = None, weight: Tensor | None = None, /
    ) -> tuple[Tensor, Tensor]:
        """Mean loss over the labelled elements, and how many there were.

        Args:
            weight: optional per-row sample weights ``(N,)`` (>= 0): the loss is then the
                weighted mean ``Σ w·l / Σ w`` over the labelled elements and the count ``Σ w``.

        Returns:
            ``(loss, count)``: scalar tensors. ``count`` is the number of labelled elements, or
            their weight sum (times the class weights of their labels, with ``class_weights``).
            ``loss`` is 0 (with zero gradient) when ``count`` is 0. No host synchronisation
            happens here.
        """
        pred, target = self._shapes(pred, target)
        valid = self.valid_mask(target, mask)
        if self.kind is TaskKind.MULTICLASS:
            filled = torch.where(valid, target, torch.zeros_like(target)).long()
        else:
            filled = torch.where(valid, target, torch.zeros_like(target)).to(pred.dtype)
            if isinstance(self.transform, TargetTransform):
                filled = self.transform.forward(filled)
        elem = self._element_loss(pred, filled)
        if elem.shape != valid.shape:
            if elem.ndim == 1 and elem.shape[0] == valid.shape[0]:
                valid = valid.reshape(valid.shape[0], -1).all(dim=1)
            else:
                raise ShapeError(
                    f"Task {self.name!r}: the loss must return per-sample or per-element values "
                    f"(reduction='none'), shape ({valid.shape[0]},) or {tuple(valid.shape)}; "
                    f"got {tuple(elem.shape)}."
                )
        zeros = torch.zeros_like(elem)
        if weight is None and self.class_weights is None:
            count = valid.sum().to(elem.dtype)
            total = torch.where(valid, elem, zeros).sum()
        else:
            w = torch.ones(valid.shape[0], dtype=elem.dtype, device=elem.device)
            if weight is not None:
                if weight.numel() != valid.shape[0]:
                    raise ShapeError(
                        f"Task {self.name!r}: sample weights of shape {tuple(weight.shape)} do not match the "
                        f"batch of {valid.shape[0]} rows; give one weight per row, shape (N,)."
                    )
                w = weight.reshape(-1).to(device=elem.device, dtype=elem.dtype)
            w = w.reshape(-1, *([1] * (valid.ndim - 1))).expand(valid.shape)
            total = torch.where(valid, elem * w, zeros).sum()
            if self.class_weights is not None:  # cross-entropy already holds w[y]; the mean is over them
                cw = torch.tensor(self.class_weights, dtype=elem.dtype, device=elem.device)
                w = w * cw[filled]
            count = torch.where(valid, w, zeros).sum()
        return total / torch.where(count > 0, count, torch.ones_like(count)), count

    def _element_loss(self, pred: Tensor, target: Tensor) -> Tensor:
        if isinstance(self.loss, NamedLoss):
            cw = None
            if self.class_weights is not None:
                cw = torch.tensor(self.class_weights, dtype=pred.dtype, device=pred.device)
            return self.loss(pred, target, logits=self.logits, pos_weight=self.pos_weight, class_weights=cw)
        if self.loss is not None:
            return self.loss(pred, target)  # type: ignore[operator]
        if self.kind in (TaskKind.BINARY, TaskKind.MULTILABEL):
            if not self.logits:
                return F.binary_cross_entropy(pred.clamp(_EPS, 1 - _EPS), target, reduction="none")
            return F.binary_cross_entropy_with_logits(pred, target, reduction="none")
        if self.kind is TaskKind.MULTICLASS:
            return F.cross_entropy(pred, target, reduction="none", label_smoothing=self.label_smoothing)
        return F.mse_loss(pred, target, reduction="none")

    def activate(self, pred: Tensor) -> Tensor:
        """Model output -> prediction: probabilities for classification, values for regression."""
        if self.kind in (TaskKind.BINARY, TaskKind.MULTILABEL):
            out = torch.sigmoid(pred) if self.logits else pred
            return out.reshape(-1) if self.kind is TaskKind.BINARY else out
        if self.kind is TaskKind.MULTICLASS:
            return torch.softmax(pred, dim=-1)
        if self.link == "log":
            pred = torch.exp(pred)
        if isinstance(self.transform, TargetTransform):
            pred = self.transform.inverse(pred)
        return pred.reshape(-1) if self.num_outputs == 1 else pred

    def check_targets(self, target: Tensor, mask: Tensor | None = None, *, where: str = "data") -> None:
        """Validate a whole target tensor once (host side); raises :class:`DataError` with the fix."""
        prefix = f"Task {self.name!r} ({self.kind.value}) in {where}"
        if not isinstance(target, Tensor):
            raise DataError(f"{prefix}: targets must be a torch.Tensor; got {type(target).__name__}.")
        if target.ndim == 0:
            raise DataError(f"{prefix}: targets must have a batch dimension; got a scalar.")
        n = target.shape[0]
        if self._per_sample:
            if target.numel() != n:
                raise DataError(
                    f"{prefix}: expects one target per sample, shape (N,) or (N, 1); got {tuple(target.shape)}."
                )
        elif tuple(target.shape[1:]) != (self.output_dim,) or target.ndim != 2:
            raise DataError(
                f"{prefix}: expects targets of shape (N, {self.output_dim}); got {tuple(target.shape)}."
            )
        if self.kind is TaskKind.MULTICLASS:
            if target.is_floating_point():
                if torch.isnan(target).any():
                    raise DataError(
                        f"{prefix}: NaN labels found; multiclass labels are class indices with -1 for "
                        "missing. Convert with torch.nan_to_num(t, nan=-1).long()."
                    )
                if not torch.equal(target, target.round()):
                    raise DataError(
                        f"{prefix}: labels must be integer class indices; got non-integer values."
                    )
            elif target.dtype == torch.bool or target.is_complex():
                raise DataError(f"{prefix}: labels must be integer class indices; got dtype {target.dtype}.")
            bad = (target < -1) | (target >= self.output_dim)
            if bad.any():
                v = target[bad][0].item()
                raise DataError(
                    f"{prefix}: class index {v!r} out of range; expected 0..{self.output_dim - 1} "
                    "or -1 for a missing label (check num_classes)."
                )
            return
        if target.is_complex():
            raise DataError(f"{prefix}: labels must be real numbers; got dtype {target.dtype}.")
        t = target if target.is_floating_point() else target.double()
        if torch.isinf(t).any():
            raise DataError(f"{prefix}: infinite labels found; use NaN for a missing label.")
        if self.link == "log":
            present = t[~torch.isnan(t)]
            if (present < 0).any():
                raise DataError(
                    f"{prefix}: the {self.loss.name} loss needs labels >= 0 (counts or amounts); "  # type: ignore[union-attr]
                    f"got {present[present < 0][0].item()!r}. Use mse or huber for signed labels."
                )
        if isinstance(self.transform, TargetTransform):
            problem = self.transform.check(t)
            if problem:
                raise DataError(f"{prefix}: transform {problem}.")
        if self.kind in (TaskKind.BINARY, TaskKind.MULTILABEL):
            present = t[~torch.isnan(t)]
            bad = (present < 0) | (present > 1)
            if bad.any():
                raise DataError(
                    f"{prefix}: labels must lie in [0, 1] (NaN = missing); got {present[bad][0].item()!r}."
                    + (" For class indices use kind='multiclass'." if self.kind is TaskKind.BINARY else "")
                )

    def make_metrics(self) -> dict[str, Metric]:
        """Fresh metric objects for this task (defaults of its kind unless ``metrics`` is given)."""
        from mtlkit.metrics.defaults import default_metrics  # local: metrics imports tasks

        factories = self.metrics if self.metrics is not None else default_metrics(self)
        out: dict[str, Metric] = {}
        for name, factory in factories.items():
            metric = factory()
            if not isinstance(metric, Metric):
                raise TypeError(
                    f"Task {self.name!r}: metric {name!r} must be a factory returning a torchmetrics Metric; "
                    f"got {type(metric).__name__}."
                )
            out[name] = metric
        return out


def task_names(tasks: Mapping[str, Task] | list[Task] | tuple[Task, ...]) -> tuple[str, ...]:
    """Names of ``tasks`` in order; raises on duplicates."""
    items = list(tasks.values()) if isinstance(tasks, Mapping) else list(tasks)
    names = tuple(t.name for t in items)
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"Task names must be unique; got duplicates {sorted(dup)}.")
    if not names:
        raise ValueError("At least one task is needed; got none.")
    return names
