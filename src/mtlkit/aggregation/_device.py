"""Device and state helpers of the aggregators: the Gramian on the Jacobian's device, the one
host copy of it, the weights' way back, per-task state indexing and random task orders."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "device_generator",
    "gramian_of",
    "grow_square",
    "random_orders",
    "task_slots",
    "to_device",
    "to_host",
    "work_dtype",
]


# --------------------------------------------------------------------------- device helpers


def gramian_of(jacobian: Tensor) -> Tensor:
    """``J J^T`` on the Jacobian's device (half precisions are accumulated in float32)."""
    if jacobian.dtype in (torch.float16, torch.bfloat16):
        jacobian = jacobian.float()
    return jacobian @ jacobian.T


def work_dtype(device: torch.device) -> torch.dtype:
    """float64 for the small on-device ``T x T`` computations (float32 where float64 is missing)."""
    return torch.float32 if device.type == "mps" else torch.float64


def to_host(gramian: Tensor) -> np.ndarray:
    """The ``T x T`` Gramian as a symmetric float64 numpy array (one device-to-host copy)."""
    G = gramian.detach().to("cpu").to(torch.float64).numpy()
    return 0.5 * (G + G.T)


def to_device(weights: np.ndarray, like: Tensor) -> Tensor:
    """``T`` weights computed on the host, moved next to ``like`` (same device and dtype)."""
    w = torch.from_numpy(np.ascontiguousarray(weights, dtype=np.float64)).to(like.dtype)  # cast on the host
    return w.to(device=like.device, non_blocking=True)


def task_slots(rows: Tensor, device: torch.device) -> tuple[slice | Tensor, int]:
    """Index selecting the per-task state of ``rows``, and the number of tasks it needs.

    Returns a slice when ``rows`` is ``0..K-1`` (the common case: no gather, no copy), else the
    indices on ``device``. ``rows`` is read on the host (it is a small CPU tensor).
    """
    idx = [int(r) for r in rows.tolist()]
    needed = max(idx) + 1 if idx else 0
    if idx == list(range(len(idx))):
        return slice(0, len(idx)), needed
    return torch.tensor(idx, dtype=torch.long).to(device, non_blocking=True), needed


# --------------------------------------------------------------------------- randomness and state


def random_orders(k: int, generator: torch.Generator | None) -> Tensor:
    """``[k, k - 1]`` CPU long tensor: row ``i`` is a uniformly random order of the tasks ``!= i``."""
    keys = torch.rand(k, k, generator=generator, dtype=torch.float64)
    keys.fill_diagonal_(2.0)  # task i sorts last, then is cut off
    return keys.argsort(dim=1)[:, : k - 1]


def device_generator(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """A generator drawing on ``device``, seeded from the (CPU) ``generator``.

    On the CPU this is ``generator`` itself; elsewhere a fresh device generator is seeded with
    one 63-bit draw from it, so large random tensors are drawn where they are used (no transfer)
    and the stream stays determined by ``generator``.
    """
    if device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def grow_square(buf: Tensor, n: int, *, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``buf`` (``[m, m]``) on ``device`` in ``dtype``, zero-padded to ``[n, n]`` when ``n > m``."""
    buf = buf.to(device=device, dtype=dtype)
    m = buf.shape[0]
    if n <= m:
        return buf
    out = torch.zeros(n, n, dtype=dtype, device=device)
    out[:m, :m] = buf
    return out
