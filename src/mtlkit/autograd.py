"""The one place in mtlkit that calls ``backward``.

Models, tasks, loss weightings and gradient aggregators only build tensors; :func:`backward`
turns task losses into ``.grad`` on the parameters. The Trainer calls it, and so can a
hand-written loop::

    out = model(x)
    tl = mtlkit.task_losses(tasks, out, targets)
    optimizer.zero_grad()
    mtlkit.backward(tl.losses, weighting=weighting, present=tl.present)            # loss level
    mtlkit.backward(tl.losses, aggregator=MGDA(), model=model, present=tl.present)  # gradient level
    optimizer.step()

Gradient-level methods (an aggregator, or a weighting that needs gradients) run in four stages,
each a function of its own:

1. :func:`task_gradients`: one retained backward pass per task gives the Jacobian of the task
   losses with respect to the shared parameters (default) or the shared representation, and
   each task's own-parameter gradients from the same pass;
2. a :class:`~mtlkit.distributed.GradientReduction`: nothing in one process, the exact
   reduction across ranks under torch.distributed;
3. :func:`combine`: the loss weighting (once, with the aggregator's log transform) and the
   aggregator turn the rows into one update;
4. :func:`write_gradients`: the update, the task parameters' gradients, auxiliary losses and
   the weighting's own objective land in ``.grad``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from mtlkit.aggregation._base import Aggregator
from mtlkit.distributed import GradientReduction, GradientSync, Reduced, gradient_reduction
from mtlkit.errors import IncompatibleComponentsError
from mtlkit.losses import TaskLosses
from mtlkit.state import TrainState
from mtlkit.weighting._base import LossWeighting, WeightedLoss
from mtlkit.weighting.basic import EqualWeighting

__all__ = [
    "BackwardResult",
    "Combined",
    "GradientTarget",
    "GradientWorkspace",
    "LossWeights",
    "backward",
    "combine",
    "loss_weights",
    "task_gradients",
    "write_gradients",
]

GradientTarget = Literal["parameters", "representation"]
_LOG_EPS = 1e-8


class BackwardResult(NamedTuple):
    """What a backward step used, detached, for logging.

    Attributes:
        total: the weighted objective (without auxiliary losses).
        weights: ``[T]`` effective task weights (loss weights times the aggregator's row
            weights when it has them; 0 for tasks without labels in the batch).
        losses: ``[T]`` task losses.
        aggregator_weights: ``[T]`` the aggregator's row weights (0 for tasks without labels in
            the batch) when it has them (MGDA, IMTL-G, Nash-MTL...), else ``None``.
        counts: ``[T]`` labelled elements per task over all ranks, when a ``sync`` reduced the
            losses (``losses`` are then the global batch's), else ``None``.
    """

    total: Tensor
    weights: Tensor
    losses: Tensor
    aggregator_weights: Tensor | None = None
    counts: Tensor | None = None


class GradientWorkspace:
    """Memory that :func:`backward` reuses from one step to the next.

    A training loop calls :func:`backward` with the same shapes every step. With a workspace,
    the ``[T, P]`` Jacobian of gradient-level methods is written into the same memory each
    step instead of a fresh tensor: on a CPU, the first touch of a fresh multi-megabyte tensor
    (page faults) costs about as much as the copy into it. The :class:`~mtlkit.Trainer` keeps
    one; a hand-written loop can create one and pass it on every call. The buffer grows to the
    largest Jacobian seen and is then kept (``T x P`` numbers, :attr:`numel`): call
    :meth:`clear` to free it.

    The Jacobian handed to an aggregator or a weighting is then a view of this buffer, valid
    during the call only: a method must not keep it (or a view of it) for later steps, but copy
    what it keeps (every method in mtlkit does).
    """

    def __init__(self) -> None:
        self._buffer: Tensor | None = None

    @property
    def numel(self) -> int:
        """Numbers the buffer holds (0 when freed)."""
        return 0 if self._buffer is None else self._buffer.numel()

    def jacobian(self, rows: int, cols: int, *, dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised ``[rows, cols]`` tensor in the reused buffer."""
        n = rows * cols
        buf = self._buffer
        if buf is None or buf.dtype != dtype or buf.device != device or buf.numel() < n:
            buf = self._buffer = None  # free the old buffer before allocating the new one
            buf = self._buffer = torch.empty(n, dtype=dtype, device=device)
        return buf[:n].view(rows, cols)

    def clear(self) -> None:
        """Free the buffer."""
        self._buffer = None


def _as_vector(
    losses: TaskLosses | Mapping[str, Tensor] | Tensor | Sequence[Tensor], names: Sequence[str] | None
) -> tuple[Tensor, tuple[Tensor, ...] | None, tuple[str, ...] | None, Tensor | None]:
    """``(vector [T], per-task scalars or None, task order, present)`` from any accepted form."""
    if isinstance(losses, TaskLosses):
        items = losses.items if len(losses.items) == losses.losses.shape[0] else None
        return losses.losses, items, tuple(names) if names else None, losses.present
    if isinstance(losses, Tensor):
        return losses, None, tuple(names) if names else None, None
    if isinstance(losses, Mapping):
        order = tuple(names) if names else tuple(losses)
        unknown = [k for k in losses if k not in order]
        if unknown:
            raise KeyError(f"losses name tasks the weighting does not know: {unknown}; tasks: {list(order)}.")
        ref = next(iter(losses.values()))
        items = tuple(losses[k].reshape(()) if k in losses else ref.new_zeros(()) for k in order)
        present = torch.tensor([k in losses for k in order], device=ref.device)
        return torch.stack(items), items, order, present
    items = tuple(t.reshape(()) for t in losses)
    return torch.stack(items), items, tuple(names) if names else None, None


def _aux_total(aux: Mapping[str, Tensor] | Tensor | None) -> Tensor | None:
    if aux is None:
        return None
    if isinstance(aux, Tensor):
        return aux.sum()
    terms = [v.sum() for v in aux.values()]
    return torch.stack(terms).sum() if terms else None


def backward(
    losses: TaskLosses | Mapping[str, Tensor] | Tensor | Sequence[Tensor],
    /,
    *,
    weighting: LossWeighting | None = None,
    aggregator: Aggregator | None = None,
    model: nn.Module | None = None,
    shared_params: Sequence[nn.Parameter] | None = None,
    task_params: Mapping[str, Sequence[nn.Parameter]] | Sequence[Sequence[nn.Parameter]] | None = None,
    representation: Tensor | None = None,
    aux: Mapping[str, Tensor] | Tensor | None = None,
    present: Tensor | None = None,
    state: TrainState | None = None,
    workspace: GradientWorkspace | None = None,
    sync: GradientSync | None = None,
) -> BackwardResult:
    """Differentiate the balanced multi-task objective and accumulate ``.grad``.

    Args:
        losses: the :class:`~mtlkit.TaskLosses` of :func:`mtlkit.task_losses` (best: its
            per-task scalars keep each task's backward pass to its own graph), a ``[T]`` tensor
            ordered like ``weighting.task_names``, a sequence of scalars, or a ``{task: loss}``
            dict (absent tasks count as unlabelled).
        weighting: a :class:`~mtlkit.weighting.LossWeighting` (default: equal weights).
        aggregator: a :class:`~mtlkit.aggregation.Aggregator` combining the per-task gradients
            of the weighted losses; needs ``model`` (or ``shared_params`` / ``task_params``).
        model: supplies ``shared_parameters()`` and ``task_parameters(task)``.
        shared_params: the parameters whose per-task gradients are combined (overrides ``model``).
        task_params: each task's own parameters, ``{task: params}`` or one list per task.
        representation: take the per-task gradients with respect to this tensor (the shared
            representation the task heads were computed from) instead of the shared parameters;
            the combined gradient is then backpropagated through it.
        aux: auxiliary losses (model penalties) added to the objective unweighted; their
            gradients are accumulated as they are.
        present: ``[T]`` bool, False for tasks without a label in the batch (taken from
            ``TaskLosses`` when given one).
        state: training progress for methods that depend on it.
        workspace: a :class:`GradientWorkspace` whose memory gradient-level methods reuse for
            the Jacobian (pass the same one every step; default: a fresh tensor per call).
        sync: under torch.distributed, a :class:`~mtlkit.distributed.GradientSync`: the losses
            and the per-task gradients are reduced across ranks before weighting and
            aggregation, so the step equals a single-process step on the global batch. The
            model's gradients then come out ready to be averaged over the ranks (DDP's
            all-reduce does it; without ``representation`` the shared and task parameters'
            gradients are already the global ones, and averaging leaves them unchanged).
            Pass :class:`~mtlkit.TaskLosses` so that the ranks' label counts weigh their losses.

    Returns:
        :class:`BackwardResult` with the detached objective, effective weights and losses.
    """
    vec, items, order, given_present = _as_vector(
        losses, weighting.task_names if weighting is not None else None
    )
    weighting = weighting if weighting is not None else _equal_weighting(model, order, vec.shape[0])
    gradient_level = aggregator is not None or weighting.requires_gradients
    reduction = gradient_reduction(
        sync,
        losses.counts if isinstance(losses, TaskLosses) else None,
        per_task_rows=gradient_level and representation is None,
    )
    vec, items, present, counts = reduction.global_losses(
        vec, items, given_present if present is None else present
    )
    aux_total = _aux_total(aux)
    if not gradient_level:
        return _loss_level(vec, weighting, present, state, aux_total, counts)
    shared, own = _resolve_params(
        weighting.task_names, model, shared_params, task_params, representation is None
    )
    targets: list[Tensor] = [representation] if representation is not None else list(shared)
    early = None if reduction.weighs_after else loss_weights(vec, present, weighting, aggregator, state)
    rows, labelled = reduction.rows(present, vec.shape[0])
    scale = reduction.row_scale(vec) if early is None else early.scale
    per_task, own_rows = items if items is not None else tuple(vec.unbind(0)), [own[i] for i in rows]
    jac, own_grads = task_gradients(per_task, targets, own_rows, rows, labelled, scale, workspace)  # 1
    reduced = reduction.reduce(jac, own_grads, own_rows, vec, present, rows)  # 2
    combined = combine(reduced, early, weighting, aggregator, state)  # 3
    own_kept = [own[i] for i in reduced.rows]
    write_gradients(combined, reduced, weighting, own_kept, shared, representation, aux_total, reduction)  # 4
    total, weights = combined.weighted.total.detach(), combined.effective
    counts = reduced.counts if reduced.counts is not None else counts
    return BackwardResult(total, weights, reduced.losses.detach(), combined.aggregator_weights, counts)


def _equal_weighting(model: nn.Module | None, order: tuple[str, ...] | None, num_tasks: int) -> LossWeighting:
    model_tasks = getattr(getattr(model, "module", model), "task_names", None)
    if order is None and model_tasks is not None and len(model_tasks) == num_tasks:
        order = tuple(model_tasks)
    return EqualWeighting(order or [f"task{i}" for i in range(num_tasks)])


def _loss_level(
    vec: Tensor,
    weighting: LossWeighting,
    present: Tensor | None,
    state: TrainState | None,
    aux_total: Tensor | None,
    counts: Tensor | None,
) -> BackwardResult:
    """Backpropagate the weighted sum of the losses (methods that need no per-task gradient)."""
    out = weighting(vec, present=present, state=state)
    objective = out.total
    if out.aux is not None:
        objective = objective + out.aux
    if aux_total is not None:
        objective = objective + aux_total
    if objective.requires_grad:
        objective.backward()
    return BackwardResult(out.total.detach(), out.weights.detach(), vec.detach(), None, counts)


def _resolve_params(
    names: tuple[str, ...],
    model: nn.Module | None,
    shared_params: Sequence[nn.Parameter] | None,
    task_params: Mapping[str, Sequence[nn.Parameter]] | Sequence[Sequence[nn.Parameter]] | None,
    need_shared: bool,
) -> tuple[list[nn.Parameter], list[list[nn.Parameter]]]:
    core = getattr(model, "module", model)  # unwrap DistributedDataParallel
    if shared_params is None and need_shared:
        if core is None or not hasattr(core, "shared_parameters"):
            raise IncompatibleComponentsError(
                "Gradient-level balancing needs the shared parameters: pass model= (a MultiTaskModel) "
                "or shared_params=."
            )
        shared_params = core.shared_parameters()
    shared = [p for p in (shared_params or []) if p.requires_grad]
    if need_shared and not shared:
        raise IncompatibleComponentsError(
            "Gradient-level balancing combines the gradients of shared parameters, but this model shares none "
            "(e.g. the single-task baseline). Use a loss weighting (e.g. 'uncertainty'), or a model with shared "
            "parameters."
        )
    if task_params is None:
        if core is not None and hasattr(core, "task_parameters"):
            per_task = [list(core.task_parameters(t)) for t in names]
        else:
            per_task = [[] for _ in names]
    elif isinstance(task_params, Mapping):
        per_task = [list(task_params.get(t, [])) for t in names]
    else:
        per_task = [list(ps) for ps in task_params]
    return shared, [[p for p in ps if p.requires_grad] for ps in per_task]


# ---------------------------------------------------------------------------------------- 1. Jacobian
def _write_row(dest: Tensor, grads: Sequence[Tensor | None], sizes: Sequence[int]) -> None:
    """Write the flattened ``grads`` (``None``: zeros) side by side into ``dest`` (one copy)."""
    if len(grads) == 1 and grads[0] is not None:  # e.g. the representation
        dest.copy_(grads[0].reshape(-1))
        return
    if len(grads) > 1 and all(g is not None for g in grads):
        torch.cat([g.reshape(-1) for g in grads], out=dest)  # type: ignore[union-attr]
        return
    for g, part in zip(grads, dest.split(list(sizes))):
        if g is None:
            part.zero_()
        else:
            part.copy_(g.reshape(-1))


def task_gradients(
    losses: Sequence[Tensor],
    targets: Sequence[Tensor],
    own: Sequence[Sequence[Tensor]],
    rows: Sequence[int],
    labelled: Sequence[bool],
    scale: Tensor,
    workspace: GradientWorkspace | None = None,
) -> tuple[Tensor, list[list[Tensor | None]]]:
    """Stage 1: the ``[K, P]`` Jacobian of ``scale[k] * losses[k]`` (``k`` in ``rows``) with respect
    to ``targets`` (flattened side by side), and each row's gradients of its task parameters ``own``.

    One retained backward pass per row, from the task's own scalar (never a slice of a stacked
    vector: that would walk every task's graph). A row whose ``labelled`` flag is False is zero
    and its task gets no gradient (``None``).
    """
    sizes = [t.numel() for t in targets]
    ref = targets[0]
    if workspace is not None:
        jac = workspace.jacobian(len(rows), sum(sizes), dtype=ref.dtype, device=ref.device)
    else:
        jac = torch.empty(len(rows), sum(sizes), dtype=ref.dtype, device=ref.device)
    own_grads: list[list[Tensor | None]] = []
    coefs = scale.unbind(0)
    for row, (i, params, computed) in enumerate(zip(rows, own, labelled)):
        if not computed:  # no label here (another rank may have some)
            jac[row].zero_()
            own_grads.append([None] * len(params))
            continue
        loss = losses[i]
        grads = torch.autograd.grad(
            loss,
            [*targets, *params],
            grad_outputs=coefs[i].to(loss.dtype),
            retain_graph=True,
            allow_unused=True,
        )
        _write_row(jac[row], grads[: len(targets)], sizes)
        own_grads.append(list(grads[len(targets) :]))
    return jac, own_grads


# ---------------------------------------------------------------------------------------- 3. combine
class LossWeights(NamedTuple):
    """The loss weighting's view of a step (computed by :func:`loss_weights`, once per step).

    Attributes:
        losses: what the weighting saw: the losses, or their logs for a ``"log"`` aggregator.
        scale: ``[T]`` factor of each task's gradient row: ``1 / L_k`` for the log transform
            (``d log L = dL / L``), times the weights when they are known without gradients.
        weighted: the weighting's output, ``None`` when it needs the Jacobian (GradNorm).
        log: the log transform applies.
    """

    losses: Tensor
    scale: Tensor
    weighted: WeightedLoss | None
    log: bool


def loss_weights(
    losses: Tensor,
    present: Tensor | None,
    weighting: LossWeighting,
    aggregator: Aggregator | None,
    state: TrainState | None,
) -> LossWeights:
    """The weights of ``losses [T]`` and each gradient row's factor (see :class:`LossWeights`)."""
    log = aggregator is not None and aggregator.loss_transform == "log"
    seen = torch.log(losses.clamp_min(_LOG_EPS)) if log else losses
    scale = (1.0 / losses.detach().clamp_min(_LOG_EPS)) if log else torch.ones_like(losses.detach())
    out = None
    if not weighting.requires_gradients:
        out = weighting(seen, present=present, state=state)
        scale = scale * out.weights.detach().to(scale.dtype)
    return LossWeights(seen, scale.to(losses.dtype), out, log)


class Combined(NamedTuple):
    """What :func:`combine` made of the rows: the update of the gradient targets (``None``: no
    task was labelled), the weighting's output, the effective weights and the aggregator's."""

    vector: Tensor | None
    weighted: WeightedLoss
    effective: Tensor
    aggregator_weights: Tensor | None


def _scale_rows(reduced: Reduced, factors: Tensor) -> None:
    """Multiply every row (and its task parameters' gradients) by its factor, in place."""
    reduced.jacobian.mul_(factors[:, None])
    for r, grads in enumerate(reduced.own):
        grads[:] = [g * factors[r] if g is not None else None for g in grads]


def _weigh(
    reduced: Reduced,
    early: LossWeights | None,
    weighting: LossWeighting,
    aggregator: Aggregator | None,
    state: TrainState | None,
) -> WeightedLoss:
    """The weighting's output, with every row (and its task gradients) scaled by its weight."""
    lw, keep = early, reduced.rows
    if lw is None:  # the reduction came first: weigh the global rows now
        lw = loss_weights(reduced.losses, reduced.present, weighting, aggregator, state)
        if lw.log or lw.weighted is not None:
            _scale_rows(reduced, lw.scale.to(reduced.jacobian.dtype)[keep])
    if lw.weighted is not None:
        return lw.weighted
    full = reduced.jacobian  # the weighting needs the (unweighted) gradients: GradNorm
    if len(keep) != lw.losses.shape[0]:
        full = full.new_zeros(lw.losses.shape[0], full.shape[1])
        full[keep] = reduced.jacobian
    out = weighting(lw.losses, present=reduced.present, state=state, jacobian=full)
    _scale_rows(reduced, out.weights.detach().to(full.dtype)[keep])
    return out


def combine(
    reduced: Reduced,
    early: LossWeights | None,
    weighting: LossWeighting,
    aggregator: Aggregator | None,
    state: TrainState | None,
) -> Combined:
    """Stage 3: weigh the rows and aggregate them into one update.

    ``early``: the weights already folded into the rows (by :func:`task_gradients`); ``None``
    when the reduction came first, and they are computed from the global losses here.
    """
    out, keep = _weigh(reduced, early, weighting, aggregator, state), reduced.rows
    w = out.weights.detach()
    if not keep:
        return Combined(None, out, torch.zeros_like(w), None)
    jac, agg_weights = reduced.jacobian, None
    if aggregator is not None:
        agg = aggregator.aggregate(jac, state=state, rows=torch.tensor(keep))
        vector = agg.vector
        row_weights = (
            agg.weights.to(w.dtype) if agg.weights is not None else torch.ones(len(keep), dtype=w.dtype)
        )
        if agg.weights is not None:
            agg_weights = torch.zeros_like(w)
            agg_weights[keep] = agg.weights.detach().to(w)
    else:
        vector, row_weights = jac.sum(0), torch.ones(len(keep), dtype=w.dtype, device=w.device)
    if len(keep) == w.shape[0]:
        effective = w * row_weights.to(w.device)
    else:
        effective = torch.zeros_like(w)
        effective[keep] = w[keep] * row_weights.to(w.device)
    return Combined(vector, out, effective, agg_weights)


# ---------------------------------------------------------------------------------------- 4. .grad
def _accumulate(param: Tensor, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad.detach().clone()
    else:
        param.grad.add_(grad)


def _accumulate_flat(params: Sequence[Tensor], vector: Tensor) -> None:
    """Add the consecutive slices of ``vector`` to the parameters' ``.grad``.

    When no parameter has a gradient yet (the usual case after ``zero_grad(set_to_none=True)``)
    and all share ``vector``'s dtype, ``vector`` is copied once and each ``.grad`` becomes a view
    of that copy, instead of one copy per parameter.
    """
    sizes = [p.numel() for p in params]
    if all(p.grad is None and p.dtype == vector.dtype for p in params):
        flat = vector.detach().clone()
        for p, g in zip(params, flat.split(sizes)):
            p.grad = g.view_as(p)
        return
    for p, g in zip(params, vector.split(sizes)):
        _accumulate(p, g.reshape_as(p).to(p.dtype))


def write_gradients(
    combined: Combined,
    reduced: Reduced,
    weighting: LossWeighting,
    own: Sequence[Sequence[Tensor]],
    shared: Sequence[Tensor],
    representation: Tensor | None,
    aux_total: Tensor | None,
    reduction: GradientReduction,
) -> None:
    """Stage 4: accumulate ``.grad``: the weighting's own parameters (from its objective only),
    each row's task parameters, the auxiliary losses, and the update of the shared parameters
    (or, backpropagated through it, of the representation)."""
    out = combined.weighted
    wparams = [p for p in weighting.parameters() if p.requires_grad]
    objective = out.total if out.aux is None else out.total + out.aux
    if wparams and objective.requires_grad:  # the weighting's own parameters learn from its objective only
        torch.autograd.backward(objective, inputs=wparams, retain_graph=True)
    if combined.vector is None:
        if aux_total is not None:
            aux_total.backward()
        return
    for params, grads in zip(own, reduced.own):  # each task's own parameters: its weighted loss gradient
        for p, g in zip(params, grads):
            if g is not None:
                _accumulate(p, g)
    if aux_total is not None:
        aux_total.backward(retain_graph=True)
    if representation is not None:
        vector = reduction.this_rank(combined.vector)
        representation.backward(vector.reshape_as(representation).to(representation.dtype))
    else:
        _accumulate_flat(shared, combined.vector)
