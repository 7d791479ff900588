"""Multi-process training: the ``torchrun`` set-up, and the exact reduction of the per-task
losses and gradients across ranks.

Under DistributedDataParallel each rank sees its own shard of the global batch. Averaging the
ranks' final gradients (what DDP does) equals single-process training only for a plain sum of
mean losses over equal shards. Loss weightings read the loss values (DWA, GLS, IMTL-L, ...),
missing labels make the shards' label counts differ, and gradient-aggregation methods (PCGrad,
MGDA, ...) are not linear in the per-task gradients. :class:`GradientSync` therefore

1. reduces every task's loss sum and label count first, so every rank sees the loss of the
   *global* batch (and the same weights),
2. scales each rank's per-task loss by its share of the task's labels, and
3. reduces the per-task gradients (the Jacobian) across ranks *before* the aggregator sees them,

so one step on ``N`` ranks equals one single-process step on the union of their batches.
:func:`mtlkit.backward` takes the reduction as its stage 2, a :class:`GradientReduction`
strategy: the identity in one process, :class:`FusedReduction` (per-task gradients of the
shared parameters) or :class:`LossShareReduction` (loss-level methods, and the gradients of a
shared representation) under torch.distributed.

The data side of reproducible multi-process runs lives here too: :func:`mix_seed` (every seed
derived from ``(seed, epoch, ...)``) and :func:`shard` (each rank's part of an ordering).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from mtlkit.errors import DistributedError

__all__ = [
    "DistributedContext",
    "FusedReduction",
    "GlobalLosses",
    "GradientReduction",
    "GradientSync",
    "LossShareReduction",
    "Reduced",
    "broadcast_object",
    "current_context",
    "distributed_session",
    "gradient_reduction",
    "init_from_env",
    "is_main_process",
    "mix_seed",
    "shard",
    "world",
]


def _dist() -> Any:  # torch.distributed, or None where it is not built in
    import torch.distributed as dist

    return dist if dist.is_available() else None


def world() -> tuple[int, int]:
    """``(world size, rank)`` of the default process group; ``(1, 0)`` outside torch.distributed."""
    dist = _dist()
    if dist is not None and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def is_main_process() -> bool:
    """True on rank 0, and always outside torch.distributed: the process that writes files and prints."""
    return world()[1] == 0


def mix_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (e.g. ``(seed, epoch)``, ``(seed, task, pass)``).

    Every shuffle, draw and augmentation of a run is seeded from such a tuple, never from global
    random state, so runs reproduce, resume exactly and agree across ranks.
    """
    state = np.random.SeedSequence([int(p) & 0xFFFFFFFFFFFFFFFF for p in parts]).generate_state(
        2, dtype=np.uint64
    )
    return int(state[0] >> np.uint64(1))


