"""Shared fixtures: deterministic seeds, a small thread count (``one_thread`` for tiny models), a device
from PYTEST_TORCH_DEVICE. Shared helpers live in _helpers.py, _architectures.py and _datasets.py."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("PYTEST_TORCH_DEVICE", "cpu"))


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread for the test: tiny models gain nothing from more threads, which only spin on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
