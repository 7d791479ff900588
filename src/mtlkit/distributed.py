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
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from mtlkit.errors import DistributedError

__all__ = [
    "DistributedContext",
    "GlobalLosses",
    "GradientSync",
    "broadcast_object",
    "current_context",
    "distributed_session",
    "init_from_env",
    "is_main_process",
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
            counts: ``[T]`` this rank's labelled elements per task.

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
        mean = (stats[0] / total.clamp_min(1)).to(losses.dtype)
        share = (self.world_size * local / total.clamp_min(1)).to(losses.dtype)
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
