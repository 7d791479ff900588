"""Shared test helpers: the repository root, assertion helpers, independent references and tiny models.

Fixtures live in ``tests/conftest.py``; builders of every registered architecture in
``tests/_architectures.py``; fake dataset files in ``tests/_datasets.py``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mtlkit.models import ExpertMLPs, MultiTaskModel

REPO = Path(__file__).resolve().parents[1]
"""The repository root (tests locate docs and sources from it, whatever their own depth)."""


# ---------------------------------------------------------------------------------------------- assertions
def assert_rel_close(got: Tensor, want: Tensor, what: str, rtol: float = 1e-9) -> None:
    """``|got - want| <= rtol * max|want|``: a tolerance relative to the values' scale."""
    assert got.shape == want.shape, what
    scale = want.abs().max().item() if want.numel() else 0.0
    err = (got - want).abs().max().item() if want.numel() else 0.0
    assert err <= rtol * max(scale, 1e-300), f"{what}: |diff| {err:.3g} vs scale {scale:.3g}"


def assert_loss_decreased(history: Sequence[Mapping[str, Any]], factor: float, what: str = "training") -> None:
    """The summed task losses of the last epoch are finite and at most ``factor`` times the first epoch's.

    Epoch means (a trainer history's ``record["train"]``), so one noisy batch cannot decide it; callers
    choose a setting (seed, steps, learning rate) where the drop is far below ``factor`` on any CPU.
    """
    assert len(history) >= 2, f"{what}: need two epochs to compare, got {len(history)}"
    first, last = (sum(float(v) for v in record["train"].values()) for record in (history[0], history[-1]))
    assert math.isfinite(first) and math.isfinite(last), f"{what}: losses {first} -> {last}"
    assert last <= factor * first, f"{what}: loss {first:.4g} -> {last:.4g}, not below {factor} x the first epoch"


# ---------------------------------------------------------------------------------------------- counting
def n_params(model: nn.Module) -> int:
    """The number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def mlp_params(dims: list[int]) -> int:
    """Parameters of a chain of linear layers with biases: sum (a * b + b)."""
    return sum(a * b + b for a, b in itertools.pairwise(dims))


def param_ids(params: Iterable[nn.Parameter]) -> set[int]:
    """The identities of ``params`` (parameters compare by identity, not by value)."""
    return {id(p) for p in params}


# ---------------------------------------------------------------------------------------------- references
ACTIVATIONS = {
    "relu": torch.relu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "gelu": torch.nn.functional.gelu,
    "leaky_relu": torch.nn.functional.leaky_relu,
    "elu": torch.nn.functional.elu,
    "silu": torch.nn.functional.silu,
}
"""Each activation name's function, written independently of the library's table."""


def reference_experts(bank: ExpertMLPs, x: Tensor) -> list[Tensor]:
    """Each expert of ``bank`` evaluated on its own, in a Python loop, from its weights: a list of (N, D)."""
    act = ACTIVATIONS[bank.activation]
    outs = []
    for e in range(bank.num_experts):
        h = x
        for w, b in bank.expert_layers(e):
            h = act(h @ w + b)
        outs.append(h)
    return outs


# ---------------------------------------------------------------------------------------------- tiny models
class MiniESMM(MultiTaskModel):
    """ESMM-shaped test model: pCTR and pCVR towers, pCTCVR = pCTR * pCVR; pCVR is an output but not a task."""

    task_names = ("ctr", "ctcvr")

    def __init__(self, input_dim: int) -> None:
        super().__init__()
        self.bottom = nn.Linear(input_dim, 8)
        self.ctr = nn.Linear(8, 1)
        self.cvr = nn.Linear(8, 1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        h = torch.relu(self.bottom(x))
        ctr = torch.sigmoid(self.ctr(h)).squeeze(-1)
        cvr = torch.sigmoid(self.cvr(h)).squeeze(-1)
        return {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        self._check_task(task)
        return list((self.ctr if task == "ctr" else self.cvr).parameters())
