"""Small helpers."""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["seed_everything", "torch_threads"]


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (call before building a model)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Set torch's intra-op threads (``torch.set_num_threads``) for the duration of a ``with``
    block and restore them afterwards; ``None`` leaves them as they are."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(before)
