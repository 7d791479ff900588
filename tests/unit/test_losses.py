"""task_losses over several tasks of every kind, with absent and unlabelled tasks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mtlkit import Task, task_losses
from mtlkit.errors import ShapeError

TASKS = (
    Task(name="ctr", kind="binary"),
    Task(name="topic", kind="multiclass", num_classes=3),
    Task(name="tags", kind="multilabel", num_classes=2),
    Task(name="value", kind="regression"),
)


def outputs(n: int = 5) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {t.name: torch.randn(n, t.output_dim, generator=g, requires_grad=True) for t in TASKS}


def test_vector_of_four_kinds_matches_functional_losses() -> None:
    out = outputs()
    targets = {
        "ctr": torch.tensor([1.0, 0, 1, 0, 1]),
        "topic": torch.tensor([0, 2, 1, 1, 0]),
        "tags": torch.tensor([[1.0, 0], [0, 1], [1, 1], [0, 0], [1, 0]]),
        "value": torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0]),
    }
    tl = task_losses(TASKS, out, targets)
    expected = torch.stack(
        [
            F.binary_cross_entropy_with_logits(out["ctr"].squeeze(1), targets["ctr"]),
            F.cross_entropy(out["topic"], targets["topic"]),
            F.binary_cross_entropy_with_logits(out["tags"], targets["tags"]),
            F.mse_loss(out["value"].squeeze(1), targets["value"]),
        ]
    )
    torch.testing.assert_close(tl.losses, expected)
    assert tl.counts.tolist() == [5, 5, 10, 5]
    assert tl.present.all()


def test_absent_and_unlabelled_tasks_are_zero_with_zero_gradient() -> None:
    out = outputs()
    targets = {"ctr": torch.full((5,), float("nan")), "value": torch.ones(5)}
    tl = task_losses(TASKS, out, targets)
    assert tl.losses[:3].tolist() == [0.0, 0.0, 0.0]
    assert tl.present.tolist() == [False, False, False, True]
    tl.losses.sum().backward()
    for name in ("ctr", "topic", "tags"):
        assert torch.count_nonzero(out[name].grad) == 0


def test_missing_model_output_is_named() -> None:
    out = outputs()
    del out["tags"]
    with pytest.raises(
        ShapeError, match=r"Model output is missing task 'tags' \(got keys: 'ctr', 'topic', 'value'\)"
    ):
        task_losses(TASKS, out, {})
