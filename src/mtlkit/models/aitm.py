"""AITM: Adaptive Information Transfer Multi-task framework (Xi et al., KDD 2021).

Paper: D. Xi, Z. Chen, P. Yan, Y. Zhang, Y. Zhu, F. Zhuang, Y. Chen, "Modeling the Sequential
Dependence among Audience Multi-step Conversions with Multi-task Learning in Targeted Display
Advertising", KDD 2021 (https://arxiv.org/abs/2105.08489); authors' code: github.com/xidongbo/AITM.

Tasks form a conversion funnel ``t = 1..T`` (impression -> click -> purchase...). Each task has a
tower on the shared input, ``q_t = tower_t(h)``. The Adaptive Information Transfer (AIT) module
mixes what the previous task passes on, ``p_t = g_t(z_{t-1})``, with ``q_t``:

    z_t = sum_{u in {p_t, q_t}} w_u h1(u),   w_u = softmax_u(<h2(u), h3(u)> / sqrt(k)),

with ``z_1 = q_1``, learned projections ``h1, h2, h3`` (k x k, no bias) and ``k`` the tower width.
The prediction is ``y_t = sigmoid(head_t(z_t))``. The behavioural expectation calibrator
penalises a later step predicted likelier than the earlier one:

    L_lc = alpha * sum_{t=2..T} mean_x max(y_t - y_{t-1}, 0)      (alpha = 0.6 in the paper).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

from mtlkit.argcheck import check_model_args
from mtlkit.data.batch import Inputs
from mtlkit.errors import ShapeError
from mtlkit.models._base import Decoded, MultiTaskModel, params_of
from mtlkit.models._blocks import MLP
from mtlkit.models._inputs import InputLayerLike, make_input_layers
from mtlkit.models._kernels import tower_outputs
from mtlkit.registries import MODELS
from mtlkit.tasks import Task, TaskKind, task_names

__all__ = ["AITM", "AdaptiveInformationTransfer", "aitm"]

CALIBRATOR = "calibrator"
"""Name of AITM's auxiliary loss (``forward_parts(x).aux["calibrator"]``)."""


