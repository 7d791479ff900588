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

Gradient-level methods (an aggregator, or a weighting that needs gradients) take one
retained backward pass per task to get the Jacobian of the task losses with respect to the
shared parameters (default) or the shared representation, combine it, and write the result;
each task's own parameters get the gradient of its weighted loss from the same pass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from mtlkit.aggregation._base import Aggregator
from mtlkit.distributed import GradientSync
from mtlkit.errors import IncompatibleComponentsError
from mtlkit.losses import TaskLosses
from mtlkit.state import TrainState
from mtlkit.weighting._base import LossWeighting
from mtlkit.weighting.basic import EqualWeighting

__all__ = ["BackwardResult", "GradientTarget", "GradientWorkspace", "backward"]

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
    largest Jacobian seen and is then kept (``T x P`` numbers): call :meth:`clear` to free it.

    The Jacobian handed to an aggregator or a weighting is then a view of this buffer, valid
    during the call only: a method must not keep it (or a view of it) for later steps, but copy
    what it keeps (every method in mtlkit does).
    """

    def __init__(self) -> None:
        self._buffer: Tensor | None = None

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
    names = weighting.task_names if weighting is not None else None
    vec, items, order, given_present = _as_vector(losses, names)
    T = vec.shape[0]
    if weighting is None:
        model_tasks = getattr(getattr(model, "module", model), "task_names", None)
        if order is None and model_tasks is not None and len(model_tasks) == T:
            order = tuple(model_tasks)
        weighting = EqualWeighting(order or [f"task{i}" for i in range(T)])
    if present is None:
        present = given_present
    counts = local = None
    if sync is not None:
        local = losses.counts if isinstance(losses, TaskLosses) else None
        if local is None:
            local = present.to(vec.dtype) if present is not None else torch.ones_like(vec.detach())
        gradient_level = aggregator is not None or weighting.requires_gradients
        if not (gradient_level and representation is None):  # else: one fused reduction, below
            vec, counts, share = sync.global_losses(vec, local)
            present = counts > 0
            local = None
            if items is not None:
                items = tuple(item * s for item, s in zip(items, share.unbind(0)))
    aux_total = _aux_total(aux)
    if aggregator is None and not weighting.requires_gradients:
        out = weighting(vec, present=present, state=state)
        objective = out.total
        if out.aux is not None:
            objective = objective + out.aux
        if aux_total is not None:
            objective = objective + aux_total
        if objective.requires_grad:
            objective.backward()
        return BackwardResult(out.total.detach(), out.weights.detach(), vec.detach(), None, counts)
    return _gradient_backward(
        vec,
        items,
        weighting,
        aggregator,
        model,
        shared_params,
        task_params,
        representation,
        aux_total,
        present,
        state,
        workspace,
        sync,
        counts,
        local,
    )


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


def _accumulate(param: Tensor, grad: Tensor) -> None:
    if param.grad is None:
        param.grad = grad.detach().clone()
    else:
        param.grad.add_(grad)


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


def _accumulate_flat(params: Sequence[Tensor], vector: Tensor, sizes: Sequence[int]) -> None:
    """Add the consecutive slices of ``vector`` to the parameters' ``.grad``.

    When no parameter has a gradient yet (the usual case after ``zero_grad(set_to_none=True)``)
    and all share ``vector``'s dtype, ``vector`` is copied once and each ``.grad`` becomes a view
    of that copy, instead of one copy per parameter.
    """
    if all(p.grad is None and p.dtype == vector.dtype for p in params):
        flat = vector.detach().clone()
        for p, g in zip(params, flat.split(list(sizes))):
            p.grad = g.view_as(p)
        return
    for p, g in zip(params, vector.split(list(sizes))):
        _accumulate(p, g.reshape_as(p).to(p.dtype))


def _gradient_backward(
    vec: Tensor,
    items: tuple[Tensor, ...] | None,
    weighting: LossWeighting,
    aggregator: Aggregator | None,
    model: nn.Module | None,
    shared_params: Sequence[nn.Parameter] | None,
    task_params: Mapping[str, Sequence[nn.Parameter]] | Sequence[Sequence[nn.Parameter]] | None,
    representation: Tensor | None,
    aux_total: Tensor | None,
    present: Tensor | None,
    state: TrainState | None,
    workspace: GradientWorkspace | None,
    sync: GradientSync | None,
    counts: Tensor | None,
    local_counts: Tensor | None,
) -> BackwardResult:
    names = weighting.task_names
    T = vec.shape[0]
    shared, own = _resolve_params(names, model, shared_params, task_params, representation is None)
    targets: list[Tensor] = [representation] if representation is not None else list(shared)
    if not targets:
        raise IncompatibleComponentsError(
            "Gradient-level balancing combines the gradients of shared parameters, but this model shares none "
            "(e.g. the single-task baseline). Use a loss weighting (e.g. 'uncertainty'), or a model with shared "
            "parameters."
        )
    keep = list(range(T)) if present is None else present.nonzero().flatten().tolist()
    sizes = [t.numel() for t in targets]
    ref = targets[0]
    log_transform = aggregator is not None and aggregator.loss_transform == "log"
    fused = sync is not None and local_counts is not None
    out = None
    if fused:
        # distributed: the rows are Σ_r n_r ∇L_r after one all-reduce that also carries the losses
        # and label counts; the global weights are applied once the global losses are known
        rows, labelled = list(range(T)), [n > 0 for n in local_counts.tolist()]
        coef = local_counts.detach().to(vec.dtype)
    else:
        rows, labelled = keep, [True] * T
        losses_for_weights = torch.log(vec.clamp_min(_LOG_EPS)) if log_transform else vec
        # d log L_k = dL_k / L_k: a per-row factor, folded into each backward pass like the weights
        coef = (1.0 / vec.detach().clamp_min(_LOG_EPS)) if log_transform else torch.ones_like(vec.detach())
        if not weighting.requires_gradients:  # weights first, so every row comes out already weighted
            out = weighting(losses_for_weights, present=present, state=state)
            coef = coef * out.weights.detach().to(coef.dtype)
    # one retained backward pass per labelled task, from the task's own scalar (never vec[k]:
    # that would walk every task's graph), into a [K, P] Jacobian of the kept rows only
    if workspace is not None:
        jac = workspace.jacobian(len(rows), sum(sizes), dtype=ref.dtype, device=ref.device)
    else:
        jac = torch.empty(len(rows), sum(sizes), dtype=ref.dtype, device=ref.device)
    own_grads: list[list[Tensor | None]] = []
    coefs = coef.to(vec.dtype).unbind(0)
    for row, i in enumerate(rows):
        if not labelled[i]:  # no label on this rank (others may have some)
            jac[row].zero_()
            own_grads.append([None] * len(own[i]))
            continue
        loss_i = items[i] if items is not None else vec[i]
        grads = torch.autograd.grad(
            loss_i,
            [*targets, *own[i]],
            grad_outputs=coefs[i].to(loss_i.dtype),
            retain_graph=True,
            allow_unused=True,
        )
        _write_row(jac[row], grads[: len(targets)], sizes)
        own_grads.append(list(grads[len(targets) :]))
    span = None  # this rank's columns of a representation Jacobian gathered over the ranks
    if fused:
        assert sync is not None
        assert local_counts is not None
        jac, own_grads, vec, counts, keep = _reduce_fused(sync, jac, own_grads, own, vec, local_counts)
        present = counts > 0
        losses_for_weights = torch.log(vec.clamp_min(_LOG_EPS)) if log_transform else vec
        coef = (1.0 / vec.clamp_min(_LOG_EPS)) if log_transform else torch.ones_like(vec)
        if not weighting.requires_gradients:
            out = weighting(losses_for_weights, present=present, state=state)
            coef = coef * out.weights.detach().to(coef.dtype)
        if log_transform or out is not None:
            scale = coef.to(jac.dtype)[keep]
            jac.mul_(scale[:, None])
            own_grads = [[g * scale[r] if g is not None else None for g in gs] for r, gs in enumerate(own_grads)]
    elif sync is not None:
        jac, own_grads, span = _reduce_over_ranks(sync, jac, own_grads, [own[i] for i in keep], representation)
    if out is None:  # the weighting needs the (unweighted) gradients: GradNorm
        full = jac
        if len(keep) != T:
            full = jac.new_zeros(T, jac.shape[1])
            full[keep] = jac
        out = weighting(losses_for_weights, present=present, state=state, jacobian=full)
        w_keep = out.weights.detach().to(jac.dtype)[keep]
        jac.mul_(w_keep[:, None])
        own_grads = [[g * w_keep[r] if g is not None else None for g in gs] for r, gs in enumerate(own_grads)]
    w = out.weights.detach()
    # the weighting's own parameters (uncertainty's s, GradNorm's w) learn from its objective only
    wparams = [p for p in weighting.parameters() if p.requires_grad]
    objective = out.total if out.aux is None else out.total + out.aux
    if wparams and objective.requires_grad:
        torch.autograd.backward(objective, inputs=wparams, retain_graph=True)
    effective = torch.zeros_like(w)
    agg_weights = None
    if keep:
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
            vector = jac.sum(0)
            row_weights = torch.ones(len(keep), dtype=w.dtype, device=w.device)
        if len(keep) == T:
            effective = w * row_weights.to(w.device)
        else:
            effective[keep] = w[keep] * row_weights.to(w.device)
        for i, grads in zip(keep, own_grads):  # each task's own parameters: its weighted loss gradient
            for p, g in zip(own[i], grads):
                if g is not None:
                    _accumulate(p, g)
        if aux_total is not None:
            aux_total.backward(retain_graph=True)
        if representation is not None:
            if span is not None:  # this rank's samples; times N, as the ranks' gradients get averaged
                assert sync is not None
                vector = vector[span[0] : span[1]] * sync.world_size
            representation.backward(vector.reshape_as(representation).to(representation.dtype))
        else:
            _accumulate_flat(shared, vector, sizes)
    elif aux_total is not None:
        aux_total.backward()
    return BackwardResult(out.total.detach(), effective, vec.detach(), agg_weights, counts)


def _flat_task_grads(
    own_grads: list[list[Tensor | None]], own: list[list[nn.Parameter]], dtype: torch.dtype
) -> list[Tensor]:
    """Every task parameter's gradient, flattened, zeros where there is none: the same layout on
    every rank, for one collective."""
    return [
        (g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
        for gs, ps in zip(own_grads, own)
        for g, p in zip(gs, ps)
    ]


def _reduce_fused(
    sync: GradientSync,
    jac: Tensor,
    own_grads: list[list[Tensor | None]],
    own: list[list[nn.Parameter]],
    vec: Tensor,
    local_counts: Tensor,
) -> tuple[Tensor, list[list[Tensor | None]], Tensor, Tensor, list[int]]:
    """One all-reduce of ``[n_r-weighted Jacobian rows | task parameters' gradients | loss sums |
    label counts]`` (every task's row, zero where this rank has no label). Returns the global
    per-task gradients of the labelled tasks (unweighted), their task parameters' gradients, the
    global mean losses and counts, and the indices of the tasks labelled anywhere."""
    T = jac.shape[0]
    n = local_counts.detach().to(jac.dtype)
    flat_own = _flat_task_grads(own_grads, own, jac.dtype)
    buf = torch.cat([jac.reshape(-1), *flat_own, vec.detach().to(jac.dtype) * n, n])
    sync.sum_(buf)
    total = buf[-T:]
    inv = 1.0 / total.clamp_min(1)
    mean = (buf[-2 * T : -T] * inv).to(vec.dtype)
    jac.copy_(buf[: jac.numel()].view_as(jac)).mul_(inv[:, None])
    parts = iter(buf[jac.numel() : buf.numel() - 2 * T].split([p.numel() for ps in own for p in ps]))
    grads = [[next(parts).view_as(p).mul(inv[i]).to(p.dtype) for p in ps] for i, ps in enumerate(own)]
    keep = (total > 0).nonzero().flatten().tolist()
    if len(keep) < T:  # a task without a label on any rank: no row
        jac = jac[keep]
        grads = [grads[i] for i in keep]
    return jac, list(grads), mean, total.to(local_counts.dtype), keep


def _reduce_over_ranks(
    sync: GradientSync,
    jac: Tensor,
    own_grads: list[list[Tensor | None]],
    own: list[list[nn.Parameter]],
    representation: Tensor | None,
) -> tuple[Tensor, list[list[Tensor | None]], tuple[int, int] | None]:
    """Average the ranks' per-task gradients (their losses were scaled by the ranks' label shares,
    so the average is the global batch's gradient) in one collective; a representation Jacobian
    (per sample) is gathered along its columns instead."""
    flat_own = _flat_task_grads(own_grads, own, jac.dtype)
    span = None
    if representation is None:
        buf = torch.cat([jac.reshape(-1), *flat_own])
        sync.average_(buf)
        jac.copy_(buf[: jac.numel()].view_as(jac))
        rest = buf[jac.numel() :]
    else:
        rest = sync.average_(torch.cat(flat_own)) if flat_own else jac.new_zeros(0)
        gathered, start, stop = sync.gather_columns(jac)
        jac, span = gathered.div_(sync.world_size), (start, stop)
    parts = iter(rest.split([p.numel() for ps in own for p in ps]))
    reduced = [[next(parts).view_as(p).to(p.dtype) for p in ps] for ps in own]
    return jac, reduced, span
