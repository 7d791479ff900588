"""How to build and feed every registered architecture in the shared suites.

A new model is tested by registering it. Models whose builder needs more than flat features and
the default tasks add an entry to ``CASES`` (inputs, tasks, small sizes).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mtlkit import Task
from mtlkit.registries import MODELS

TASKS = (
    Task(name="ctr", kind="binary"),
    Task(name="topic", kind="multiclass", num_classes=4),
    Task(name="value", kind="regression"),
)
N = 12


def flat_inputs(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 10, generator=gen)


def flat_targets(tasks: tuple[Task, ...], n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Random labels with about a third of each task missing."""
    out: dict[str, torch.Tensor] = {}
    for t in tasks:
        miss = torch.rand(n, generator=gen) < 0.33
        if t.kind == "multiclass":
            y = torch.randint(0, t.output_dim, (n,), generator=gen)
            out[t.target_key] = torch.where(miss, torch.full_like(y, -1), y)
        elif t.kind == "binary":
            y = (torch.rand(n, generator=gen) > 0.5).float()
            out[t.target_key] = torch.where(miss, torch.full_like(y, float("nan")), y)
        else:
            y = torch.randn(n, generator=gen)
            out[t.target_key] = torch.where(miss, torch.full_like(y, float("nan")), y)
    return out


@dataclass
class Case:
    """How to build and feed one architecture in the common suite."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    tasks: tuple[Task, ...] = TASKS
    input_spec: Any = 10
    inputs: Callable[[int, torch.Generator], Any] = flat_inputs
    targets: Callable[[tuple[Task, ...], int, torch.Generator], dict[str, torch.Tensor]] = flat_targets
    # outputs a task loss must not reach (e.g. ESMM's CVR tower is trained through CTCVR only)
    independent: tuple[tuple[str, str], ...] | None = None


def image_inputs(n: int, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, generator=gen)


CASES: dict[str, Case] = {
    # parameter-sharing architectures (issue 4): small sizes, images for MTAN, every branch of the
    # hierarchical ownership (shared layers and a top layer owned by one task), the orthogonality loss on
    "soft_sharing": Case(kwargs={"hidden_dims": (8, 6), "strength": 0.1}),
    "cross_stitch": Case(kwargs={"hidden_dims": (8, 6), "tower_dims": (4,)}),
    "hierarchical": Case(kwargs={"hidden_dims": (8, 6, 5), "task_depths": {"ctr": 1, "topic": 2}}),
    "shared_private": Case(kwargs={"shared_dims": (8,), "private_dims": (4,), "orthogonality": 0.01}),
    "mtan": Case(kwargs={"channels": (4, 6)}, input_spec=(3, 8, 8), inputs=image_inputs),
    # recommender models (recsys): ESMM's ctcvr/cvr are probabilities, cvr is evaluated only;
    # AITM takes binary funnel steps
    "esmm": Case(
        kwargs={"base": {"name": "mmoe", "num_experts": 2, "expert_dims": [6], "tower_dims": [4]}},
        tasks=(
            Task(name="ctr", kind="binary"),
            Task(name="ctcvr", kind="binary", logits=False),
            Task(name="cvr", kind="binary", logits=False, train=False),
        ),
    ),
    "aitm": Case(
        kwargs={"tower_dims": [8, 4]},
        tasks=(
            Task(name="click", kind="binary"),
            Task(name="cart", kind="binary"),
            Task(name="buy", kind="binary"),
        ),
    ),
    # DSelect-k with a number of experts that is not a power of two: both regularizers as aux outputs
    "dselect_k": Case(kwargs={"num_experts": 6, "k": 2, "entropy_reg": 0.05}),
    # PLE with three levels and unequal task expert counts (ownership changes with depth)
    "ple": Case(kwargs={"num_levels": 3, "num_task_experts": {"ctr": 1, "topic": 0, "value": 2}}),
}
"""Per-model overrides; every other registered model runs with ``Case()``."""


def case_of(name: str) -> Case:
    return CASES.get(MODELS.canonical(name), Case())


def build(name: str, seed: int = 0) -> tuple[nn.Module, Case]:
    case = case_of(name)
    builder = MODELS.get(name)
    params = inspect.signature(builder).parameters
    injected: dict[str, Any] = {"tasks": case.tasks}
    if "input_dim" in params:
        injected["input_dim"] = case.input_spec if isinstance(case.input_spec, int) else None
    if "input_spec" in params:
        injected["input_spec"] = case.input_spec
    torch.manual_seed(seed)
    return MODELS.build(name, **injected, **case.kwargs), case