class AdaptiveInformationTransfer(nn.Module):
    """The AIT module: attention over ``[p_t, q_t]`` (Xi et al. 2021, eq. 2-4).

    ``forward(p, q)`` with ``p, q`` of shape ``(N, k)`` returns ``z = w_p h1(p) + w_q h1(q)``
    (shape ``(N, k)``) and the weights ``(N, 2)`` (column 0: transferred ``p``, column 1: own ``q``),
    where ``w = softmax(<h2(u), h3(u)> / sqrt(k))`` over ``u in {p, q}``.

    Args:
        dim: ``k``, the width of ``p`` and ``q``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"AdaptiveInformationTransfer dim must be an int >= 1; got {dim!r}.")
        self.dim = dim
        self.h1 = nn.Linear(dim, dim, bias=False)  # value
        self.h2 = nn.Linear(dim, dim, bias=False)  # query
        self.h3 = nn.Linear(dim, dim, bias=False)  # key

    def forward(self, p: Tensor, q: Tensor) -> tuple[Tensor, Tensor]:
        u = torch.stack([p, q], dim=1)  # (N, 2, k)
        scores = (self.h2(u) * self.h3(u)).sum(-1) / math.sqrt(self.dim)  # (N, 2)
        w = torch.softmax(scores, dim=1)
        return torch.bmm(w.unsqueeze(1), self.h1(u)).squeeze(1), w


class AITM(MultiTaskModel):
    """Adaptive Information Transfer Multi-task model (Xi et al., KDD 2021) for a conversion funnel.

    Outputs one logit per task (``sigmoid`` gives ``y_t``); when ``alpha > 0``, the calibrator
    loss is the auxiliary loss ``calibrator`` (:meth:`forward_parts`). The task order is the funnel
    order (the order of ``towers``).

    Ownership: task ``t``'s representation ``z_t`` feeds every later task (through ``g_{t+1}``),
    so the towers, transfers and AIT modules of tasks ``1..T-1`` are shared; each task owns its
    head, and the last task also owns its tower, transfer and AIT module. The shared
    representation is ``[h, z_1, ..., z_{T-1}]`` (the input features and the transferred
    representations), after which only task-owned parameters remain.

    Args:
        towers: ``{task: module}`` in funnel order, each mapping the input features ``(N, F)`` to
            ``(N, k)``.
        transfers: ``{task: module}`` for tasks 2..T: ``g_t``, mapping ``z_{t-1}`` ``(N, k)`` to
            ``p_t`` ``(N, k)``.
        ait: ``{task: AdaptiveInformationTransfer}`` for tasks 2..T.
        heads: ``{task: module}`` mapping ``z_t`` to one logit.
        alpha: weight of the calibrator loss (0 turns it off).
        input_layer: optional shared module applied to the inputs first (e.g. embeddings).
        extra: ``{task: module}`` of tasks beside the funnel (e.g. a watch-time regression), each
            mapping the input features ``(N, F)`` to its output; outside the chain and the
            calibrator, each owns its module.
    """

    def __init__(
        self,
        towers: Mapping[str, nn.Module],
        transfers: Mapping[str, nn.Module],
        ait: Mapping[str, nn.Module],
        heads: Mapping[str, nn.Module],
        *,
        alpha: float = 0.6,
        input_layer: nn.Module | None = None,
        extra: Mapping[str, nn.Module] | None = None,
    ) -> None:
        super().__init__()
        names = tuple(towers)
        extra = dict(extra or {})
        clash = sorted(set(extra) & set(names))
        if clash:
            raise ValueError(f"AITM extra tasks {clash} are also funnel tasks; name each task once.")
        if len(names) < 2:
            raise ValueError(f"AITM models a funnel of at least two tasks; got {list(names)}.")
        later = names[1:]
        for what, mods, want in (("transfers", transfers, later), ("ait", ait, later), ("heads", heads, names)):
            if tuple(mods) != want:
                raise ValueError(f"AITM {what} must be keyed by the tasks {list(want)} in order; got {list(mods)}.")
        if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
            raise ValueError(f"AITM parameter `alpha` must be a float >= 0; got {alpha!r}.")
        self.funnel = names
        self.task_names = (*names, *extra)
        self.alpha = float(alpha)
        self.input_layer = input_layer
        self.towers = nn.ModuleDict(dict(towers))
        self.transfers = nn.ModuleDict(dict(transfers))
        self.ait = nn.ModuleDict(dict(ait))
        self.heads = nn.ModuleDict(dict(heads))
        self.extra = nn.ModuleDict(extra)

    # ------------------------------------------------------------------ computation
    def _features(self, x: Inputs) -> Tensor:
        h = self.input_layer(x) if self.input_layer is not None else x
        if not isinstance(h, Tensor) or h.ndim != 2:
            raise ShapeError(
                "AITM's towers take (N, F) features; got "
                + (f"shape {tuple(h.shape)}" if isinstance(h, Tensor) else type(h).__name__)
                + ". Use an input layer (backbone) that produces flat features."
            )
        return h

    def _step(self, t: str, z_prev: Tensor | None, q: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(z_t, AIT weights or None)`` from ``z_{t-1}`` and the task's tower output ``q_t``."""
        if z_prev is None:
            return q, None
        return self.ait[t](self.transfers[t](z_prev), q)

    def _towers(self, h: Tensor, names: Sequence[str]) -> list[Tensor]:
        """``q_t = tower_t(h)`` of the tasks ``names`` (batched where that pays, see tower_outputs)."""
        return list(tower_outputs(self.towers, dict.fromkeys(names, h)).values())

    def _chain(self, h: Tensor, names: Sequence[str]) -> tuple[list[Tensor], dict[str, Tensor]]:
        """``z_t`` of the first tasks ``names`` of the funnel, and their AIT weights."""
        zs: list[Tensor] = []
        weights: dict[str, Tensor] = {}
        for t, q in zip(names, self._towers(h, names)):
            z, w = self._step(t, zs[-1] if zs else None, q)
            zs.append(z)
            if w is not None:
                weights[t] = w
        return zs, weights

    def _outputs(self, zs: Sequence[Tensor], h: Tensor) -> Decoded:
        logits = {t: self.heads[t](z) for t, z in zip(self.funnel, zs)}
        aux: dict[str, Tensor] = {}
        if self.alpha > 0:
            probs = torch.sigmoid(torch.cat([a.reshape(-1, 1) for a in logits.values()], dim=1))  # (N, T)
            gaps = torch.relu(probs[:, 1:] - probs[:, :-1])  # later step likelier than the earlier one
            aux[CALIBRATOR] = self.alpha * gaps.mean(dim=0).sum()
        return {**logits, **{t: m(h) for t, m in self.extra.items()}}, aux

    def _forward(self, x: Inputs) -> Decoded:
        h = self._features(x)
        return self._outputs(self._chain(h, self.funnel)[0], h)

    def _encode(self, x: Inputs) -> tuple[Tensor, list[int]]:
        h = self._features(x)
        zs = self._chain(h, self.funnel[:-1])[0]
        return torch.cat([h, *zs], dim=1), [h.shape[1], *(z.shape[1] for z in zs)]

    def _decode(self, rep: Tensor, widths: list[int]) -> Decoded:
        h, *zs = rep.split(widths, dim=1)
        last = self.funnel[-1]
        zs.append(self._step(last, zs[-1], self.towers[last](h))[0])
        return self._outputs(zs, h)

    def gates(self, x: Inputs) -> dict[str, Tensor]:
        """Attention weights ``(N, 2)`` of every task after the first: ``[transferred p_t, own q_t]``."""
        return self._chain(self._features(x), self.funnel)[1]

    # ------------------------------------------------------------------ ownership
    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        if task in self.extra:
            return list(self.extra[task].parameters())
        if task != self.funnel[-1]:
            return list(self.heads[task].parameters())
        return params_of(self.towers[task], self.transfers[task], self.ait[task], self.heads[task])

    def extra_repr(self) -> str:
        extra = f", extra={list(self.extra)}" if self.extra else ""
        return f"tasks={list(self.funnel)}{extra}, alpha={self.alpha}"


