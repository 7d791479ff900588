"""Gate-distribution analysis: how each task's gate spreads its weight over the experts.

The MMoE paper (Ma et al., KDD 2018, Figure 6) plots, for each task, the distribution of the
softmax gate values of every expert over the data; a task that relies on few experts has
peaked gates. :func:`gate_statistics` computes that distribution (histograms and quantiles per
expert) together with summary numbers (mean weight per expert, entropy, effective number of
experts) for whatever a model's ``gates(x)`` returns: MMoE/OMoE/PLE/DSelect-k gate weights
``(N, E)``, or larger maps such as attention masks ``(N, C, H, W)``, reduced to ``(N, C)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.data.batch import Batch, Inputs, as_batch
from mtlkit.data.dataset import MultiTaskDataset
from mtlkit.errors import IncompatibleComponentsError, ShapeError

Reduce = Callable[[Tensor], Tensor]
"""Maps one output of ``gates(x)`` to ``(N, E)`` weights (default: :func:`reduce_gate`)."""

__all__ = [
    "QUANTILE_LEVELS",
    "GateStats",
    "Reduce",
    "collect_gates",
    "gate_statistics",
    "gate_statistics_from_weights",
    "reduce_gate",
]

QUANTILE_LEVELS: tuple[float, ...] = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)
"""Quantiles stored per expert (box plots use 0.25/0.5/0.75 and whiskers at 0.05/0.95)."""


@dataclass(frozen=True, slots=True)
class GateStats:
    """Statistics of one gate (one task's gate, or any named map of ``gates(x)``) over a data set.

    Attributes:
        name: the key of ``gates(x)`` (the task name for MMoE, ``"shared"`` for OMoE).
        num_samples: ``N``, the samples the statistics are over.
        mean: ``(E,)`` mean weight of each expert.
        std: ``(E,)`` standard deviation of each expert's weight over the samples (population).
        quantiles: ``(len(QUANTILE_LEVELS), E)`` quantiles of each expert's weight.
        entropy: mean over samples of ``H(p(x)) = -Σ_e p_e log p_e`` (nats), ``p(x)`` the
            sample's weights normalised to sum 1 (the gate itself for softmax gates). 0 when every
            sample uses one expert, ``log E`` when every sample spreads uniformly.
        effective_experts: ``exp(entropy)``: the number of experts a sample effectively uses
            (between 1 and E).
        marginal_entropy: ``H(mean_x p(x))``: how evenly the experts are used over the data.
        marginal_effective_experts: ``exp(marginal_entropy)``.
        bin_edges: ``(B + 1,)`` histogram bin edges.
        counts: ``(E, B)`` number of samples whose weight for expert ``e`` falls in each bin
            (bins are closed on the left, the last also on the right; values outside the range go
            to the first or last bin, so every row sums to ``N``).
        is_distribution: every sample's weights are >= 0 and sum to 1 (softmax-like gates).
    """

    name: str
    num_samples: int
    mean: Tensor
    std: Tensor
    quantiles: Tensor
    entropy: float
    effective_experts: float
    marginal_entropy: float
    marginal_effective_experts: float
    bin_edges: Tensor
    counts: Tensor
    is_distribution: bool

    @property
    def num_experts(self) -> int:
        return int(self.mean.shape[0])

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (JSON-ready; NaN stays a float)."""
        return {
            "name": self.name,
            "num_samples": self.num_samples,
            "num_experts": self.num_experts,
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "quantile_levels": list(QUANTILE_LEVELS),
            "quantiles": self.quantiles.tolist(),
            "entropy": self.entropy,
            "effective_experts": self.effective_experts,
            "marginal_entropy": self.marginal_entropy,
            "marginal_effective_experts": self.marginal_effective_experts,
            "bin_edges": self.bin_edges.tolist(),
            "counts": self.counts.tolist(),
            "is_distribution": self.is_distribution,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GateStats:
        """Inverse of :meth:`to_dict` (e.g. from a ``gates.json`` written by ``mtlkit run``)."""

        def f(v: Any) -> float:
            return math.nan if v is None else float(v)

        return cls(
            name=str(d["name"]),
            num_samples=int(d["num_samples"]),
            mean=torch.tensor(d["mean"], dtype=torch.float64),
            std=torch.tensor(d["std"], dtype=torch.float64),
            quantiles=torch.tensor(d["quantiles"], dtype=torch.float64),
            entropy=f(d["entropy"]),
            effective_experts=f(d["effective_experts"]),
            marginal_entropy=f(d["marginal_entropy"]),
            marginal_effective_experts=f(d["marginal_effective_experts"]),
            bin_edges=torch.tensor(d["bin_edges"], dtype=torch.float64),
            counts=torch.tensor(d["counts"], dtype=torch.long),
            is_distribution=bool(d["is_distribution"]),
        )


def reduce_gate(gate: Tensor, name: str = "gate") -> Tensor:
    """One gate output as ``(N, E)``: samples by experts (or channels).

    ``(N, E)`` is returned as is; ``(N,)`` becomes ``(N, 1)``; ``(N, E, *rest)`` (e.g. an attention
    map ``(N, C, H, W)``) is averaged over ``rest``, giving each sample's mean weight per channel.
    """
    if not isinstance(gate, Tensor) or gate.ndim == 0:
        what = tuple(gate.shape) if isinstance(gate, Tensor) else type(gate).__name__
        raise ShapeError(
            f"gates(x)[{name!r}] must be a tensor with a batch dimension, (N, E) or (N, C, ...); got {what}."
        )
    g = gate.detach()
    if g.ndim == 1:
        return g[:, None]
    if g.ndim > 2:
        g = g.flatten(2).mean(-1)
    return g


def _entropy(p: Tensor) -> Tensor:
    """Row entropies (nats) of non-negative rows that sum to 1; ``0 log 0 = 0``."""
    return -torch.special.xlogy(p, p).sum(-1)


def _histogram(w: Tensor, edges: Tensor) -> Tensor:
    """``(E, B)`` counts of the columns of ``w`` ``(N, E)`` in the bins ``edges`` ``(B + 1,)``."""
    e = w.shape[1]
    b = edges.numel() - 1
    idx = torch.bucketize(w.contiguous(), edges[1:-1].contiguous(), right=True)  # 0..B-1, clamped outside
    flat = (torch.arange(e, device=w.device) * b + idx).reshape(-1)
    counts = torch.zeros(e * b, dtype=torch.long, device=w.device)
    counts.index_add_(0, flat, torch.ones_like(flat))
    return counts.view(e, b)


def _reduced(g: Tensor, name: str, reduce: Reduce | None) -> Tensor:
    if reduce is None:
        return reduce_gate(g, name)
    w = reduce(g.detach())
    if not isinstance(w, Tensor) or w.ndim != 2 or w.shape[0] != g.shape[0]:
        got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
        raise ShapeError(
            f"reduce must map gate {name!r} {tuple(g.shape)} to (N, E) = ({g.shape[0]}, E); got {got}."
        )
    return w


def _stats(name: str, weights: Tensor, bins: int, value_range: tuple[float, float] | None) -> GateStats:
    w = reduce_gate(weights, name).to(torch.float64).cpu()
    n = w.shape[0]
    if n == 0:
        raise ShapeError(f"gate {name!r} has no samples; pass at least one input row.")
    if not torch.isfinite(w).all():
        raise ShapeError(f"gate {name!r} has NaN or infinite values; the model's gates are broken.")
    sums = w.sum(1)
    nonneg = (w >= 0).all(1)
    is_dist = bool(nonneg.all() and torch.allclose(sums, torch.ones_like(sums), atol=1e-4))
    valid = nonneg & (sums > 0)
    if valid.any():
        p = w[valid] / sums[valid, None]
        entropy = float(_entropy(p).mean())
        marginal = float(_entropy(p.mean(0)))
    else:  # negative weights: no distribution to take an entropy of
        entropy = marginal = math.nan
    if value_range is None:
        lo, hi = (0.0, 1.0) if bool((w >= 0).all() and (w <= 1).all()) else (float(w.min()), float(w.max()))
    else:
        lo, hi = map(float, value_range)
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = torch.linspace(lo, hi, bins + 1, dtype=torch.float64)
    levels = torch.tensor(QUANTILE_LEVELS, dtype=torch.float64)
    return GateStats(
        name=name,
        num_samples=n,
        mean=w.mean(0),
        std=w.std(0, correction=0),
        quantiles=torch.quantile(w, levels, dim=0),
        entropy=entropy,
        effective_experts=math.exp(entropy),
        marginal_entropy=marginal,
        marginal_effective_experts=math.exp(marginal),
        bin_edges=edges,
        counts=_histogram(w, edges),
        is_distribution=is_dist,
    )


def gate_statistics_from_weights(
    weights: Mapping[str, Tensor] | Tensor,
    *,
    bins: int = 20,
    value_range: tuple[float, float] | None = None,
    reduce: Reduce | None = None,
) -> dict[str, GateStats]:
    """:class:`GateStats` of gate outputs already computed (e.g. ``model.gates(x)``).

    Args:
        weights: ``{name: tensor}`` as ``gates(x)`` returns, or one tensor (named ``"gate"``);
            each ``(N, E)`` or ``(N, C, ...)`` (see :func:`reduce_gate`).
        bins: number of histogram bins.
        value_range: histogram range; default ``(0, 1)`` when every value is in it, else the
            gate's ``(min, max)``.
        reduce: maps each gate output to ``(N, E)`` (default :func:`reduce_gate`); e.g.
            ``lambda g: g.flatten(1).mean(1, keepdim=True)`` summarises a spatial attention map
            ``(N, H, W)`` by each sample's mean attention.
    """
    if not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be an int >= 1; got {bins!r}.")
    if isinstance(weights, Tensor):
        weights = {"gate": weights}
    return {name: _stats(name, _reduced(w, name, reduce), bins, value_range) for name, w in weights.items()}


def _input_chunks(data: Any, batch_size: int) -> Iterator[Inputs]:
    if isinstance(data, (MultiTaskDataset, Batch)):
        data = data.inputs
    if isinstance(data, Tensor):
        for i in range(0, data.shape[0], batch_size):
            yield data[i : i + batch_size]
        return
    if isinstance(data, Mapping) and not ({"inputs", "targets"} <= set(data)):
        n = int(next(iter(data.values())).shape[0]) if data else 0
        for i in range(0, n, batch_size):
            yield {k: v[i : i + batch_size] for k, v in data.items()}
        return
    if isinstance(data, Mapping):  # one batch as a dict
        yield as_batch(data).inputs
        return
    if not isinstance(data, Iterable):
        raise TypeError(
            "data must be inputs (a tensor or dict of tensors), a MultiTaskDataset or an iterable of "
            f"batches; got {type(data).__name__}."
        )
    for raw in data:
        yield as_batch(raw).inputs


def _rows(x: Inputs) -> int:
    return int(x.shape[0]) if isinstance(x, Tensor) else int(next(iter(x.values())).shape[0])


def _head(x: Inputs, n: int) -> Inputs:
    return x[:n] if isinstance(x, Tensor) else {k: v[:n] for k, v in x.items()}


@torch.no_grad()
def collect_gates(
    model: nn.Module,
    data: Any,
    *,
    batch_size: int = 1024,
    max_samples: int | None = None,
    device: torch.device | str | None = None,
    reduce: Reduce | None = None,
) -> dict[str, Tensor]:
    """Run ``model.gates`` over ``data`` in eval mode; ``{name: (N, E)}`` on the CPU (float32).

    Args:
        model: any module with ``gates(x) -> {name: tensor}`` (a DDP wrapper is unwrapped).
        data: inputs (a tensor or a dict of tensors), a :class:`MultiTaskDataset`, or an iterable
            of batches (a ``TensorBatchLoader``, a ``DataLoader``...).
        batch_size: rows per forward pass for tensor / dataset inputs.
        max_samples: stop after this many rows (default: all).
        device: where to run the model (default: where its parameters are).
        reduce: maps each gate output to ``(N, E)`` (default :func:`reduce_gate`), per batch.
    """
    core = getattr(model, "module", model)
    if not callable(getattr(core, "gates", None)):
        raise IncompatibleComponentsError(
            f"{type(core).__name__} has no gates(x) method, so there are no gate distributions to analyse. "
            "Use a gated model (e.g. 'mmoe', 'omoe') or a MultiTaskModel that implements gates()."
        )
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None; got {max_samples!r}.")
    if device is None:
        p = next(core.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    was_training = core.training
    core.eval()
    parts: dict[str, list[Tensor]] = {}
    seen = 0
    try:
        for x in _input_chunks(data, batch_size):
            if max_samples is not None:
                x = _head(x, max_samples - seen)
            x = x.to(device) if isinstance(x, Tensor) else {k: v.to(device) for k, v in x.items()}
            gates = core.gates(x)
            if not gates:
                raise IncompatibleComponentsError(
                    f"{type(core).__name__}.gates(x) returned no gates, so there are no gate distributions to "
                    "analyse. Use a gated model such as 'mmoe' or 'omoe'."
                )
            for name, g in gates.items():
                parts.setdefault(name, []).append(_reduced(g, name, reduce).float().cpu())
            seen += _rows(x)
            if max_samples is not None and seen >= max_samples:
                break
    finally:
        core.train(was_training)
    if not parts:
        raise ValueError("data yielded no inputs; pass at least one row to analyse the gates.")
    return {name: torch.cat(ps) for name, ps in parts.items()}


def gate_statistics(
    model: nn.Module,
    data: Any,
    *,
    bins: int = 20,
    value_range: tuple[float, float] | None = None,
    batch_size: int = 1024,
    max_samples: int | None = None,
    device: torch.device | str | None = None,
    reduce: Reduce | None = None,
) -> dict[str, GateStats]:
    """Per-gate (per-task for MMoE) statistics of ``model.gates`` over ``data``.

    For each name ``gates(x)`` returns: the mean weight per expert, its spread and quantiles, the
    mean per-sample entropy and the effective number of experts ``exp(H)``, the entropy of the
    mean gate, and a histogram of each expert's weights (MMoE paper, Figure 6). The model is put
    in eval mode (and back) and run without gradients.

    Args:
        model: a model with ``gates(x)``.
        data: inputs, a :class:`MultiTaskDataset` or an iterable of batches (see :func:`collect_gates`).
        bins, value_range: the histograms (see :func:`gate_statistics_from_weights`).
        batch_size, max_samples, device, reduce: see :func:`collect_gates`.

    Returns:
        ``{name: GateStats}``.

    Example:
        >>> import torch, mtlkit
        >>> from mtlkit.analysis import gate_statistics
        >>> data = mtlkit.data.synthetic_correlation(256, 0.5, dim=8)
        >>> model = mtlkit.models.mmoe(8, data.tasks, num_experts=4)
        >>> stats = gate_statistics(model, data)
        >>> sorted(stats), stats["y1"].mean.shape
        (['y1', 'y2'], torch.Size([4]))
    """
    weights = collect_gates(
        model, data, batch_size=batch_size, max_samples=max_samples, device=device, reduce=reduce
    )
    return gate_statistics_from_weights(weights, bins=bins, value_range=value_range)
