"""Score fusion: one ranking score from several task predictions (Zhao et al., RecSys 2019, §4.1).

A ranking system predicts several objectives (click, watch time, like, ...) and ranks by one
score, a weighted combination of the predictions. Two forms, on the *predictions* (probabilities
of classification tasks, values of regression tasks: each task's activation applied first):

* ``kind="product"``: ``score = prod_t max(f_t(p_t), 1e-12) ** w_t``, e.g.
  ``p_click ** 1 * (1 + watch_time) ** 0.5 * p_like ** 0.2``. Each transformed term is clamped
  at ``1e-12`` (a fractional power of a negative number has no real value; a regression
  prediction below the transform's domain counts as "almost nothing").
* ``kind="sum"``: ``score = sum_t w_t * f_t(p_t)``.

Transforms ``f_t``: ``identity``, ``plus_one`` (``1 + p``), ``log1p`` (``log(1 + max(p, 0))``),
``log`` (``log(max(p, 1e-12))``).

:class:`ScoreFusion` wraps a model and adds the score as an extra output (default ``"score"``)
in evaluation mode, so ``mtlkit predict`` writes a ``score`` column and ``mtlkit export`` a
``score`` output; in training mode the outputs are the base model's (no loss reads the score).
:func:`fuse` computes the same score from a dict of predictions.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from mtlkit.data.batch import Inputs
from mtlkit.errors import ShapeError
from mtlkit.models._base import Decoded, MultiTaskModel
from mtlkit.tasks import Task, TaskKind

__all__ = ["TRANSFORMS", "FusionKind", "FusionTerm", "ScoreFusion", "fuse", "fusion_terms"]

FusionKind = Literal["product", "sum"]
TRANSFORMS = ("identity", "plus_one", "log1p", "log")
_TINY = 1e-12


@dataclass(frozen=True, slots=True)
class FusionTerm:
    """One task's term: its weight (exponent of a product, coefficient of a sum) and transform."""

    weight: float = 1.0
    transform: str = "identity"

    def __post_init__(self) -> None:
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"fusion term weight must be a finite number; got {w!r}.")
        object.__setattr__(self, "weight", float(w))
        if self.transform not in TRANSFORMS:
            raise ValueError(
                f"fusion term transform must be one of {', '.join(TRANSFORMS)}; got {self.transform!r}."
            )


def fusion_terms(terms: Mapping[str, Any]) -> dict[str, FusionTerm]:
    """``{output: FusionTerm}`` from config values: a number (the weight), a mapping
    ``{weight, transform}`` or a :class:`FusionTerm`."""
    if not isinstance(terms, Mapping) or not terms:
        raise ValueError("fusion.terms must map at least one task output to its weight, e.g. {click: 1}.")
    out: dict[str, FusionTerm] = {}
    for name, spec in terms.items():
        if isinstance(spec, FusionTerm):
            out[str(name)] = spec
        elif isinstance(spec, (int, float)) and not isinstance(spec, bool):
            out[str(name)] = FusionTerm(float(spec))
        elif isinstance(spec, Mapping):
            extra = sorted(set(spec) - {"weight", "transform"})
            if extra:
                raise ValueError(f"fusion.terms.{name}: unknown key(s) {extra}; use weight and transform.")
            try:
                out[str(name)] = FusionTerm(**spec)
            except ValueError as exc:
                raise ValueError(f"fusion.terms.{name}: {exc}") from None
        else:
            raise ValueError(f"fusion.terms.{name}: give a weight or {{weight, transform}}; got {spec!r}.")
    return out


def _transform(value: Tensor, name: str) -> Tensor:
    if name == "plus_one":
        return 1.0 + value
    if name == "log1p":
        return torch.log1p(value.clamp_min(0.0))
    if name == "log":
        return torch.log(value.clamp_min(_TINY))
    return value