@MODELS.register("aitm")
def aitm(
    input_dim: int | None,
    tasks: Sequence[Task],
    *,
    tower_dims: Sequence[int] = (128, 64, 32),
    alpha: float = 0.6,
    activation: str = "relu",
    dropout: float = 0.0,
    funnel: dict[str, str] | None = None,
    input_layer: InputLayerLike | None = None,
) -> AITM:
    """AITM (Xi et al. 2021): funnel tasks linked by adaptive information transfer, with the calibrator loss.

    Args:
        input_dim: width of flat features (or None with an input layer).
        tasks: binary tasks (logits) in funnel order, e.g. click then purchase. With ``funnel``,
            the funnel's two tasks and any others (each an extra tower and head on the shared input).
        tower_dims: hidden widths of each task's tower; the last is ``k``, the width of
            ``q_t``, ``p_t`` and ``z_t`` (paper: 128, 64, 32).
        alpha: calibrator weight (paper: 0.6).
        activation: activation of the towers and transfers.
        dropout: dropout after each tower and transfer layer.
        funnel: ``{ctr: <click task>, cvr: <purchase task>, ctcvr: <name>}``: in a config, the data's
            raw label columns become AITM's two steps, ``ctr`` and ``ctcvr`` (click and purchase over
            all impressions; :func:`mtlkit.data.funnel.funnel_splits` derives them); the other tasks
            are extra outputs beside the funnel.
        input_layer: shared backbone in front of the towers (e.g. the embedding front end).
    """
    check_model_args("aitm", tower_dims=tower_dims, dropout=dropout)
    task_names(tasks)
    steps, extra = list(tasks), []
    if funnel is not None:
        order = [funnel["ctr"], funnel.get("ctcvr", "ctcvr")]
        by_name = {t.name: t for t in tasks}
        missing = [n for n in order if n not in by_name]
        if missing:
            raise ValueError(
                f"aitm's funnel steps {order} must be tasks; {missing} are not (tasks: {list(by_name)}). In a "
                "config the funnel derives them from the data's click and purchase tasks."
            )
        steps = [by_name[n] for n in order]
        extra = [t for t in tasks if t.name not in order]
    for t in steps:
        if t.kind is not TaskKind.BINARY or not t.logits:
            raise ValueError(
                f"aitm predicts the steps of a conversion funnel (binary logits); task {t.name!r} is "
                f"{t.kind.value}{'' if t.logits else ' with logits=False'}. Use Task(name={t.name!r}, kind='binary')"
                + (", or declare model.funnel: {ctr: <click task>, cvr: <purchase task>} and keep the other "
                   "tasks beside the funnel." if funnel is None else ".")
            )
    if len(steps) < 2:
        raise ValueError(f"aitm models a funnel of at least two tasks; got {len(steps)}.")
    (layer,), width = make_input_layers(input_dim, input_layer, who="aitm")
    towers = {t.name: MLP(width, tower_dims, activation=activation, dropout=dropout) for t in steps}
    k = next(iter(towers.values())).out_features
    later = [t.name for t in steps[1:]]
    transfers = {t: MLP(k, (k,), activation=activation, dropout=dropout) for t in later}
    ait = {t: AdaptiveInformationTransfer(k) for t in later}
    heads = {t.name: nn.Linear(k, 1) for t in steps}
    others = {
        t.name: nn.Sequential(MLP(width, tower_dims, activation=activation, dropout=dropout), nn.Linear(k, t.output_dim))
        for t in extra
    }
    return AITM(towers, transfers, ait, heads, alpha=alpha, input_layer=layer, extra=others)
