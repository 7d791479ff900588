"""Shared fixtures: deterministic seeds, small thread count, a device from PYTEST_TORCH_DEVICE."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def device() -> torch.device:
    return torch.device(os.environ.get("PYTEST_TORCH_DEVICE", "cpu"))
