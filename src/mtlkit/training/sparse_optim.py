"""Sparse-gradient embedding tables (``backbone: {name: embedding, sparse_embeddings: true}``).

A table built with ``nn.Embedding(sparse=True)`` gets a sparse gradient holding only the rows a
batch used, so its update costs the batch's rows, not the whole table (the dense Adam update of
a 1M-row table dominates a step otherwise; ``benchmarks/bench_embeddings.py``). Dense optimizers
refuse sparse gradients: :class:`SparseDenseOptimizer` steps the sparse tables with
``torch.optim.SparseAdam`` (the configured ``lr``, ``betas`` and ``eps``; lazy Adam: a row's
moments advance only on steps that use it) and every other parameter with the configured
optimizer. The trainer builds it itself when the model has sparse tables
(:func:`sparse_parameters`). Sparse gradients do not combine with ``grad_clip_norm`` or the
gradient aggregators (PCGrad, ...), which read whole dense gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["SparseDenseOptimizer", "sparse_parameters", "split_optimizer"]


def sparse_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The weights of the model's embedding tables that produce sparse gradients."""
    out: list[nn.Parameter] = []
    seen: set[int] = set()
    for m in model.modules():
        if isinstance(m, (nn.Embedding, nn.EmbeddingBag)) and m.sparse and id(m.weight) not in seen:
            seen.add(id(m.weight))
            out.append(m.weight)
    return out


class SparseDenseOptimizer(torch.optim.Optimizer):
    """One optimizer over two: ``dense`` (any torch optimizer) and ``sparse`` (``SparseAdam`` over
    the sparse tables). Parameter groups are shared with them, so LR schedulers act on both;
    :meth:`state_dict` holds both states."""

    def __init__(self, dense: torch.optim.Optimizer, sparse: torch.optim.Optimizer) -> None:
        self.dense, self.sparse = dense, sparse
        self._ready = False
        super().__init__([*dense.param_groups, *sparse.param_groups], {})  # the same group dicts
        self._ready = True

    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        loss = self.dense.step(closure)
        self.sparse.step()
        return loss

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not self._ready:  # called by Optimizer.__init__ with the inner groups
            super().add_param_group(param_group)
            return
        self.dense.add_param_group(param_group)
        self.param_groups.append(self.dense.param_groups[-1])

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"dense": self.dense.state_dict(), "sparse": self.sparse.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        self.dense.load_state_dict(state_dict["dense"])
        self.sparse.load_state_dict(state_dict["sparse"])


def split_optimizer(
    factory: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None, model: nn.Module
) -> torch.optim.Optimizer:
    """``factory(dense parameters)`` plus ``SparseAdam`` over the sparse tables (the factory's
    ``lr``, ``betas`` and ``eps``); the plain ``factory(model.parameters())`` when there are none.
    ``factory`` None: Adam with lr 1e-3."""
    if factory is None:

        def factory(ps: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
            return torch.optim.Adam(ps, lr=1e-3, foreach=True)

    sparse = sparse_parameters(model)
    if not sparse:
        return factory(model.parameters())
    ids = {id(p) for p in sparse}
    dense = factory([p for p in model.parameters() if id(p) not in ids])
    d = dense.defaults
    kw = {k: d[k] for k in ("betas", "eps") if k in d}
    return SparseDenseOptimizer(dense, torch.optim.SparseAdam(sparse, lr=float(d.get("lr", 1e-3)), **kw))