def fuse(
    preds: Mapping[str, Tensor], terms: Mapping[str, FusionTerm], kind: FusionKind = "product"
) -> Tensor:
    """The fused score ``(N,)`` of predictions ``{output: (N,) or (N, 1)}`` (see the module doc)."""
    if kind not in ("product", "sum"):
        raise ValueError(f"fusion.kind must be 'product' or 'sum'; got {kind!r}.")
    missing = [t for t in terms if t not in preds]
    if missing:
        raise ShapeError(f"fusion: no prediction for {missing} (outputs: {', '.join(preds)}).")
    score: Tensor | None = None
    for name, term in terms.items():
        p = preds[name]
        n = p.shape[0] if p.ndim else 0
        if p.ndim == 0 or p.numel() != n:
            raise ShapeError(
                f"fusion: output {name!r} must hold one value per sample; got shape {tuple(p.shape)}."
            )
        v = _transform(p.reshape(n), term.transform)
        if kind == "product":
            part = v.clamp_min(_TINY) ** term.weight
            score = part if score is None else score * part
        else:
            part = term.weight * v
            score = part if score is None else score + part
    assert score is not None
    return score


class ScoreFusion(MultiTaskModel):
    """``base`` plus the fused score as an extra output in evaluation mode (see the module doc).

    Args:
        base: the model.
        terms: ``{output: FusionTerm}`` (or config values, see :func:`fusion_terms`).
        tasks: the tasks, for their activations (outputs that are not a task are used as given).
        kind: ``"product"`` or ``"sum"``.
        output: the name of the score output.
    """

    def __init__(
        self,
        base: MultiTaskModel,
        terms: Mapping[str, Any],
        tasks: Sequence[Task],
        *,
        kind: FusionKind = "product",
        output: str = "score",
    ) -> None:
        super().__init__()
        if not isinstance(base, MultiTaskModel):
            raise TypeError(f"ScoreFusion wraps a MultiTaskModel; got {type(base).__name__}.")
        if kind not in ("product", "sum"):
            raise ValueError(f"fusion.kind must be 'product' or 'sum'; got {kind!r}.")
        self.terms = fusion_terms(terms)
        by_output = {t.output_key: t for t in tasks}
        unknown = [t for t in self.terms if t not in base.task_names]
        if unknown:
            raise ValueError(
                f"fusion.terms: {unknown} are not outputs of the model ({', '.join(base.task_names)})."
            )
        for name in self.terms:
            task = by_output.get(name)
            if task is not None and (
                task.kind in (TaskKind.MULTICLASS, TaskKind.MULTILABEL) or task.output_dim != 1
            ):
                raise ValueError(
                    f"fusion.terms.{name}: task {task.name!r} ({task.kind.value}) has {task.output_dim} outputs per "
                    "sample; fusion takes binary tasks and scalar regressions."
                )
        if output in base.task_names or output in by_output:
            raise ValueError(f"fusion.output {output!r} is already a model output; choose another name.")
        self.base = base
        self.task_names = base.task_names
        self.kind: FusionKind = kind
        self.output = output
        self._tasks = {k: by_output[k] for k in self.terms if k in by_output}

    def score(self, outputs: Mapping[str, Tensor]) -> Tensor:
        """The fused score of raw model ``outputs`` (each task's activation applied first)."""
        preds = {
            k: (self._tasks[k].activate(outputs[k]) if k in self._tasks else outputs[k]) for k in self.terms
        }
        return fuse(preds, self.terms, self.kind)

    def _with_score(self, outputs: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.training:
            return outputs
        return {**outputs, self.output: self.score(outputs)}

    @property
    def has_representation(self) -> bool:
        return self.base.has_representation

    def _forward(self, x: Inputs) -> Decoded:
        parts = self.base.forward_parts(x)
        return self._with_score(parts.outputs), parts.aux

    def _encode(self, x: Inputs) -> tuple[Tensor, Any]:
        return self.base._encode(x)

    def _decode(self, rep: Tensor, ctx: Any) -> Decoded:
        outputs, aux = self.base._decode(rep, ctx)
        return self._with_score(outputs), aux

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return self.base.task_parameters(task)

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        return self.base.gates(x)