def shard(order: Tensor, num_replicas: int, rank: int, *, pad: bool = True) -> Tensor:
    """Rank ``rank``'s part of ``order`` (indices in batch order): positions ``rank, rank + N, ...``.

    ``pad`` (training) wraps around so that every rank gets ``ceil(n / N)`` indices, as torch's
    ``DistributedSampler`` does (also when ``n < N``); without it (evaluation) no index is read twice.
    """
    if num_replicas <= 1:
        return order
    if not pad:
        return order[rank::num_replicas]
    n = order.numel()
    total = -(-n // num_replicas) * num_replicas
    if total > n:  # wrap around (more than once when there are fewer indices than ranks)
        order = order.repeat(-(-total // n))[:total] if n else order
    return order[rank:total:num_replicas]


class GlobalLosses(NamedTuple):
    """The global batch's losses (see :meth:`GradientSync.global_losses`)."""

    losses: Tensor
    counts: Tensor
    share: Tensor


class GradientSync:
    """Reduces one step's per-task losses and gradients across the ranks of a process group.

    :func:`mtlkit.backward` takes one as ``sync=`` (the :class:`~mtlkit.Trainer` passes it by
    itself under torch.distributed). All reductions are collective: every rank must call them in
    the same order, which the trainer guarantees by running the same step on every rank.
    """

    def __init__(self, group: object | None = None) -> None:
        dist = _dist()
        if dist is None or not dist.is_initialized():
            raise DistributedError(
                "GradientSync needs an initialised process group: call torch.distributed.init_process_group "
                "(torchrun sets up the environment for it) or mtlkit.distributed.init_from_env() first."
            )
        self._dist = dist
        self.group = group
        self.world_size = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    @classmethod
    def active(cls, group: object | None = None) -> GradientSync | None:
        """A sync for the running process group with more than one rank, else None."""
        dist = _dist()
        if dist is None or not dist.is_initialized() or dist.get_world_size(group) == 1:
            return None
        return cls(group)

    # ------------------------------------------------------------------ collectives
    def sum_(self, tensor: Tensor) -> Tensor:
        """Sum ``tensor`` over the ranks, in place."""
        self._dist.all_reduce(tensor, group=self.group)
        return tensor

    def average_(self, tensor: Tensor) -> Tensor:
        """Average ``tensor`` over the ranks, in place."""
        return self.sum_(tensor).div_(self.world_size)

    def global_losses(self, losses: Tensor, counts: Tensor) -> GlobalLosses:
        """The global batch's per-task mean losses and label counts (one all-reduce).

        Args:
            losses: ``[T]`` this rank's masked mean loss per task (differentiable).
            counts: ``[T]`` this rank's labelled elements per task (their weight sums with sample weights).

        Returns:
            :class:`GlobalLosses`: the losses' *values* are the global means
            ``sum_r n_r L_r / sum_r n_r``; their *gradient* is this rank's share of the global
            gradient times the world size, ``N n_r / sum_r n_r * dL_r``, so that averaging the
            ranks' gradients (DDP's all-reduce, :meth:`average_`) gives exactly the gradient of
            the global mean loss. ``counts`` are the global label counts and ``share`` the
            factor ``N n_r / sum_r n_r`` per task.
        """
        local = counts.detach().to(torch.float64)
        stats = torch.stack([losses.detach().to(torch.float64) * local, local])
        self.sum_(stats)
        total = stats[1]
        safe = torch.where(total > 0, total, torch.ones_like(total))  # counts may be weight sums < 1
        mean = (stats[0] / safe).to(losses.dtype)
        share = (self.world_size * local / safe).to(losses.dtype)
        scaled = losses * share
        return GlobalLosses(scaled + (mean - scaled).detach(), total.to(counts.dtype), share)

    def gather_columns(self, block: Tensor) -> tuple[Tensor, int, int]:
        """Concatenate every rank's ``[K, C_r]`` block along the columns (``C_r`` may differ).

        Returns ``(matrix [K, sum C_r], start, stop)``: this rank's columns are ``start:stop``.
        """
        rows, cols = block.shape
        sizes = torch.tensor([cols], dtype=torch.int64, device=block.device)
        all_sizes = [torch.empty_like(sizes) for _ in range(self.world_size)]
        self._dist.all_gather(all_sizes, sizes, group=self.group)
        widths = [int(s.item()) for s in all_sizes]
        width = max(widths)
        padded = block if cols == width else torch.cat([block, block.new_zeros(rows, width - cols)], dim=1)
        parts = [torch.empty_like(padded) for _ in range(self.world_size)]
        self._dist.all_gather(parts, padded.contiguous(), group=self.group)
        matrix = torch.cat([p[:, :w] for p, w in zip(parts, widths)], dim=1)
        start = sum(widths[: self.rank])
        return matrix, start, start + cols

    def average_gradients(self, params: Iterable[nn.Parameter]) -> None:
        """Average the parameters' ``.grad`` over the ranks in one all-reduce.

        A gradient that no rank has stays ``None``, as in a single process (an optimizer skips
        those; with zeros Adam would still move them by its momentum).
        """
        params = [p for p in params if p.requires_grad]
        if not params:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        has = torch.tensor([p.grad is not None for p in params], dtype=grads[0].dtype, device=grads[0].device)
        flat = self.sum_(torch.cat([*(g.reshape(-1) for g in grads), has]))
        anywhere = flat[-len(params) :].tolist()
        flat = flat[: -len(params)].div_(self.world_size)
        for p, g, n in zip(params, flat.split([g.numel() for g in grads]), anywhere):
            p.grad = g.view_as(p).clone() if n > 0 else None


# ------------------------------------------------------------------------------ stage 2 of backward
class Reduced(NamedTuple):
    """The per-task gradients after a :class:`GradientReduction`.

    Attributes:
        jacobian: ``[K, P]`` one row per task in ``rows``.
        own: per row, the gradients of the task's own parameters (``None``: none).
        losses: ``[T]`` the losses the weights are computed from (the global batch's).
        present: ``[T]`` bool, tasks labelled in the (global) batch, or ``None``.
        counts: ``[T]`` global label counts when the reduction computed them, else ``None``.
        rows: the task index of each row.
    """

    jacobian: Tensor
    own: list[list[Tensor | None]]
    losses: Tensor
    present: Tensor | None
    counts: Tensor | None
    rows: list[int]


def _local_counts(counts: Tensor | None, present: Tensor | None, losses: Tensor) -> Tensor:
    if counts is not None:
        return counts
    return present.to(losses.dtype) if present is not None else torch.ones_like(losses.detach())


class GradientReduction:
    """Stage 2 of :func:`mtlkit.backward`: reduce the per-task gradients across processes.

    This base class is the identity (one process). A strategy answers four questions for the
    stages around it: the losses the weights come from (:meth:`global_losses`), which task rows
    stage 1 computes and with which factor (:meth:`rows`, :attr:`weighs_after`,
    :meth:`row_scale`), the rows after the reduction (:meth:`reduce`), and this process's part of
    the combined update (:meth:`this_rank`).
    """

    weighs_after = False  # True: the rows are reduced unweighted, the weights applied after

    def global_losses(
        self, losses: Tensor, items: tuple[Tensor, ...] | None, present: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, Tensor | None, Tensor | None]:
        """``(losses, per-task scalars, present, global counts or None)`` the weights are computed from."""
        return losses, items, present, None

    def rows(self, present: Tensor | None, num_tasks: int) -> tuple[list[int], list[bool]]:
        """The tasks that get a Jacobian row, and for each whether its gradient is computed here."""
        keep = list(range(num_tasks)) if present is None else present.nonzero().flatten().tolist()
        return keep, [True] * len(keep)

    def row_scale(self, losses: Tensor) -> Tensor:
        """``[T]`` factor of each row when the weights come after (:attr:`weighs_after`)."""
        return torch.ones_like(losses.detach())

    def reduce(
        self,
        jacobian: Tensor,
        own_grads: list[list[Tensor | None]],
        own: Sequence[Sequence[nn.Parameter]],
        losses: Tensor,
        present: Tensor | None,
        rows: list[int],
    ) -> Reduced:
        """The rows of every process together."""
        return Reduced(jacobian, own_grads, losses, present, None, rows)

    def this_rank(self, vector: Tensor) -> Tensor:
        """This process's part of the combined update of the gradient targets."""
        return vector


def gradient_reduction(
    sync: GradientSync | None, counts: Tensor | None, *, per_task_rows: bool
) -> GradientReduction:
    """The strategy for a step: the identity without ``sync``; under torch.distributed
    :class:`FusedReduction` for per-task gradients of the shared parameters
    (``per_task_rows``), else :class:`LossShareReduction`. ``counts``: this rank's label counts."""
    if sync is None:
        return GradientReduction()
    return FusedReduction(sync, counts) if per_task_rows else LossShareReduction(sync, counts)


def _flat_task_grads(
    own_grads: Sequence[Sequence[Tensor | None]], own: Sequence[Sequence[nn.Parameter]], dtype: torch.dtype
) -> list[Tensor]:
    """Every task parameter's gradient, flattened, zeros where there is none: the same layout on
    every rank, for one collective."""
    return [
        (g if g is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
        for gs, ps in zip(own_grads, own)
        for g, p in zip(gs, ps)
    ]


class FusedReduction(GradientReduction):
    """Per-task gradients of the shared parameters, reduced in one all-reduce.

    Every task gets a row on every rank (zero where the rank has no label for it), scaled by the
    rank's label count ``n_r``; one all-reduce of ``[rows | task parameters' gradients | loss
    sums | label counts]`` gives ``Σ_r n_r ∇L_r`` and the global losses; dividing by ``Σ_r n_r``
    gives the global batch's gradients, and the global weights are applied after.
    """

    weighs_after = True

    def __init__(self, sync: GradientSync, counts: Tensor | None) -> None:
        self.sync, self._counts = sync, counts
        self._local: Tensor | None = None

    def global_losses(
        self, losses: Tensor, items: tuple[Tensor, ...] | None, present: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, Tensor | None, Tensor | None]:
        self._local = _local_counts(self._counts, present, losses)
        return losses, items, present, None

    def rows(self, present: Tensor | None, num_tasks: int) -> tuple[list[int], list[bool]]:
        assert self._local is not None
        return list(range(num_tasks)), [n > 0 for n in self._local.tolist()]

    def row_scale(self, losses: Tensor) -> Tensor:
        assert self._local is not None
        return self._local.detach().to(losses.dtype)

    def reduce(
        self,
        jacobian: Tensor,
        own_grads: list[list[Tensor | None]],
        own: Sequence[Sequence[nn.Parameter]],
        losses: Tensor,
        present: Tensor | None,
        rows: list[int],
    ) -> Reduced:
        assert self._local is not None
        T = jacobian.shape[0]
        n = self._local.detach().to(jacobian.dtype)
        flat_own = _flat_task_grads(own_grads, own, jacobian.dtype)
        buf = torch.cat([jacobian.reshape(-1), *flat_own, losses.detach().to(jacobian.dtype) * n, n])
        self.sync.sum_(buf)
        total = buf[-T:]
        inv = 1.0 / torch.where(total > 0, total, torch.ones_like(total))  # weight sums may be < 1
        mean = (buf[-2 * T : -T] * inv).to(losses.dtype)
        jacobian.copy_(buf[: jacobian.numel()].view_as(jacobian)).mul_(inv[:, None])
        parts = iter(buf[jacobian.numel() : buf.numel() - 2 * T].split([p.numel() for ps in own for p in ps]))
        grads: list[list[Tensor | None]] = [
            [next(parts).view_as(p).mul(inv[i]).to(p.dtype) for p in ps] for i, ps in enumerate(own)
        ]
        keep = (total > 0).nonzero().flatten().tolist()
        if len(keep) < T:  # a task without a label on any rank: no row
            jacobian = jacobian[keep]
            grads = [grads[i] for i in keep]
        counts = total.to(self._local.dtype)
        return Reduced(jacobian, grads, mean, counts > 0, counts, keep)


class LossShareReduction(GradientReduction):
    """The global batch's losses first (:meth:`GradientSync.global_losses`: each rank's loss
    scaled by its share of the labels), so loss-level methods need nothing more (DDP averages
    the gradients); a representation Jacobian (one column block per rank's samples) is gathered
    along its columns and the task parameters' gradients averaged."""

    def __init__(self, sync: GradientSync, counts: Tensor | None) -> None:
        self.sync, self._counts = sync, counts
        self._span: tuple[int, int] | None = None

    def global_losses(
        self, losses: Tensor, items: tuple[Tensor, ...] | None, present: Tensor | None
    ) -> tuple[Tensor, tuple[Tensor, ...] | None, Tensor | None, Tensor | None]:
        local = _local_counts(self._counts, present, losses)
        losses, counts, share = self.sync.global_losses(losses, local)
        if items is not None:
            items = tuple(item * s for item, s in zip(items, share.unbind(0)))
        self._counts = counts
        return losses, items, counts > 0, counts

    def reduce(
        self,
        jacobian: Tensor,
        own_grads: list[list[Tensor | None]],
        own: Sequence[Sequence[nn.Parameter]],
        losses: Tensor,
        present: Tensor | None,
        rows: list[int],
    ) -> Reduced:
        sync = self.sync
        flat_own = _flat_task_grads(own_grads, own, jacobian.dtype)
        rest = sync.average_(torch.cat(flat_own)) if flat_own else jacobian.new_zeros(0)
        gathered, start, stop = sync.gather_columns(jacobian)
        self._span = (start, stop)
        parts = iter(rest.split([p.numel() for ps in own for p in ps]))
        reduced: list[list[Tensor | None]] = [[next(parts).view_as(p).to(p.dtype) for p in ps] for ps in own]
        return Reduced(gathered.div_(sync.world_size), reduced, losses, present, self._counts, rows)

    def this_rank(self, vector: Tensor) -> Tensor:
        """This rank's samples of the update; times ``N``, as the ranks' gradients get averaged."""
        assert self._span is not None
        return vector[self._span[0] : self._span[1]] * self.sync.world_size


@dataclass(frozen=True)
class DistributedContext:
    """Where this process runs under ``torchrun``: its rank, the world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_env(backend: str | None = None, device: str | None = None) -> DistributedContext | None:
    """Initialise torch.distributed from the environment ``torchrun`` sets; None when not under it.

    ``WORLD_SIZE`` > 1 starts the default process group (NCCL when this process gets a CUDA
    device, else gloo) unless one is already running; each process takes the GPU of its
    ``LOCAL_RANK``.

    Raises:
        DistributedError: the environment names a world but not the rank, CUDA was asked for
            without a CUDA device, or there are fewer GPUs than local ranks.
    """
    dist = _dist()
    if dist is None:
        return None
    running = dist.is_initialized()
    if running and dist.get_world_size() == 1:
        return None
    if not running:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return None
        if "RANK" not in os.environ:
            raise DistributedError(
                "WORLD_SIZE is set but RANK is not: start distributed runs with "
                "`torchrun --nproc_per_node=N -m mtlkit run ...`."
            )
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device is not None and device.startswith("cuda") and not torch.cuda.is_available():
        raise DistributedError(
            f"trainer.device is {device!r} but this machine has no CUDA device: set trainer.device: cpu "
            "(or auto) to train the processes on the CPU with gloo."
        )
    use_cuda = torch.cuda.is_available() and (
        device is None or device in ("auto", "cuda") or device.startswith("cuda")
    )
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise DistributedError(
                f"Local rank {local_rank} has no GPU ({torch.cuda.device_count()} visible): start at most "
                f"{torch.cuda.device_count()} processes per node, or set trainer.device: cpu."
            )
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not running:
        dist.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    return DistributedContext(
        dist.get_rank(), local_rank, dist.get_world_size(), dev, str(dist.get_backend())
    )


def current_context() -> DistributedContext | None:
    """This process's :class:`DistributedContext` when a process group with more than one rank
    runs, else None (NCCL: the GPU of ``LOCAL_RANK``; gloo: the CPU)."""
    dist = _dist()
    if dist is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    backend = str(dist.get_backend())
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return DistributedContext(dist.get_rank(), local_rank, dist.get_world_size(), device, backend)


@contextmanager
def distributed_session(device: str | None = None) -> Iterator[DistributedContext | None]:
    """:func:`init_from_env` for the duration of a ``with`` block; a process group it started is
    destroyed at the end (one started by the caller is left running)."""
    dist = _dist()
    started = dist is not None and not dist.is_initialized()
    ctx = init_from_env(device=device)
    try:
        yield ctx
    finally:
        if started and ctx is not None and dist is not None and dist.is_initialized():
            dist.destroy_process_group()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` as rank ``src`` has it, on every rank (itself outside torch.distributed)."""
    dist = _dist()
    if dist is None or not dist.is_initialized() or dist.get_world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
